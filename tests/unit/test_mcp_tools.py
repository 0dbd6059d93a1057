"""``tocsin mcp``'s pieces without a broker: the worker-side lookups behind
``GET /v1/requests/{id}`` and ``GET /v1/blast`` (pure functions of triage folds), and the
MCP tools against a fake worker's HTTP API through the SDK's own in-process client
(schemas, structured results, every refusal a tool error)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from tocsin.clients.mcp_server import WorkerAPI, build_server
from tocsin.processors.family import Family
from tocsin.processors.report import canonical_json
from tocsin.processors.traces.blast import TraceSummary
from tocsin.processors.traces.propagation import Hop, Origin, Propagation
from tocsin.processors.triage import Triage
from tocsin.streams.web.explain import (
    BadQuery,
    blast,
    explain_request,
    family_matches,
    normal_id,
    split_family,
    window_of,
)

T0 = 1_793_610_000_000
PAY = "payment:POST /api/charge:PaymentDeclinedError"
CHECKOUT = "checkout:POST /api/checkout:HTTP_502"


def opened(incident_id: str, family: str, onset_ms: int, last_error_ms: int, *,
           seq: int = 1, samples: tuple[str, ...] = ()) -> dict[str, Any]:
    service, step, code = split_family(family) or ("", "", "")
    return {"incident_id": incident_id, "env": "prod", "service": service, "step": step,
            "error_code": code, "family": family, "onset_ms": onset_ms,
            "status": "active", "seq": seq, "kind": "opened" if seq == 1 else "escalated",
            "window_count": 5, "peak_count": 5, "error_count": 5, "baseline": 0.1,
            "lift": 50.0, "last_error_ms": last_error_ms, "at_ms": last_error_ms,
            "sample_trace_ids": list(samples), "phase": "triggered"}


def failing(trace_id: str, users: tuple[str, ...] = ("u1",), complete: bool = True
            ) -> TraceSummary:
    path = (Hop("frontend", "GET /cart/checkout", "s1", True),
            Hop("checkout", "POST /api/checkout", "s2", True),
            Hop("payment", "POST /api/charge", "s3", True))
    origin = Origin("payment", "POST /api/charge", "s3", "SERVER", "PaymentDeclinedError",
                    None)
    return TraceSummary(trace_id, True, complete, 0, users,
                        ("checkout", "frontend", "payment"), tuple(sorted((PAY, CHECKOUT))),
                        Propagation(trace_id, "ok" if complete else "partial", origin, path))


def tid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def fold() -> Triage:
    """payment's incident (onset T0+60 s, last error T0+120 s) and checkout's; five
    failing traces ending T0+61..65 s, one an hour earlier (outside every window)."""
    triage = Triage()
    triage.apply_incident_event(opened("inc_pay", PAY, T0 + 60_000, T0 + 120_000,
                                       samples=(tid(99),)))
    triage.apply_incident_event(opened("inc_co", CHECKOUT, T0 + 61_000, T0 + 120_000))
    for n in range(1, 6):
        triage.apply_summary(failing(tid(n), users=(f"u{n % 3}",)), T0 + 60_000 + n * 1000)
    triage.apply_summary(failing(tid(50), users=("old",)), T0 - 3_600_000)
    triage.flush()
    return triage


# ---------------------------------------------------------------- pure lookups


def test_family_keys_split_back_into_their_escaped_parts() -> None:
    family = Family("prod", "svc:a", "GET /x\\y:z", "E:1")
    assert split_family(family.key) == ("svc:a", "GET /x\\y:z", "E:1")
    assert split_family(PAY) == ("payment", "POST /api/charge", "PaymentDeclinedError")
    assert split_family("no-colons") is None
    assert family_matches(PAY, "payment", None, None)
    assert family_matches(PAY, "payment", "POST /api/charge", "PaymentDeclinedError")
    assert not family_matches(PAY, "payment", "GET /", None)
    assert not family_matches(PAY, "pay", None, None)


def test_ids_are_trimmed_hex_lowered_and_bounded() -> None:
    assert normal_id("  ABCDEF0123456789ABCDEF0123456789 ") == "abcdef0123456789abcdef0123456789"
    assert normal_id("Req-XYZ") == "Req-XYZ"  # not hex: as given
    for bad in ("", "   ", "a\nb", "x" * 300):
        with pytest.raises(BadQuery):
            normal_id(bad)


def test_a_failing_trace_is_explained_by_its_trace_id(fold: Triage) -> None:
    found = explain_request([fold], tid(3).upper(), [0])
    assert found is not None
    assert (found["trace_id"], found["matched"], found["end_ms"]) == (tid(3), "trace_id",
                                                                      T0 + 63_000)
    assert [h["service"] for h in found["path"]] == ["frontend", "checkout", "payment"]
    assert found["failing_step"]["service"] == "payment"
    assert found["failing_step"]["step"] == "POST /api/charge"
    assert found["failing_step"]["error_code"] == "PaymentDeclinedError"
    assert found["family"] == PAY  # the family where the failure started
    assert found["families"] == sorted([PAY, CHECKOUT])
    assert found["incident"]["incident_id"] == "inc_pay"
    assert {r["incident_id"]: r["matched_by"] for r in found["incidents"]} == {
        "inc_pay": "window", "inc_co": "window"}
    assert found["incident"]["report_hash"] == fold.last_hash["inc_pay"]
    assert found["distinct_users"] == 1 and found["capture"] == "ok"
    assert found["searched"] == {"partitions": [0], "kept_failing_traces": 6,
                                 "traces_per_family": 2000}


def test_a_trace_outside_every_window_has_no_incident(fold: Triage) -> None:
    found = explain_request([fold], tid(50))
    assert found is not None and found["incident"] is None and found["incidents"] == []
    assert any("No incident" in n for n in found["notes"])


def test_an_incident_sample_trace_without_a_summary_names_the_incident(fold: Triage
                                                                       ) -> None:
    found = explain_request([fold], tid(99))
    assert found is not None
    assert (found["matched"], found["capture"], found["path"]) == ("sample_trace",
                                                                   "missing", [])
    assert found["incident"]["incident_id"] == "inc_pay"
    assert found["incident"]["matched_by"] == "sample_trace"


def test_unknown_ids_and_request_ids_are_not_found(fold: Triage) -> None:
    assert explain_request([fold], tid(7)) is None
    assert explain_request([fold], "req-1234") is None
    assert explain_request([], tid(1)) is None


def test_a_failing_wide_events_request_id_is_explained(fold: Triage) -> None:
    """By the request id detection noted: through its trace when a summary is kept, else
    from the event (its step, family and the incident whose window holds it)."""
    from tocsin.processors.family import Family
    from tocsin.processors.recent_requests import RecentRequests

    family = Family("production", "payment", "POST /api/charge", "PaymentDeclinedError")
    noted = RecentRequests(most=2)
    noted.note("req-traced", T0 + 63_000, family, tid(3))
    noted.note("req-bare", T0 + 63_000, family, None)
    traced = explain_request([fold], "req-traced", (), [noted])
    assert traced is not None and traced["matched"] == "request_id"
    assert traced["trace_id"] == tid(3) and traced["path"]
    bare = explain_request([fold], "req-bare", (), [noted])
    assert bare is not None and (bare["matched"], bare["path"]) == ("request_id", [])
    assert bare["failing_step"]["step"] == "POST /api/charge"
    assert bare["family"] == family.key
    noted.note("req-newer", T0 + 64_000, family, None)  # the oldest one goes (most=2)
    assert explain_request([fold], "req-traced", (), [noted]) is None


def test_blast_counts_the_failing_traces_of_the_window_in_event_time(fold: Triage) -> None:
    # default end: the newest kept failing trace (T0+65 s); 3 s back: traces 3, 4 and 5
    found = blast([fold], "payment", window_ms=3_000)
    assert (found["to_ms"], found["from_ms"]) == (T0 + 65_000, T0 + 62_000)
    assert found["affected_requests"] == 3
    assert found["distinct_users"] == 3  # u0, u1, u2
    assert found["affected_services"] == ["checkout", "frontend", "payment"]
    assert found["families"] == [PAY]
    assert [r["incident_id"] for r in found["incidents"]] == ["inc_pay"]
    # as the report counts them: the incident's whole window
    whole = blast([fold], "payment", "POST /api/charge", "PaymentDeclinedError",
                  window_ms=3_600_000)
    assert whole["affected_requests"] == fold.blasts["inc_pay"].affected_requests == 5
    assert whole["sample_traces"] == fold.blasts["inc_pay"].to_dict()["sample_traces"]
    # an earlier end reaches the old trace alone
    old = blast([fold], "payment", window_ms=60_000, until_ms=T0 - 3_600_000)
    assert old["affected_requests"] == 1 and old["incidents"] == []
    assert found["latest_match_ms"] == T0 + 65_000


def test_blast_without_a_matching_family_claims_nothing(fold: Triage) -> None:
    found = blast([fold], "payment", step="GET /nope")
    assert (found["affected_requests"], found["capture"], found["families"]) == (
        None, "missing", [])
    assert any("No kept failing trace" in n for n in found["notes"])
    empty = blast([], "payment")
    assert (empty["to_ms"], empty["affected_requests"]) == (None, None)


def test_a_trace_kept_by_two_folds_counts_once(fold: Triage) -> None:
    other = Triage()
    other.apply_summary(failing(tid(5), users=("u2",)), T0 + 65_000)
    assert blast([fold, other], "checkout", window_ms=3_000)["affected_requests"] == 3


def test_blast_parameters_are_checked() -> None:
    assert window_of({"service": "payment"}) == ("payment", None, None, 900_000, None)
    assert window_of({"service": "p", "step": "s", "error_code": "E", "window_ms": "5",
                      "until_ms": "7"}) == ("p", "s", "E", 5, 7)
    for bad in ({}, {"service": " "}, {"service": "p", "window_ms": "x"},
                {"service": "p", "window_ms": "0"},
                {"service": "p", "window_ms": str(73 * 3_600_000)},
                {"service": "p", "until_ms": "-1"}, {"service": "p\x00q"}):
        with pytest.raises(BadQuery):
            window_of(bad)


# ---------------------------------------------------------------- tools on a fake worker

REPORT = {"incident": {"id": "inc_a", "service": "payment"}, "report_hash": "sha256:ab",
          "summary": "paiement refusé — déclin", "ratio": 1.5, "evidence": []}


class FakeWorker(BaseHTTPRequestHandler):
    """A worker's API as tocsin mcp calls it, recording what it was sent."""

    seen: list[dict[str, Any]] = []
    token = "s3cret"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body: dict[str, Any] = json.loads(self.rfile.read(length)) if length else {}
        self.seen.append({"method": method, "path": url.path, "query": query, "body": body,
                          "key": self.headers.get("Idempotency-Key")})
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(401, b'{"error": "missing or invalid API token"}')
        routes: dict[tuple[str, str], Callable[[], tuple[int, bytes]]] = {
            ("GET", "/v1/incidents"): lambda: (200, json.dumps({"incidents": [
                {"incident_id": "inc_a", "service": "payment", "status": "active",
                 "report_hash": "sha256:ab", "onset_ms": 2},
                {"incident_id": "inc_b", "service": "cart", "status": "active",
                 "onset_ms": 1, "new_column": "kept"}]}).encode()),
            ("GET", "/v1/incidents/inc_a/report"): lambda: (
                (200, canonical_json(REPORT)) if query.get("format") == "json"
                else (200, b"# paiement refus\xc3\xa9\n")),
            ("GET", "/v1/incidents/inc_none/report"): lambda: (
                404, b'{"error": "no report for inc_none"}'),
            ("POST", "/v1/incidents/inc_a/actions"): lambda: (200, json.dumps({
                "incident_id": "inc_a", "status": "active", "phase": "acknowledged",
                "seq": 3, "action_id": "act_1", "kind": "acknowledged",
                "by": body["by"], "at_ms": 5}).encode()),
            ("GET", "/v1/requests/shape"): lambda: (200, b'{"trace_id": 5}'),
            ("GET", "/v1/requests/html"): lambda: (200, b"<html>hello</html>"),
            ("POST", "/v1/incidents/inc_b/actions"): lambda: (409, json.dumps({
                "error": "acknowledge is not allowed from phase resolved",
                "rule": "lifecycle.acknowledge", "incident_id": "inc_b"}).encode()),
        }
        route = routes.get((method, url.path))
        if route is None:  # aiohttp's own 404: not JSON
            return self._send(404, b"404: Not Found", "text/plain; charset=utf-8")
        status, data = route()
        self._send(status, data, "text/markdown" if data.startswith(b"#") else
                   "application/json")

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


@pytest.fixture
def fake_worker() -> Iterator[str]:
    FakeWorker.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorker)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def call(base: str, calls: list[tuple[str, dict[str, Any]]], *, allow_write: bool = False,
         token: str | None = "s3cret") -> tuple[list[str], list[CallToolResult]]:
    """The tools listed and each call's result, through the SDK's client."""
    server = build_server(WorkerAPI(base, token, 5.0), allow_write=allow_write,
                          actor="bot")

    async def go() -> tuple[list[str], list[CallToolResult]]:
        async with Client(server) as client:
            listed = [t.name for t in (await client.list_tools()).tools]
            return listed, [await client.call_tool(name, args) for name, args in calls]
    return asyncio.run(go())


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def test_read_tools_only_unless_writes_are_allowed(fake_worker: str) -> None:
    read = ["list_incidents", "triage_incident", "render_triage_report", "explain_request",
            "blast_radius"]
    assert call(fake_worker, [])[0] == read
    assert call(fake_worker, [], allow_write=True)[0] == [*read, "acknowledge_incident",
                                                          "annotate_incident"]
    (_, [refused]) = call(fake_worker, [("acknowledge_incident", {"incident_id": "inc_a"})])
    assert refused.is_error and "Unknown tool" in text(refused)
    assert FakeWorker.seen == []


def test_tools_answer_with_structured_content(fake_worker: str) -> None:
    _, (listed, only, report, md) = call(fake_worker, [
        ("list_incidents", {}), ("list_incidents", {"service": "cart", "status": "active"}),
        ("triage_incident", {"incident_id": "inc_a"}),
        ("render_triage_report", {"incident_id": "inc_a", "format": "md"})])
    assert not any(r.is_error for r in (listed, only, report, md))
    assert listed.structured_content is not None
    assert [i["incident_id"] for i in listed.structured_content["incidents"]] == ["inc_a",
                                                                                "inc_b"]
    assert only.structured_content is not None
    assert only.structured_content["incidents"] == [{
        "incident_id": "inc_b", "family": None, "env": None, "service": "cart", "step": None,
        "error_code": None, "status": "active", "onset_ms": 1, "updated_ms": None,
        "resolved_ms": None, "peak_count": None, "error_count": None, "report_hash": None,
        "cause_kind": None, "cause_confidence": None, "new_column": "kept"}]
    assert FakeWorker.seen[1]["query"] == {"status": "active"}
    # the report: its bytes as served (UTF-8, canonical), its hash, its object
    served = canonical_json(REPORT)
    assert text(report).encode() == served
    assert report.structured_content == {"incident_id": "inc_a", "report_hash": "sha256:ab",
                                         "report": REPORT, "canonical": True,
                                         "bytes": len(served)}
    assert canonical_json(report.structured_content["report"]) == served
    assert text(md) == "# paiement refusé\n"
    assert md.structured_content is not None
    assert md.structured_content["content_type"] == "text/markdown"
    assert FakeWorker.seen[3]["query"] == {"format": "md"}


def test_every_refusal_is_a_tool_error_and_the_server_goes_on(fake_worker: str) -> None:
    _, results = call(fake_worker, [
        ("triage_incident", {"incident_id": "inc_none"}),
        ("explain_request", {"request_id": "abc"}),
        ("blast_radius", {"service": "payment"}),
        ("acknowledge_incident", {"incident_id": "inc_b"}),
        ("render_triage_report", {"incident_id": "inc_a", "format": "pdf"}),
        ("blast_radius", {"service": "payment", "window_ms": 0}),
        ("triage_incident", {"incident_id": ""}),
        ("triage_incident", {"incident_id": "inc_a"}),
    ], allow_write=True)
    assert [r.is_error for r in results] == [True] * 7 + [False]
    messages = [text(r) for r in results[:7]]
    assert "no report for inc_none (HTTP 404)" in messages[0]
    assert "does not serve GET /v1/requests/{id}" in messages[1]
    assert "does not serve GET /v1/blast" in messages[2]
    assert "refused: acknowledge is not allowed from phase resolved (HTTP 409)" \
        in messages[3]
    assert "format" in messages[4] and "window_ms" in messages[5]
    assert "incident_id" in messages[6]
    # arguments refused by the schema never reach the worker
    assert [s["path"] for s in FakeWorker.seen] == [
        "/v1/incidents/inc_none/report", "/v1/requests/abc", "/v1/blast",
        "/v1/incidents/inc_b/actions", "/v1/incidents/inc_a/report"]


def test_no_token_or_no_worker_says_what_to_do(fake_worker: str) -> None:
    _, [unauthorized] = call(fake_worker, [("list_incidents", {})], token=None)
    assert unauthorized.is_error and "TOCSIN_API_TOKEN" in text(unauthorized)
    _, [down] = call("http://127.0.0.1:9", [("list_incidents", {})])
    assert down.is_error and "no answer from the Tocsin worker at http://127.0.0.1:9" \
        in text(down)


def test_write_tools_post_actions_with_a_fresh_key_and_the_default_actor(
        fake_worker: str) -> None:
    _, (ack, note) = call(fake_worker, [
        ("acknowledge_incident", {"incident_id": "inc_a"}),
        ("annotate_incident", {"incident_id": "inc_a", "note": "pool exhausted",
                               "by": "ana", "idempotency_key": "k-1"})], allow_write=True)
    assert ack.structured_content is not None
    assert {k: ack.structured_content[k] for k in ("incident_id", "action", "phase", "by",
                                                   "pending")} == {
        "incident_id": "inc_a", "action": "acknowledge", "phase": "acknowledged",
        "by": "bot", "pending": False}
    assert note.structured_content is not None and note.structured_content["by"] == "ana"
    first, second = FakeWorker.seen
    assert first["body"] == {"action": "acknowledge", "by": "bot"}
    assert first["key"] and len(first["key"]) == 32
    assert second["body"] == {"action": "annotate", "by": "ana", "note": "pool exhausted"}
    assert second["key"] == "k-1"


def test_answers_of_another_shape_are_tool_errors(fake_worker: str) -> None:
    _, (shape, html, slash) = call(fake_worker, [
        ("explain_request", {"request_id": "shape"}),
        ("explain_request", {"request_id": "html"}),
        ("triage_incident", {"incident_id": "inc_a/../x"})])
    assert shape.is_error and "is not what this tocsin mcp expects" in text(shape)
    assert html.is_error and "is not JSON" in text(html)
    assert slash.is_error and "incident_id" in text(slash)


def test_the_command_refuses_bad_options() -> None:
    from click.testing import CliRunner

    from tocsin.clients.mcp_server import mcp_command

    runner = CliRunner()
    assert "--allow-write" in runner.invoke(mcp_command, ["--help"]).output
    for args, says in ((["--worker", "ftp://x"], "http(s) URL"),
                       (["--http", "8123", "--host", "0.0.0.0"], "not a loopback"),
                       (["--host", "127.0.0.2"], "--host is for --http"),
                       (["--actor", " "], "--actor"),
                       (["--http", "0"], "--http")):
        result = runner.invoke(mcp_command, args)
        assert result.exit_code == 2, (args, result.output)
        assert says in result.output, (args, result.output)
