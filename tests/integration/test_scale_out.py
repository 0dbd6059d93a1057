"""Trace assembly and triage are partitioned stages (ADR 0015): the same span log gives the
same incidents and the same final report bytes whether one worker runs every stage or two
``--role detect`` workers share them beside one ``--role project`` writer, one of them
SIGKILLed and restarted mid-stream; and the projection reads summaries, never spans.

The spans topic has six partitions, so each detect worker's span intake translates some of
them and their events meet on the events partitions in an order set by timing; detection
merges them by their sources' progress marks (the least-mark merge, ADR 0015), so the
incidents do not depend on that timing. The by-trace and summaries topics have six
partitions too, shared by both detect workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tocsin.clients.demo import _trace_records
from tocsin.clients.produce import ProduceReport, publish
from tocsin.streams.kafka.io import TopicSpec, ensure_topics
from tocsin.testing import Names, Worker

T0_MS = 1_793_610_000_000
FAMILY = "checkout:POST /api/checkout:HTTP_502"


def spans_log() -> list[list[tuple[bytes | None, bytes]]]:
    """The demo's failure in three parts: 20 healthy minutes, a 3-minute burst where
    payment declines two of every three requests, 12 minutes of recovery."""
    burst = [i for i in range(180) if i % 3 != 0]
    return [_trace_records(1200, (), T0_MS, seed=1),
            _trace_records(180, burst, T0_MS + 1_200_000, seed=2),
            _trace_records(720, (), T0_MS + 1_380_000, seed=3)]


def produce(broker: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    async def go() -> None:
        await ensure_topics(broker, [TopicSpec(topic, 6, 3_600_000)])
        await publish(broker, topic, records, ProduceReport())
    asyncio.run(go())


@pytest.fixture(scope="module")
def spans_topic(broker: str) -> str:
    topic = f"spans-{Names.fresh('scale').app_id}"
    for part in spans_log():
        produce(broker, topic, part)
    return topic


def outcome(worker: Worker) -> dict[str, Any]:
    """Incidents (id, family, onset, status) and, for the resolved checkout incident, its
    final report's hash and bytes, once that report is in DuckDB."""
    row = worker.wait_rows(
        "SELECT r.incident_id, r.report_hash, r.body FROM triage_reports r "
        f"JOIN incidents i USING (incident_id) WHERE i.family = '{FAMILY}' "
        "AND i.status = 'resolved' AND r.status = 'resolved' "
        "AND json_extract(r.body, '$.snapshots.blast.affected_requests')::INT = 120 "
        "ORDER BY r.written_seq DESC LIMIT 1", timeout_s=120)[0]
    incidents = worker.query("SELECT incident_id, family, onset_ms FROM incidents "
                             "ORDER BY incident_id")
    return {"incidents": [(r["incident_id"], r["family"], r["onset_ms"]) for r in incidents],
            "report_hash": row["report_hash"],
            "body": orjson.loads(row["body"])}


def test_two_detect_workers_and_a_kill_give_one_workers_incidents_and_report(
        broker: str, spans_topic: str, tmp_path: Path) -> None:
    one = Worker(broker, tmp_path / "one.duckdb",
                 names=Names.fresh("one").with_topics(spans=spans_topic)).start()
    try:
        one.wait_ready(90)
        reference = outcome(one)
        consumed = one.query("SELECT DISTINCT topic FROM positions")
    finally:
        assert one.stop() == 0
    assert reference["body"]["cause"]["rule_id"] == "trace_downstream"
    # The projection's input is summaries: no events, no spans, no regrouped spans.
    topics = {r["topic"] for r in consumed}
    names = one.names
    assert not topics & {spans_topic, names.topic("events"), names.topic("spans_by_trace"),
                         names.topic("summaries")}, topics

    names = Names.fresh("two").with_topics(spans=spans_topic)
    project = Worker(broker, tmp_path / "two.duckdb", names=names, role="project")
    detect = [Worker(broker, tmp_path / f"d{i}.duckdb", names=names, role="detect")
              for i in range(2)]
    try:
        project.start().wait_ready(90)
        for w in detect:
            w.start()
        for w in detect:
            w.wait_ready(90)
        # Mid-stream: the first incident is open; one detect worker dies and comes back.
        project.wait_rows(f"SELECT 1 FROM incidents WHERE family = '{FAMILY}'", 120)
        detect[0].restart(hard=True).wait_ready(90)
        result = outcome(project)
    finally:
        codes = [w.stop() for w in (*detect, project)]
    assert codes == [0, 0, 0]
    assert result["incidents"] == reference["incidents"]
    assert result["report_hash"] == reference["report_hash"]
    assert result["body"] == reference["body"]
