"""``tocsin mcp``: Tocsin's incidents as tools for agents, over the Model Context Protocol.

A server made with the official ``mcp`` SDK (2.x, :class:`~mcp.server.mcpserver.MCPServer`)
on stdio, or on streamable HTTP with ``--http PORT`` (``http://HOST:PORT/mcp``). It holds
no state and no database: every tool is one or two requests to a running worker's HTTP
API (``--worker URL``, default ``http://127.0.0.1:8077``), with ``Authorization: Bearer
$TOCSIN_API_TOKEN`` when that variable is set.

Read tools: ``list_incidents``, ``triage_incident`` (the latest report, its canonical
JSON bytes exactly as ``GET /v1/incidents/{id}/report`` serves them, and their
``report_hash``), ``render_triage_report``, ``explain_request`` (``GET /v1/requests/{id}``)
and ``blast_radius`` (``GET /v1/blast``). Only with ``--allow-write`` are
``acknowledge_incident`` and ``annotate_incident`` offered (listed at all): operator actions
(ADR 0016) that the worker's detection decides, dated by the worker's clock.

Every tool has a typed input schema and publishes an output schema; its result is
structured content. Whatever goes wrong — the worker down, an unknown incident, a refused
action, bad arguments — is a tool error (``isError``) whose message says what and why;
the server goes on answering.
"""

# No `from __future__ import annotations`: the tools' annotations are evaluated where they
# are defined, in build_server, which imports the SDK; importing this module (tocsin's CLI
# does) does not.
import http.client
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tocsin.processors.actions import MAX_ACTOR, MAX_NOTE
from tocsin.processors.report import canonical_json

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

DEFAULT_WORKER = "http://127.0.0.1:8077"
TOKEN_ENV = "TOCSIN_API_TOKEN"
Format = Literal["json", "md", "slack", "pagerduty", "text"]
Status = Literal["active", "recovering", "resolved"]
MAX_TEXT = 256  # characters of an id, a service, a step, an error code
M = TypeVar("M", bound=BaseModel)

INSTRUCTIONS = """Tools over a Tocsin worker: production incidents detected from wide events
and OpenTelemetry traces, each with a deterministic triage report (cause, evidence,
propagation, blast radius). Start with list_incidents, then triage_incident for the
report (its report_hash identifies the exact version), explain_request for one failing
request by its trace id or request id, blast_radius for how far a failure spread. Times
are epoch ms of event time."""


# ---------------------------------------------------------------- the worker's API


def fail(message: str) -> NoReturn:
    """A tool error: the agent reads ``message`` (the SDK's ToolError, imported here so
    that importing this module does not load the SDK)."""
    from mcp.server.mcpserver.exceptions import ToolError

    raise ToolError(message)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class WorkerAPI:
    """A worker's HTTP API, as one client sees it: base URL, bearer token, timeout."""

    base: str
    token: str | None = None
    timeout_s: float = 30.0

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        """One request; any HTTP status comes back as a :class:`Reply`; no answer at all
        is a :class:`ToolError` naming the worker."""
        url = self.base + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return Reply(int(resp.status), resp.read(),
                             resp.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            return Reply(int(exc.code), exc.read(), exc.headers.get("Content-Type", ""))
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException
                ) as exc:
            reason = getattr(exc, "reason", exc)
            fail(f"no answer from the Tocsin worker at {self.base} ({reason}); is `tocsin "
                 "run` up there? (tocsin mcp --worker URL)")

    def ok(self, method: str, path: str, reply: Reply, served: str | None = None) -> Reply:
        """The reply when it is a success, else a :class:`ToolError` with the worker's
        reason. ``served``: the route, named when this worker does not serve it."""
        if 200 <= reply.status < 300:
            return reply
        fail(refusal(self.base, method, path, reply, served))

    def answer(self, method: str, path: str, model: type[M], *,
               served: str | None = None, **kwargs: Any) -> M:
        """A successful JSON answer read as ``model``; anything else is a ToolError."""
        reply = self.ok(method, path, self.request(method, path, **kwargs), served)
        return shaped(model, parsed(reply, f"{method} {path}"), f"{method} {path}")


def parsed(reply: Reply, what: str) -> Any:
    """The reply's JSON; a body that is not JSON is a ToolError."""
    try:
        return reply.json()
    except ValueError:
        fail(f"the worker's answer to {what} is not JSON (not a Tocsin worker?)")


def shaped(model: type[M], data: Any, what: str) -> M:
    """``data`` as ``model``; an answer of another shape is a ToolError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        fail(f"the worker's answer to {what} is not what this tocsin mcp expects "
             f"({where}: {first['msg']}); are both the same Tocsin version?")


def refusal(base: str, method: str, path: str, reply: Reply, served: str | None = None
            ) -> str:
    """What to tell the agent about a worker's non-2xx answer."""
    message = None
    if "json" in reply.content_type:
        try:
            body = reply.json()
            message = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            message = None
    if reply.status == 404 and message is None:
        route = served or path
        return (f"the worker at {base} does not serve {method} {route} (HTTP 404): a "
                "Tocsin without it, or not a Tocsin worker")
    message = str(message) if message else reply.body[:300].decode(errors="replace") \
        or f"HTTP {reply.status}"
    if reply.status == 401:
        return (f"{message} (HTTP 401): the worker wants an API token; set "
                f"{TOKEN_ENV} to one of its TOCSIN_API_TOKENS for tocsin mcp")
    if reply.status == 409:
        return f"refused: {message} (HTTP 409)"
    if reply.status in (429, 503):
        return f"{message} (HTTP {reply.status}); try again shortly"
    return f"{message} (HTTP {reply.status})"


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# ---------------------------------------------------------------- output models


class _Open(BaseModel):
    """A worker's answer: the fields named here, and whatever else it sends."""

    model_config = ConfigDict(extra="allow")


class IncidentRow(_Open):
    incident_id: str
    family: str | None = None
    env: str | None = None
    service: str | None = None
    step: str | None = None
    error_code: str | None = None
    status: str | None = None
    onset_ms: int | None = None
    updated_ms: int | None = None
    resolved_ms: int | None = None
    peak_count: int | None = None
    error_count: int | None = None
    report_hash: str | None = Field(None, description="the latest report version's hash")
    cause_kind: str | None = None
    cause_confidence: str | None = None


class Listing(BaseModel):
    """``GET /v1/incidents``'s answer."""

    incidents: list[IncidentRow]


class IncidentList(BaseModel):
    incidents: list[IncidentRow] = Field(description="newest onset first")
    count: int = Field(description="incidents returned")
    total: int = Field(description="incidents matching the filters")
    truncated: bool = Field(description="more matched than limit")


class TriageReport(BaseModel):
    incident_id: str
    report_hash: str = Field(description="sha256 of the report's canonical JSON (without "
                                         "the hashed blanks): the version's identity")
    report: dict[str, Any] = Field(description="the triage report; its canonical JSON "
                                               "(sorted keys, compact, UTF-8) is the "
                                               "text content of this result, byte for byte")
    canonical: bool = Field(description="the served bytes are the canonical JSON of report")
    bytes: int = Field(description="length of the served JSON in bytes")


class RenderedReport(BaseModel):
    incident_id: str
    format: str
    content_type: str
    body: str = Field(description="the rendering, also the text content of this result")


class Hop(_Open):
    service: str | None = None
    step: str | None = None
    span_id: str | None = None
    error: bool | None = None


class FailingStep(_Open):
    service: str
    step: str
    span_id: str | None = None
    kind: str | None = None
    error_code: str | None = None
    downstream: str | None = None


class IncidentRef(_Open):
    incident_id: str
    family: str | None = None
    service: str | None = None
    step: str | None = None
    error_code: str | None = None
    status: str | None = None
    phase: str | None = None
    seq: int | None = None
    onset_ms: int | None = None
    last_error_ms: int | None = None
    resolved_ms: int | None = None
    report_hash: str | None = None
    matched_by: str | None = Field(None, description="window: its family and window hold "
                                                     "the trace; sample_trace: it cites it")


class Searched(_Open):
    partitions: list[int] = Field(description="the triage partitions this worker owns")
    kept_failing_traces: int
    traces_per_family: int


class RequestExplanation(_Open):
    id: str
    trace_id: str
    matched: str = Field(description="trace_id, or sample_trace (known only as an "
                                     "incident's sample trace: no path)")
    end_ms: int | None = None
    complete: bool | None = None
    capture: str = Field(description="ok, partial (path is a lower bound) or missing")
    path: list[Hop] = Field(description="root → where the failure started")
    failing_step: FailingStep | None = Field(description="where the failure started")
    family: str | None = Field(description="the failing family the request belongs to")
    families: list[str]
    services: list[str] = Field(description="services with a failing span")
    distinct_users: int | None = None
    incident: IncidentRef | None = None
    incidents: list[IncidentRef]
    searched: Searched
    notes: list[str]


class ServiceCount(_Open):
    service: str
    requests: int


class FamilyCount(_Open):
    family: str
    requests: int


class BlastRadiusAnswer(_Open):
    service: str
    step: str | None = None
    error_code: str | None = None
    window_ms: int
    from_ms: int | None = Field(description="window start (exclusive), event time")
    to_ms: int | None = Field(description="window end (inclusive), event time")
    newest_failing_trace_ms: int | None = None
    latest_match_ms: int | None = Field(description="end of the newest matching failing "
                                                    "trace, whatever the window")
    capture: str
    affected_requests: int | None = Field(description="failing requests (traces); null "
                                                      "without trace evidence")
    distinct_users: int | None = None
    users_estimated: bool = False
    affected_services: list[str]
    top_services: list[ServiceCount]
    top_families: list[FamilyCount]
    sample_traces: list[str]
    incomplete_traces: int = 0
    families: list[str] = Field(description="the families matched")
    incidents: list[IncidentRef] = Field(description="their incidents the window overlaps")
    searched: Searched
    notes: list[str]


class ActionResult(_Open):
    incident_id: str
    action: str
    action_id: str | None = None
    status: str | None = None
    phase: str | None = None
    seq: int | None = None
    kind: str | None = None
    by: str | None = None
    at_ms: int | None = None
    pending: bool = Field(False, description="on the log, not decided yet (HTTP 202)")
    repeated: bool = Field(False, description="the same action was applied already")


# ---------------------------------------------------------------- tool arguments

IncidentId = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, pattern=r"^[^/\s]+$",
                                  description="an incident id, e.g. inc_dd40b8528905eadf")]
Actor = Annotated[str | None, Field(max_length=MAX_ACTOR,
                                    description="who acts (default: the server's --actor)")]
Key = Annotated[str | None, Field(min_length=1, max_length=200,
                                  description="Idempotency-Key: a retry with the same key is "
                                              "the same action (default: a new one)")]


def build_server(api: WorkerAPI, *, allow_write: bool = False, actor: str = "mcp-agent"
                 ) -> "MCPServer[Any]":
    """The MCP server over one worker; write tools only with ``allow_write``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import CallToolResult, TextContent, ToolAnnotations

    read = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    write = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                            idempotent_hint=False, open_world_hint=False)
    server: MCPServer[Any] = MCPServer("tocsin", instructions=INSTRUCTIONS,
                                       log_level="WARNING")

    def report_bytes(incident_id: str, fmt: str) -> Reply:
        path = f"/v1/incidents/{_quoted(incident_id)}/report"
        reply = api.request("GET", path, query={"format": fmt})
        return api.ok("GET", path, reply, "/v1/incidents/{id}/report")

    @server.tool(annotations=read)
    def list_incidents(
        status: Annotated[Status | None, Field(description="only this status")] = None,
        service: Annotated[str | None, Field(min_length=1, max_length=MAX_TEXT,
                                             description="only this service")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="at most this many")] = 100,
    ) -> IncidentList:
        """Incidents, newest onset first, with their latest report hash and cause (from
        GET /v1/incidents; the listing reads a DuckDB snapshot, a moment behind)."""
        listed = api.answer("GET", "/v1/incidents", Listing, query={"status": status})
        rows = [r for r in listed.incidents if service is None or r.service == service]
        return IncidentList(incidents=rows[:limit], count=min(len(rows), limit),
                            total=len(rows), truncated=len(rows) > limit)

    @server.tool(annotations=read)
    def triage_incident(incident_id: IncidentId) -> Annotated[CallToolResult, TriageReport]:
        """The incident's latest triage report as JSON with its report_hash: the same
        bytes and hash as GET /v1/incidents/{id}/report (the text content is those
        bytes)."""
        reply = report_bytes(incident_id, "json")
        try:
            text = reply.body.decode()
            report = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError too
            fail(f"the worker's report of {incident_id} is not JSON: {exc}")
        if not isinstance(report, dict) or not isinstance(report.get("report_hash"), str):
            fail(f"the worker's report of {incident_id} has no report_hash")
        out = TriageReport(incident_id=incident_id, report_hash=report["report_hash"],
                           report=report, canonical=canonical_json(report) == reply.body,
                           bytes=len(reply.body))
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=out.model_dump(mode="json"))

    @server.tool(annotations=read)
    def render_triage_report(
        incident_id: IncidentId,
        format: Annotated[Format, Field(description="the rendering")] = "md",
    ) -> Annotated[CallToolResult, RenderedReport]:
        """The incident's latest triage report rendered: json (canonical bytes), md
        (Markdown), slack (Block Kit JSON), pagerduty (a note), text (plain)."""
        reply = report_bytes(incident_id, format)
        body = reply.body.decode(errors="replace")
        out = RenderedReport(incident_id=incident_id, format=format,
                             content_type=reply.content_type.split(";")[0].strip(),
                             body=body)
        return CallToolResult(content=[TextContent(type="text", text=body)],
                              structured_content=out.model_dump(mode="json"))

    @server.tool(annotations=read)
    def explain_request(
        request_id: Annotated[str, Field(min_length=1, max_length=MAX_TEXT,
                                         pattern=r"^\s*[^/\s]+\s*$", description=(
            "the request's trace id (32 hex digits), or the request id of a failing wide "
            "event"))],
    ) -> RequestExplanation:
        """One failing request, by its trace id or its request id: the path it took (root
        → where the failure started, when its spans were seen), its failing step, its
        family and the incident it counts for. Only failing requests are kept: traces for
        72 h of event time, request ids of the latest failing wide events."""
        path = f"/v1/requests/{_quoted(request_id.strip())}"
        return api.answer("GET", path, RequestExplanation, served="/v1/requests/{id}")

    @server.tool(annotations=read)
    def blast_radius(
        service: Annotated[str, Field(min_length=1, max_length=MAX_TEXT,
                                      description="the failing service")],
        step: Annotated[str | None, Field(max_length=MAX_TEXT, description=(
            "its failing step (e.g. 'POST /api/charge'); all steps when omitted"))] = None,
        error_code: Annotated[str | None, Field(max_length=MAX_TEXT, description=(
            "the error code; all codes when omitted"))] = None,
        window_ms: Annotated[int, Field(ge=1, le=72 * 3_600_000, description=(
            "event-time window, ending at until_ms"))] = 900_000,
        until_ms: Annotated[int | None, Field(ge=0, description=(
            "window end, epoch ms of event time (default: the end of the newest failing "
            "trace the worker keeps, never the wall clock)"))] = None,
    ) -> BlastRadiusAnswer:
        """How far a failure spread: the failing requests of the matching families in the
        window, their distinct users, services and families, sample traces and the
        incidents concerned (counted as the report's blast radius is)."""
        query = {"service": service, "step": step, "error_code": error_code,
                 "window_ms": window_ms, "until_ms": until_ms}
        return api.answer("GET", "/v1/blast", BlastRadiusAnswer, query=query)

    if allow_write:
        def act(incident_id: str, action: str, by: str | None, note: str | None,
                key: str | None) -> ActionResult:
            path = f"/v1/incidents/{_quoted(incident_id)}/actions"
            body = {"action": action, "by": by or actor,
                    **({"note": note} if note is not None else {})}
            reply = api.request("POST", path, body=body,
                                headers={"Idempotency-Key": key or uuid.uuid4().hex})
            api.ok("POST", path, reply, "/v1/incidents/{id}/actions")
            answer = parsed(reply, f"POST {path}")
            if not isinstance(answer, dict):
                fail(f"the worker's answer to POST {path} is not an object")
            return shaped(ActionResult, {"incident_id": incident_id, **answer,
                                         "action": action}, f"POST {path}")

        @server.tool(annotations=write)
        def acknowledge_incident(incident_id: IncidentId, by: Actor = None,
                                 note: Annotated[str | None, Field(
                                     max_length=MAX_NOTE)] = None,
                                 idempotency_key: Key = None) -> ActionResult:
            """Acknowledge an incident (phase triggered → acknowledged): the worker's
            detection decides it on the log; refused (409) from any other phase."""
            return act(incident_id, "acknowledge", by, note, idempotency_key)

        @server.tool(annotations=write)
        def annotate_incident(incident_id: IncidentId,
                              note: Annotated[str, Field(min_length=1, max_length=MAX_NOTE,
                                                         description="the note")],
                              by: Actor = None, idempotency_key: Key = None) -> ActionResult:
            """Add a note to an incident's record (any phase; the phase is unchanged); it
            appears in the report's response section."""
            return act(incident_id, "annotate", by, note, idempotency_key)

    return server


# ---------------------------------------------------------------- the command


def worker_base(url: str) -> str:
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise click.BadParameter(f"an http(s) URL, got {url!r}", param_hint="--worker")
    return url.rstrip("/")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command(name="mcp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--worker", default=DEFAULT_WORKER, show_default=True, metavar="URL",
              help="The worker's HTTP base URL (token: $TOCSIN_API_TOKEN).")
@click.option("--http", "http_port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve streamable HTTP on PORT (path /mcp) instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address --http binds (loopback unless --insecure).")
@click.option("--allow-write", is_flag=True,
              help="Offer acknowledge_incident and annotate_incident.")
@click.option("--actor", default="mcp-agent", show_default=True, metavar="NAME",
              help="Who acts when a write tool is not told.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 600), default=30.0,
              show_default=True, help="Seconds to wait for the worker's answer.")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback --host (the MCP endpoint has no authentication).")
def mcp_command(worker: str, http_port: int | None, host: str, allow_write: bool,
                actor: str, timeout_s: float, insecure: bool) -> None:
    """Serve Tocsin's incidents to agents over the Model Context Protocol (stdio, or
    streamable HTTP with --http)."""
    if not actor.strip() or len(actor) > MAX_ACTOR:
        raise click.BadParameter(f"a name of 1 to {MAX_ACTOR} characters",
                                 param_hint="--actor")
    if http_port is None and host != "127.0.0.1":
        raise click.UsageError("--host is for --http")
    if http_port is not None and not loopback(host) and not insecure:
        raise click.UsageError(f"--host {host} is not a loopback address: the MCP endpoint "
                               "has no authentication of its own (add --insecure to bind "
                               "it anyway)")
    api = WorkerAPI(worker_base(worker), os.environ.get(TOKEN_ENV) or None, timeout_s)
    server = build_server(api, allow_write=allow_write, actor=actor.strip())
    if http_port is None:
        server.run("stdio")
        return
    print(f"tocsin mcp: streamable HTTP on http://{host}:{http_port}/mcp, worker "
          f"{api.base}{' (write tools on)' if allow_write else ''}", file=sys.stderr,
          flush=True)
    server.run("streamable-http", host=host, port=http_port)


if __name__ == "__main__":
    mcp_command(prog_name="tocsin mcp")
