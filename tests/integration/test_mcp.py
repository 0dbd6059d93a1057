"""``tocsin mcp`` end to end: the MCP server (stdio, and streamable HTTP) started as its
own process, talked to with the official SDK's client, on a real worker that detected a
real incident from OpenTelemetry traces (official SDK spans on ``otlp_spans``) and guards
its API with a token.

``explain_request`` and ``blast_radius`` read the worker's ``GET /v1/requests/{id}`` and
``GET /v1/blast``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from tests.integration.harness import Names, WorkerProc
from tocsin.clients.otel_workload import proto, workload
from tocsin.clients.produce import ProduceReport, publish
from tocsin.processors.report import canonical_json
from tocsin.streams.kafka.broker import free_port
from tocsin.streams.kafka.io import TopicSpec, ensure_topics
from tocsin.testing import wait_for

pytestmark = pytest.mark.integration

T0_NS = 1_793_610_000 * 1_000_000_000  # 2026-11-02T09:00:00Z
DECLINED = "shop.payment.PaymentDeclinedError"
PAY_FAMILY = f"payment:POST /api/charge:{DECLINED}"
TOKEN = "agent-token-7f1c"
FAILING = range(12, 20)  # the traces payment declines, of 80 a second apart
READ_TOOLS = ["list_incidents", "triage_incident", "render_triage_report",
              "explain_request", "blast_radius"]
WRITE_TOOLS = ["acknowledge_incident", "annotate_incident"]

class Incident:
    """What the module's worker holds: the payment incident, its failing trace ids."""

    def __init__(self, worker: WorkerProc, incident_id: str, traces: list[str],
                 report: dict[str, Any]) -> None:
        self.worker = worker
        self.incident_id = incident_id
        self.traces = traces
        self.report = report


def _by_trace(spans: list[Any]) -> list[list[Any]]:
    traces: dict[int, list[Any]] = {}
    for s in spans:
        traces.setdefault(s.context.trace_id, []).append(s)
    return [traces[k] for k in sorted(traces, key=lambda t: min(
        s.start_time for s in traces[t]))]


@pytest.fixture(scope="module")
def incident(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Incident]:
    """One worker (API token required); 80 traces a second apart, 12-19 failing at
    payment; until the payment incident's report counts all 8 failing traces."""
    names = Names.fresh("mcp")
    worker = WorkerProc(broker, names, tmp_path_factory.mktemp("mcp") / "mcp.duckdb",
                              extra_env={"TOCSIN_API_TOKENS": json.dumps({"agent": TOKEN})})
    worker.start()
    try:
        worker.wait_ready(90)
        traces = _by_trace(workload(80, set(FAILING), T0_NS, seed=11))
        topic = names.topic("spans")

        async def produce() -> None:
            await ensure_topics(broker, [TopicSpec(topic, 6, 3_600_000)])
            await publish(broker, topic, [(None, proto(t)) for t in traces], ProduceReport())
        asyncio.run(produce())
        row = worker.wait_rows(
            "SELECT incident_id, body FROM triage_reports WHERE incident_id IN (SELECT "
            f"incident_id FROM incidents WHERE family = '{PAY_FAMILY}') AND body LIKE "
            "'%\"affected_requests\":8%' ORDER BY written_seq DESC LIMIT 1", 90)[0]
        failing = [format(traces[i][0].context.trace_id, "032x") for i in FAILING]
        yield Incident(worker, row["incident_id"], failing, json.loads(row["body"]))
    finally:
        assert worker.stop() == 0


# ---------------------------------------------------------------- clients


@asynccontextmanager
async def stdio_session(incident: Incident, log: Path, *extra: str
                        ) -> AsyncIterator[ClientSession]:
    """``python -m tocsin.clients.mcp_server --worker URL`` over stdio, initialized."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-P", "-m", "tocsin.clients.mcp_server", "--worker", incident.worker.base_url,
              *extra],
        env={"TOCSIN_API_TOKEN": TOKEN})
    with open(log, "a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def served_report(incident: Incident, fmt: str = "json") -> bytes:
    reply = incident.worker.request("GET", f"/v1/incidents/{incident.incident_id}/report"
                                           f"?format={fmt}")
    assert reply.status == 200, reply.body
    return reply.body


# ---------------------------------------------------------------- tests


def test_read_tools_over_stdio(incident: Incident, tmp_path: Path) -> None:
    """Listing, the report (the served bytes and hash), its Markdown, one failing
    request explained, the family's blast radius; an unknown incident is a tool error
    and the server answers the next call."""
    log = tmp_path / "mcp-stdio.log"

    async def go() -> dict[str, Any]:
        with anyio.fail_after(120):
            async with stdio_session(incident, log) as session:
                tools = (await session.list_tools()).tools
                before = served_report(incident)
                out = {
                    "tools": {t.name: t for t in tools},
                    "listed": await session.call_tool("list_incidents",
                                                      {"service": "payment"}),
                    "report": await session.call_tool(
                        "triage_incident", {"incident_id": incident.incident_id}),
                    "md": await session.call_tool("render_triage_report", {
                        "incident_id": incident.incident_id, "format": "md"}),
                    "text": await session.call_tool("render_triage_report", {
                        "incident_id": incident.incident_id, "format": "text"}),
                    "explained": await session.call_tool(
                        "explain_request", {"request_id": incident.traces[3].upper()}),
                    "blast": await session.call_tool("blast_radius", {
                        "service": "payment", "step": "POST /api/charge",
                        "error_code": DECLINED, "window_ms": 3_600_000}),
                    "unknown": await session.call_tool("triage_incident",
                                                       {"incident_id": "inc_0000000000000000"}),
                    "not_kept": await session.call_tool("explain_request",
                                                        {"request_id": "req-42"}),
                    "after": await session.call_tool("list_incidents", {}),
                    "before": before, "served": served_report(incident),
                }
                return out

    out = asyncio.run(go())
    tools = out["tools"]
    assert list(tools) == READ_TOOLS
    assert all(t.output_schema and t.input_schema["type"] == "object"
               for t in tools.values())
    assert tools["render_triage_report"].input_schema["properties"]["format"]["enum"] == [
        "json", "md", "slack", "pagerduty", "text"]

    listed = structured(out["listed"])
    mine = [r for r in listed["incidents"] if r["incident_id"] == incident.incident_id]
    assert mine and mine[0]["family"] == PAY_FAMILY
    assert {r["service"] for r in listed["incidents"]} == {"payment"}

    # The same bytes and hash as GET /v1/incidents/{id}/report
    served = out["served"]
    assert out["before"] == served  # nothing changed meanwhile
    report = structured(out["report"])
    assert text(out["report"]).encode() == served
    assert canonical_json(report["report"]) == served
    assert report["report_hash"] == json.loads(served)["report_hash"]
    assert report["canonical"] is True and report["bytes"] == len(served)
    assert text(out["md"]).encode() == served_report(incident, "md")
    assert structured(out["md"])["content_type"] == "text/markdown"
    assert text(out["text"]).encode() == served_report(incident, "text")
    assert structured(out["text"])["format"] == "text"

    explained = structured(out["explained"])
    assert explained["trace_id"] == incident.traces[3]
    assert explained["matched"] == "trace_id"
    assert [h["service"] for h in explained["path"]] == ["frontend", "checkout", "payment"]
    assert explained["failing_step"]["service"] == "payment"
    assert explained["failing_step"]["step"] == "POST /api/charge"
    assert explained["family"] == PAY_FAMILY
    assert explained["incident"]["incident_id"] == incident.incident_id
    assert explained["incident"]["phase"] == "triggered"

    blast = structured(out["blast"])
    expected = incident.report["snapshots"]["blast"]
    assert blast["families"] == [PAY_FAMILY]
    assert (blast["affected_requests"], blast["distinct_users"]) == (8, 4)
    assert (blast["affected_requests"], blast["distinct_users"],
            blast["affected_services"], blast["sample_traces"]) == (
        expected["affected_requests"], expected["distinct_users"],
        expected["affected_services"], expected["sample_traces"])
    assert incident.incident_id in [r["incident_id"] for r in blast["incidents"]]

    assert out["unknown"].is_error
    assert "no report for inc_0000000000000000 (HTTP 404)" in text(out["unknown"])
    assert out["not_kept"].is_error
    assert "or by the request id of a failing event" in text(out["not_kept"])
    assert incident.incident_id in [r["incident_id"] for r in
                                    structured(out["after"])["incidents"]]


def test_write_tools_only_with_allow_write(incident: Incident, tmp_path: Path) -> None:
    """Without --allow-write the write tools are not listed nor callable; with it an
    acknowledgment goes through detection (GET /v1/incidents/{id} then shows phase
    acknowledged), a note is added, and a second acknowledgment is refused (409) as a
    tool error."""
    log = tmp_path / "mcp-write.log"

    async def go() -> dict[str, Any]:
        with anyio.fail_after(120):
            async with stdio_session(incident, log) as session:
                read_only = [t.name for t in (await session.list_tools()).tools]
                hidden = await session.call_tool(
                    "acknowledge_incident", {"incident_id": incident.incident_id})
            async with stdio_session(incident, log, "--allow-write", "--actor",
                                     "agent-7") as session:
                out = {
                    "read_only": read_only, "hidden": hidden,
                    "tools": [t.name for t in (await session.list_tools()).tools],
                    "ack": await session.call_tool("acknowledge_incident", {
                        "incident_id": incident.incident_id, "note": "looking"}),
                    "row": incident.worker.get_json(
                        f"/v1/incidents/{incident.incident_id}"),
                    "again": await session.call_tool("acknowledge_incident", {
                        "incident_id": incident.incident_id, "by": "bo"}),
                    "note": await session.call_tool("annotate_incident", {
                        "incident_id": incident.incident_id, "by": "bo",
                        "note": "pool exhausted"}),
                    "explained": await session.call_tool(
                        "explain_request", {"request_id": incident.traces[0]}),
                }
                return out

    out = asyncio.run(go())
    assert out["read_only"] == READ_TOOLS
    assert out["hidden"].is_error and "Unknown tool" in text(out["hidden"])
    assert out["tools"] == READ_TOOLS + WRITE_TOOLS
    ack = structured(out["ack"])
    assert (ack["incident_id"], ack["phase"], ack["kind"], ack["by"], ack["pending"]) == (
        incident.incident_id, "acknowledged", "acknowledged", "agent-7", False)
    row = out["row"]
    assert (row["phase"], row["acknowledged_by"]) == ("acknowledged", "agent-7")
    assert [a["kind"] for a in row["actions"]] == ["acknowledged"]
    assert out["again"].is_error
    assert "refused:" in text(out["again"]) and "(HTTP 409)" in text(out["again"])
    note = structured(out["note"])
    assert (note["kind"], note["phase"], note["by"]) == ("annotated", "acknowledged", "bo")
    # explain_request reads the incident's phase from the projection
    assert structured(out["explained"])["incident"]["phase"] == "acknowledged"
    assert [a["kind"] for a in incident.worker.get_json(
        f"/v1/incidents/{incident.incident_id}")["actions"]] == ["acknowledged", "annotated"]


def test_streamable_http(incident: Incident, tmp_path: Path) -> None:
    """``--http PORT``: the SDK's streamable HTTP client lists the tools and gets the
    report's hash as the worker serves it; errors are tool errors there too."""
    port = free_port()
    log = tmp_path / "mcp-http.log"
    with open(log, "wb") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "tocsin.clients.mcp_server", "--worker",
             incident.worker.base_url, "--http", str(port)],
            stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.STDOUT,
            env={**os.environ, "TOCSIN_API_TOKEN": TOKEN})
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"tocsin mcp --http exited {proc.returncode}: "
                                     f"{log.read_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(listening, 60, "the MCP HTTP port")

        async def go() -> tuple[list[str], CallToolResult, CallToolResult, CallToolResult]:
            with anyio.fail_after(60):
                async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (
                        read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    tools = [t.name for t in (await session.list_tools()).tools]
                    report = await session.call_tool("triage_incident",
                                                     {"incident_id": incident.incident_id})
                    bad = await session.call_tool("blast_radius", {"service": ""})
                    blast = await session.call_tool("blast_radius", {"service": "payment"})
                    return tools, report, bad, blast

        tools, report, bad, blast = asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(15)
    assert tools == READ_TOOLS
    served = served_report(incident)
    assert structured(report)["report_hash"] == json.loads(served)["report_hash"]
    assert text(report).encode() == served
    assert bad.is_error and "service" in text(bad)
    assert structured(blast)["service"] == "payment"
    assert "streamable HTTP on http://127.0.0.1:" in log.read_text()
