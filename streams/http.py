"""The worker's HTTP surface (Faust's web server): health, metrics, read-only SQL.

DuckDB lets one process hold a database file; while the worker writes, analysts' queries
come here and run on a cursor of the writer's own connection (ADR 0006).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.web import Request, Response, View

from tocsin.sinks.duckdb_sink import DuckDBSink, ReadOnlyViolation

if TYPE_CHECKING:
    from tocsin.streams.app import Worker
    from tocsin.streams.metrics import Metrics

MAX_ROWS = 100_000


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)


def rows_json(columns: list[str], rows: list[tuple[Any, ...]]) -> bytes:
    return orjson.dumps({"columns": columns, "rows": rows},
                        default=_default, option=orjson.OPT_NON_STR_KEYS)


def register_views(app: faust.App, worker: Worker, metrics: Metrics,
                   sink: DuckDBSink | None) -> None:

    def answer(view: View, status: int, body: dict[str, Any]) -> Response:
        return view.bytes(orjson.dumps(body), content_type="application/json", status=status)

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            detection = worker.detection
            projection = worker.projection
            return answer(self, 200, {
                "status": "ok",
                "role": worker.settings.role,
                "detecting": bool(detection and detection.ready.is_set()),
                "partitions": sorted(detection.runs) if detection else [],
                "projection_caught_up": bool(projection and projection.caught_up.is_set()),
                "metrics": metrics.summary(),
            })

    @app.page("/metrics")
    class Prometheus(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/v1/query")
    class Query(View):
        async def post(self, request: Request) -> Response:
            if sink is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                return answer(self, 400, {"error": f"body must be JSON: {exc}"})
            if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
                return answer(self, 400, {"error": 'body must be {"sql": "SELECT ..."}'})
            params = body.get("params") or []
            if not isinstance(params, list):
                return answer(self, 400, {"error": "params must be an array"})
            try:
                columns, rows = await asyncio.to_thread(sink.query, body["sql"], params)
            except ReadOnlyViolation as exc:
                return answer(self, 400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - a bad query is the caller's 4xx
                return answer(self, 400, {"error": f"{type(exc).__name__}: {exc}"})
            if len(rows) > MAX_ROWS:
                return answer(self, 413, {"error": f"more than {MAX_ROWS} rows; add LIMIT"})
            return self.bytes(rows_json(columns, rows), content_type="application/json")
