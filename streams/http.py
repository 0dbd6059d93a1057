"""The worker's HTTP surface (Faust's web server): health, metrics, read-only SQL.

DuckDB lets one process hold a database file; while the worker writes, analysts' queries
come here and run on a cursor of the writer's own connection (ADR 0006).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.web import Request, Response, View

from tocsin.processors.otlp import OtlpError, decode_batch
from tocsin.sinks.duckdb_sink import DuckDBSink, ReadOnlyViolation
from tocsin.streams.otlp_http import otlp_export_response, otlp_status
from tocsin.streams.reports import RENDERINGS, render_report
from tocsin.streams.spans import gunzip_if_needed

if TYPE_CHECKING:
    from tocsin.streams.app import Worker
    from tocsin.streams.metrics import Metrics

MAX_ROWS = 100_000
OPENAPI = Path(__file__).with_name("openapi.json")
INCIDENTS_SQL = """
SELECT i.incident_id, i.family, i.env, i.service, i.step, i.error_code, i.status,
       i.onset_ms, i.updated_ms, i.resolved_ms, i.peak_count, i.error_count,
       r.report_hash, r.cause_kind, r.cause_confidence
FROM incidents i
LEFT JOIN (SELECT incident_id, arg_max(report_hash, written_seq) AS report_hash,
                  arg_max(cause_kind, written_seq) AS cause_kind,
                  arg_max(cause_confidence, written_seq) AS cause_confidence
           FROM triage_reports GROUP BY incident_id) r USING (incident_id)
WHERE $1::VARCHAR IS NULL OR i.status = $1
ORDER BY i.onset_ms DESC, i.incident_id
"""


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

    @app.page("/v1/signals")
    class Signals(View):
        async def post(self, request: Request) -> Response:
            return await _intake(self, request, None)

    @app.page("/v1/signals/{provider}")
    class SignalsFrom(View):
        async def post(self, request: Request, provider: str) -> Response:
            return await _intake(self, request, provider)

    async def _intake(view: View, request: Request, provider: str | None) -> Response:
        if worker.intake is None:
            return answer(view, 503, {"error": "intake not ready yet"})
        limit = worker.settings.intake_max_body_bytes
        length = request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            return answer(view, 413, {"error": f"body over {limit} bytes"})
        body = await request.read()
        result = await worker.intake.handle(body, provider, request.headers.get("Authorization"),
                                            getattr(request, "remote", None))
        return view.bytes(orjson.dumps(result.body), content_type="application/json",
                          status=result.status, headers=result.headers)

    @app.page("/v1/traces")
    class Traces(View):
        """OTLP/HTTP traces, as an app exports them without a Collector."""

        async def post(self, request: Request) -> Response:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            proto = content_type == "application/x-protobuf"
            if not proto and content_type != "application/json":
                return answer(self, 415, {"error": "Content-Type must be application/"
                                                   "x-protobuf or application/json"})
            if worker.intake is None:
                return answer(self, 503, {"error": "intake not ready yet"})
            try:
                body = gunzip_if_needed(await request.read(),
                                        request.headers.get("Content-Encoding"))
                decoded = decode_batch(body, "otlp_proto" if proto else "otlp_json")
            except (OtlpError, OSError, EOFError) as exc:
                data, ctype = otlp_status(proto, 3, f"bad OTLP traces: {exc}")
                return self.bytes(data, content_type=ctype, status=400)
            await worker.intake.publish_spans(body)
            data, ctype = otlp_export_response(proto, len(decoded.rejected), "; ".join(
                f"{r.path}: {r.reason}" for r in decoded.rejected[:10]))
            return self.bytes(data, content_type=ctype)

    @app.page("/v1/incidents")
    class Incidents(View):
        async def get(self, request: Request) -> Response:
            if sink is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            status = request.query.get("status")
            if status is not None and status not in ("active", "recovering", "resolved"):
                return answer(self, 400, {"error": "status is active, recovering or resolved"})
            columns, rows = await asyncio.to_thread(sink.query, INCIDENTS_SQL, [status])
            return self.bytes(orjson.dumps({"incidents": [dict(zip(columns, r, strict=True))
                                                          for r in rows]}, default=_default),
                              content_type="application/json")

    @app.page("/v1/incidents/{incident_id}/report")
    class Report(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            if sink is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            fmt = request.query.get("format", "json")
            if fmt not in RENDERINGS:
                return answer(self, 400, {"error": f"format is one of {sorted(RENDERINGS)}"})
            body = await asyncio.to_thread(sink.latest_report, incident_id)
            if body is None:
                return answer(self, 404, {"error": f"no report for {incident_id}"})
            data, content_type = render_report(body, fmt)
            return self.bytes(data, content_type=content_type)

    @app.page("/openapi.json")
    class OpenAPI(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(OPENAPI.read_bytes(), content_type="application/json")

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
