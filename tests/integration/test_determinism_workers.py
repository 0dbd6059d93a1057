"""Determinism across workers (ADR 0015): the same log of wide events and signals gives the
same incidents, lifecycle events and final report bytes with one worker on six partitions,
one worker on one partition (every topic Tocsin creates too), and three ``--role detect``
workers beside one ``--role project`` writer on six partitions, one of them SIGKILLed and
restarted mid-stream. Detection, trace assembly and triage are shared by the three through
their consumer groups; the triage folds read incidents and signals as global inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.harness import T0_MS, Names, WorkerProc, _produce, event, steady
from tocsin.processors.signals.model import Signal
from tocsin.schemas.signal_wire import encode_signal
from tocsin.streams.kafka.io import TopicSpec, ensure_topics
from tocsin.testing import Worker

SERVICES = ("checkout", "cart", "search", "payment", "auth", "inventory")


def events_log() -> list[dict[str, Any]]:
    """Six services for 80 min; checkout's payment step spikes twice, auth and inventory
    once each, at different times."""
    log = steady(T0_MS, 4800, SERVICES)
    bursts = [("checkout", "payment.charge", "PMT_502", 1_500), ("auth", "login", "AUTH_401",
              2_000), ("checkout", "payment.charge", "PMT_502", 3_600),
              ("inventory", "reserve", "INV_503", 2_100)]
    for service, step, code, start_s in bursts:
        for k in range(90):
            log.append(event(T0_MS + (start_s + k) * 1000 + 5, service, step, error=code))
    log.sort(key=lambda e: (e["event_time_ms"], e["service"]))
    return log


def signals_log() -> list[Signal]:
    """What the spikes correlate with: alerts for the payment step (one re-fired), a
    deploy of auth just before its spike, a runtime fault of inventory, and noise that
    correlates with nothing."""
    def at(s: int) -> int:
        return T0_MS + s * 1000

    out = [Signal(dedup_key="pmt-alert", type="alert", state="firing", source="native",
                  service="checkout", env="prod", severity="critical",
                  title="payment errors", event_time_ms=at(1_510), error_code="PMT_502"),
           Signal(dedup_key="pmt-alert", type="alert", state="resolved", source="native",
                  service="checkout", env="prod", severity="critical",
                  title="payment errors", event_time_ms=at(1_700), error_code="PMT_502"),
           Signal(dedup_key="pmt-alert", type="alert", state="firing", source="native",
                  service="checkout", env="prod", severity="critical",
                  title="payment errors", event_time_ms=at(3_620), error_code="PMT_502"),
           Signal(dedup_key="auth-deploy", type="deploy", state="firing", source="native",
                  service="auth", env="prod", severity="info", title="auth 2.1",
                  event_time_ms=at(1_950), version="2.1"),
           Signal(dedup_key="inv-oom", type="runtime", state="firing", source="native",
                  service="inventory", env="prod", severity="warning", title="OOMKilled",
                  event_time_ms=at(2_105), runtime_subtype="oom_killed", pod="inv-1")]
    out += [Signal(dedup_key=f"noise-{i}", type="alert", state="firing", source="native",
                   service="search", env="staging", severity="info", title="noise",
                   event_time_ms=at(60 * i)) for i in range(40)]
    return out


SPLIT_MS = T0_MS + 2_400_000  # the log's halves: two incidents open in the first


def produce_log(bootstrap: str, names: Names, partitions: int, half: int | None = None
                ) -> int:
    """The events keyed by service and the signals keyed by service, on fresh topics: all
    of them, or the first (``half=0``) or second half by event time."""
    def wanted(t_ms: int) -> bool:
        return half is None or (t_ms < SPLIT_MS) == (half == 0)

    events = [(str(e["service"]).encode(), orjson.dumps(e))
              for e in events_log() if wanted(e["event_time_ms"])]
    signals = [((s.service or "").encode(), encode_signal(s)) for s in signals_log()
               if wanted(s.event_time_ms)]

    async def go() -> int:
        await ensure_topics(bootstrap, [TopicSpec(names.events, partitions, 3_600_000 * 720),
                                        TopicSpec(names.topic("signals"), partitions,
                                                  3_600_000 * 720)])
        await _produce(bootstrap, names.topic("signals"), signals)
        return await _produce(bootstrap, names.events, events)
    return asyncio.run(go())


def outcome(project: Worker) -> dict[str, Any]:
    """Incidents, lifecycle events and each incident's latest report version."""
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in project.query(sql)]

    return {
        "incidents": rows("SELECT incident_id, family, onset_ms, status, seq FROM incidents "
                          "ORDER BY incident_id"),
        "events": rows("SELECT incident_id, seq, kind, at_ms FROM incident_events "
                       "ORDER BY incident_id, seq"),
        "reports": rows("SELECT incident_id, report_hash, cause_kind, cause_rule, body "
                        "FROM triage_reports QUALIFY row_number() OVER (PARTITION BY "
                        "incident_id ORDER BY written_seq DESC) = 1 ORDER BY incident_id"),
    }


def settle(project: Worker, detect: list[Worker], events: int) -> None:
    """Detection through the log, triage through every incident and signal, DuckDB
    through every report: facts, in that order."""
    first = detect[0]
    first.wait_committed("detect", "events", 120)
    first.wait_triaged(120, peers=detect[1:])
    project.wait_caught_up(120)
    assert project.query("SELECT sum(requests)::BIGINT AS n FROM step_windows")[0]["n"] \
        == events


@pytest.fixture(scope="module")
def reference(broker: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    names = Names.fresh("det-ref")
    events = produce_log(broker, names, 6)
    worker = WorkerProc(broker, names, tmp_path_factory.mktemp("ref") / "ref.duckdb").start()
    try:
        worker.wait_ready(90)
        settle(worker, [worker], events)
        result = outcome(worker)
    finally:
        assert worker.stop() == 0
    assert len(result["incidents"]) == 4, result["incidents"]
    causes = {r[0]: r[2] for r in result["reports"]}
    assert len(causes) == 4 and "deploy" in causes.values(), causes
    return result


def test_one_partition_everywhere_gives_the_same_incidents_and_reports(
        broker: str, reference: dict[str, Any], tmp_path: Path) -> None:
    names = Names.fresh("det-one")
    events = produce_log(broker, names, 1)
    worker = WorkerProc(broker, names, tmp_path / "one.duckdb",
                        extra_env={"TOCSIN_PARTITIONS": "1"}).start()
    try:
        worker.wait_ready(90)
        settle(worker, [worker], events)
        result = outcome(worker)
    finally:
        assert worker.stop() == 0
    assert result == reference


def test_three_detect_workers_and_a_kill_give_the_same_incidents_and_reports(
        broker: str, reference: dict[str, Any], tmp_path: Path) -> None:
    names = Names.fresh("det-three")
    project = WorkerProc(broker, names, tmp_path / "project.duckdb", role="project")
    detect = [WorkerProc(broker, names, tmp_path / f"d{i}.duckdb", role="detect")
              for i in range(3)]
    try:
        project.start().wait_ready(90)
        for w in detect:
            w.start()
        for w in detect:
            w.wait_ready(90)
        events = produce_log(broker, names, 6, half=0)
        # Mid-stream: once the first incident is in DuckDB, one detect worker dies
        # (SIGKILL: no checkpoint, no leaving the groups) and comes back while the
        # second half of the log arrives.
        project.wait_rows("SELECT 1 FROM incidents", 120)
        detect[1].kill()
        events += produce_log(broker, names, 6, half=1)
        detect[1].start().wait_ready(90)
        settle(project, detect, events)
        counted = [w.health()["metrics"]["events_in"] for w in detect]  # type: ignore[index]
        result = outcome(project)
    finally:
        codes = [w.stop() for w in (*detect, project)]
    assert codes == [0, 0, 0, 0]
    assert sum(1 for n in counted if n > 0) >= 2, counted  # the load was shared
    assert result == reference
