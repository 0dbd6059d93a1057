"""The worker's HTTP surface (Faust's web server): health, metrics, read-only SQL.

DuckDB lets one process hold a database file; while the worker writes, analysts' queries
come here and run on read-only copies of it, in processes of their own, bounded in rows,
bytes, time, memory and number (streams/query/, ADR 0006).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import orjson
from aiohttp import web_protocol, web_server
from faust.web import Request, Response, View

from tocsin.processors.otlp import OtlpError, decode_batch
from tocsin.streams.query import QueryAnswer, QueryService, answer_unless_gone
from tocsin.streams.web.auth import Refusal
from tocsin.streams.web.bodies import BodyError, read_body
from tocsin.streams.web.explain import register_explain_views
from tocsin.streams.web.intake import IDEMPOTENCY_HEADERS
from tocsin.streams.web.live import register_live_views
from tocsin.streams.web.otlp import otlp_export_response, otlp_status
from tocsin.streams.web.reports import RENDERINGS, render_report

if TYPE_CHECKING:
    from tocsin.streams.worker.app import Worker
    from tocsin.streams.worker.metrics import Metrics

_DECODE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tocsin-otlp-http")
OPENAPI = Path(__file__).with_name("openapi.json")
ACTION_MAX_BYTES = 64 * 1024  # an action's body: a name, a note, a title


class _QuietRequestHandler(web_protocol.RequestHandler):
    """aiohttp's answer to a malformed or oversized request head quotes the offending
    bytes (a header's value among them); ours names only the status."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> Any:
        if 400 <= status < 500:
            message = f"{status} {HTTPStatus(status).phrase}: malformed or oversized request"
        return super().handle_error(request, status, exc, message)


web_server.RequestHandler = _QuietRequestHandler  # type: ignore[attr-defined]


def closing(response: Response) -> Response:
    """A body refused before it was read in full (408, 413) leaves its rest on the
    connection: close it, or those bytes would be parsed as the next request."""
    if response.status in (408, 413):
        response.force_close()  # type: ignore[attr-defined]
    return response


def register_views(app: faust.App, worker: Worker, metrics: Metrics,
                   queries: QueryService | None) -> None:
    settings = worker.settings
    access = worker.access

    def answer(view: View, status: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Response:
        if status == 503:
            headers = {"Retry-After": "1", **(headers or {})}
        return closing(view.bytes(orjson.dumps(body), content_type="application/json",
                                  status=status, headers=headers))

    def refused(view: View, refusal: Refusal) -> Response:
        return answer(view, refusal.status, {"error": refusal.message}, refusal.headers)

    def reader(view: View, request: Request) -> Response | None:
        """401 unless the request carries an API token (when API tokens are set)."""
        who = access.reader(request.headers.get("Authorization"))
        return refused(view, who) if isinstance(who, Refusal) else None

    @app.page("/livez")
    class Live(View):
        async def get(self, request: Request) -> Response:
            return answer(self, 200, {"status": "alive"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            parts = worker.readiness()
            ready = all(parts.values())
            return answer(self, 200 if ready else 503,
                          {"status": "ready" if ready else "not ready", "parts": parts})

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            detection = worker.detection
            projection = worker.projection
            parts = worker.readiness()
            return answer(self, 200, {
                "status": "ok" if all(parts.values()) else "starting"
                if not worker.started_once else "degraded",
                "parts": parts,
                "role": worker.settings.role,
                "detecting": bool(detection and detection.ready.is_set()),
                "partitions": sorted(detection.runs) if detection else [],
                "held_span_events": detection.held() if detection else 0,
                "triage": worker.triage.positions() if worker.triage else None,
                "projection_caught_up": bool(projection and projection.caught_up.is_set()),
                "metrics": metrics.summary(),
                "queries": queries.stats() if queries is not None else None,
            })

    @app.page("/metrics")
    class Prometheus(View):
        async def get(self, request: Request) -> Response:
            if not settings.metrics_public:
                denied = reader(self, request)
                if denied is not None:
                    return denied
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/v1/signals")
    class Signals(View):
        async def post(self, request: Request) -> Response:
            return await _intake(self, request, None)

    @app.page("/v1/signals/{provider}")
    class SignalsFrom(View):
        async def post(self, request: Request, provider: str) -> Response:
            return await _intake(self, request, provider)

    def idempotency_key(request: Request) -> str | None:
        for name in IDEMPOTENCY_HEADERS:
            value = request.headers.get(name)
            if value:
                return str(value)  # hashed whole into the delivery id: never cut
        return None

    async def _intake(view: View, request: Request, provider: str | None) -> Response:
        grant = access.sender(request.headers.get("Authorization"))
        if isinstance(grant, Refusal):
            return refused(view, grant)
        if worker.intake is None:
            return answer(view, 503, {"error": "intake not ready yet"})
        try:
            body = await read_body(request, settings.intake_max_body_bytes,
                                   settings.http_body_timeout_ms / 1000)
        except BodyError as exc:
            return answer(view, exc.status, {"error": str(exc)})
        result = await worker.intake.handle(body, provider, grant,
                                            getattr(request, "remote", None),
                                            idempotency_key(request))
        return answer(view, result.status, result.body, result.headers)

    @app.page("/v1/traces")
    class Traces(View):
        """OTLP/HTTP traces, as an app exports them without a Collector."""

        async def post(self, request: Request) -> Response:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            proto = content_type == "application/x-protobuf"
            grant = access.sender(request.headers.get("Authorization"))
            if isinstance(grant, Refusal):
                data, ctype = otlp_status(proto, 16, grant.message)
                return self.bytes(data, content_type=ctype, status=401,
                                  headers=grant.headers)
            if grant is not None and not grant.traces:
                data, ctype = otlp_status(proto, 7, f"the token of source {grant.source!r} "
                                                    "may not post traces")
                return self.bytes(data, content_type=ctype, status=403)
            if not proto and content_type != "application/json":
                return answer(self, 415, {"error": "Content-Type must be application/"
                                                   "x-protobuf or application/json"})
            if worker.intake is None:
                return answer(self, 503, {"error": "intake not ready yet"})
            try:
                body = await read_body(request, settings.traces_max_body_bytes,
                                       settings.http_body_timeout_ms / 1000)
            except BodyError as exc:
                data, ctype = otlp_status(proto, 3, str(exc))
                return closing(self.bytes(data, content_type=ctype, status=exc.status))
            if not proto and not body.strip():
                data, ctype = otlp_status(proto, 3, "bad OTLP traces: empty JSON body")
                return self.bytes(data, content_type=ctype, status=400)
            try:
                decoded = await asyncio.get_running_loop().run_in_executor(
                    _DECODE, decode_batch, body, "otlp_proto" if proto else "otlp_json")
            except (OtlpError, RecursionError) as exc:
                data, ctype = otlp_status(proto, 3, f"bad OTLP traces: {exc}")
                return self.bytes(data, content_type=ctype, status=400)
            await worker.intake.publish_spans(body)
            data, ctype = otlp_export_response(proto, len(decoded.rejected), "; ".join(
                f"{r.path}: {r.reason}" for r in decoded.rejected[:10]))
            return self.bytes(data, content_type=ctype)

    async def ask(view: View, request: Request, work: Awaitable[QueryAnswer]
                  ) -> Response | QueryAnswer:
        """The query service's answer, or the error response; a client that goes away
        interrupts its query (ADR 0006)."""
        found = await answer_unless_gone(
            work, lambda: getattr(request, "transport", True) is None)  # aiohttp's: None once gone
        if found is None:
            return answer(view, 499, {"error": "the client went away"})
        if found.status >= 400:
            return view.bytes(found.body, content_type=found.content_type,
                              status=found.status, headers=dict(found.headers))
        return found

    @app.page("/v1/incidents")
    class Incidents(View):
        async def get(self, request: Request) -> Response:
            denied = reader(self, request)
            if denied is not None:
                return denied
            if queries is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            status = request.query.get("status")
            if status is not None and status not in ("active", "recovering", "resolved"):
                return answer(self, 400, {"error": "status is active, recovering or resolved"})
            found = await ask(self, request, queries.incidents(status))
            if not isinstance(found, QueryAnswer):
                return found
            return self.bytes(found.body, content_type="application/json")

    @app.page("/v1/incidents/{incident_id}/report")
    class Report(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            denied = reader(self, request)
            if denied is not None:
                return denied
            if queries is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            fmt = request.query.get("format", "json")
            if fmt not in RENDERINGS:
                return answer(self, 400, {"error": f"format is one of {sorted(RENDERINGS)}"})
            found = await ask(self, request, queries.latest_report(incident_id))
            if not isinstance(found, QueryAnswer):
                return found
            data, content_type = render_report(found.body.decode(), fmt)
            return self.bytes(data, content_type=content_type)

    @app.page("/v1/incidents/{incident_id}")
    class Incident(View):
        """One incident as the projection holds it now, with its operator actions."""

        async def get(self, request: Request, incident_id: str) -> Response:
            denied = reader(self, request)
            if denied is not None:
                return denied
            sink = worker.sink if worker.projection is not None else None
            if sink is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            row = await asyncio.to_thread(sink.incident, incident_id)
            if row is None:
                return answer(self, 404, {"error": f"no incident {incident_id}"})
            actions = await asyncio.to_thread(sink.actions, incident_id)
            row.pop("onset", None)  # onset_ms says it, without a time zone to guess
            return answer(self, 200, {**row, "actions": actions})

    @app.page("/v1/incidents/{incident_id}/actions")
    class Actions(View):
        """An operator action (ADR 0016): 200 with the incident's new state, 400, 404,
        409 naming the rule, 202 when the decision takes longer than the timeout."""

        async def post(self, request: Request, incident_id: str) -> Response:
            denied = reader(self, request)
            if denied is not None:
                return denied
            if worker.projection is None and queries is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            if worker.actions is None:
                return answer(self, 503, {"error": "actions not ready yet"})
            try:
                raw = await read_body(request, ACTION_MAX_BYTES,
                                      settings.http_body_timeout_ms / 1000)
            except BodyError as exc:
                return answer(self, exc.status, {"error": str(exc)})
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return answer(self, 400, {"error": f"body must be JSON: {exc}"})
            result = await worker.actions.submit(incident_id, body,
                                                 idempotency_key(request))
            return answer(self, result.status, result.body)

    @app.page("/openapi.json")
    class OpenAPI(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(OPENAPI.read_bytes(), content_type="application/json")

    @app.page("/v1/query")
    class Query(View):
        async def post(self, request: Request) -> Response:
            denied = reader(self, request)
            if denied is not None:
                return denied
            if queries is None:
                return answer(self, 404, {"error": "this worker keeps no DuckDB projection"})
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:
                return answer(self, 400, {"error": f"body must be JSON: {exc}"})
            if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
                return answer(self, 400, {"error": 'body must be {"sql": "SELECT ..."}'})
            params = body.get("params", [])
            if not isinstance(params, list):
                return answer(self, 400, {"error": "params must be an array"})
            found = await ask(self, request, queries.run(body["sql"], params))
            if not isinstance(found, QueryAnswer):
                return found
            return self.bytes(found.body, content_type="application/json")

    register_live_views(app, worker.live, reader, answer)
    register_explain_views(app, worker, reader)
