"""Reset logs and broker outages (ADR 0014), on brokers of the test's own: a log that
restarted below the stored positions is read as a new epoch (never skipped in silence), a
broker that pauses and comes back intact is waited for, and one that comes back empty under
a running worker makes it exit non-zero with one clear line."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    event,
    produce_events,
    spike_log,
    steady,
)
from tocsin.streams.kafka.broker import EmbeddedBroker, free_port

DAY_MS = 24 * 3_600_000


def spikes(start_ms: int, services: tuple[str, ...]) -> list[dict[str, object]]:
    """40 min healthy, then 2 min in which each service's charge fails."""
    log = steady(start_ms, 2400, services)
    for s in range(120):
        t = start_ms + 2_400_000 + s * 1000
        log += [event(t + i, svc, "payment.charge", error="PMT_502")
                for i, svc in enumerate(services)]
    return log + steady(start_ms + 2_520_000, 300, services)


def readyz(worker: WorkerProc) -> tuple[int, dict[str, object], str | None]:
    """/readyz's status, body and Retry-After; 0 while nothing answers yet."""
    reply = worker.readiness()
    if reply is None:
        return 0, {}, None
    return reply.status, reply.json(), reply.headers.get("Retry-After")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log").start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.proc.send_signal(signal.SIGCONT)
    b.stop()


def restart_empty(b: EmbeddedBroker) -> None:
    b.stop()
    b.start()


def test_a_log_restarted_below_the_stored_positions_is_a_new_epoch(
        own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    names = Names.fresh("epoch")
    db = tmp_path / "epoch.duckdb"
    first = spike_log()
    produce_events(own_broker.bootstrap, names.events, first)
    worker = WorkerProc(own_broker.bootstrap, names, db).start()
    try:
        worker.wait_projected(len(first))
        assert len(worker.query("SELECT incident_id FROM incidents")) == 1
    finally:
        assert worker.stop() == 0
    # The embedded broker keeps its topics in memory: a restart starts every log at 0,
    # below the positions DuckDB holds.
    restart_empty(own_broker)
    services = ("api", "cart", "search", "shipping")
    second = spikes(T0_MS + DAY_MS, services)
    produce_events(own_broker.bootstrap, names.events, second)
    worker = WorkerProc(own_broker.bootstrap, names, db).start()
    try:
        rows = worker.poll("SELECT service FROM incidents ORDER BY service",
                           lambda r: len(r) >= 1 + len(services), timeout_s=90)
        epochs = worker.query("SELECT topic, epoch, stale_position, high_watermark "
                              "FROM log_epochs")
        health = worker.health()
    finally:
        assert worker.stop() == 0
    assert [r["service"] for r in rows] == sorted(["checkout", *services]), \
        "every incident of the new log reached DuckDB, the old one is kept"
    assert epochs and all(r["stale_position"] > r["high_watermark"] for r in epochs)
    assert {r["topic"] for r in epochs} >= {names.incidents}
    assert health is not None and health["metrics"]["log_resets"]
    assert "RESET LOG" in worker.tail(200_000)


def test_a_broker_away_and_back_intact_is_waited_for(own_broker: EmbeddedBroker,
                                                     tmp_path: Path) -> None:
    names = Names.fresh("pause")
    worker = WorkerProc(own_broker.bootstrap, names, tmp_path / "pause.duckdb",
                        extra_env={"TOCSIN_BROKER_OUTAGE_EXIT_MS": "60000"}).start()
    try:
        worker.wait_ready()
        assert own_broker.proc is not None
        own_broker.proc.send_signal(signal.SIGSTOP)  # away, state intact
        try:
            worker.wait_for(lambda: readyz(worker)[0] == 503, 30,
                            "readiness says the broker is away")
            _, body, retry = readyz(worker)
            assert body["parts"]["broker"] is False and retry is not None  # type: ignore[index]
            time.sleep(10)  # the outage under test lasts 10 s
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)
        worker.wait_ready(90)
        log = spike_log()
        produce_events(own_broker.bootstrap, names.events, log)
        worker.wait_projected(len(log), timeout_s=120)
        assert len(worker.query("SELECT incident_id FROM incidents")) == 1
    finally:
        code = worker.stop()
    assert code == 0, worker.tail()


def test_a_broker_back_empty_under_a_running_worker_makes_it_exit_with_one_line(
        own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    names = Names.fresh("empty")
    worker = WorkerProc(own_broker.bootstrap, names, tmp_path / "empty.duckdb").start()
    try:
        worker.wait_ready()
        restart_empty(own_broker)
        assert worker.proc is not None
        started = time.monotonic()
        code = worker.proc.wait(timeout=60)
        elapsed = time.monotonic() - started
    except subprocess.TimeoutExpired:
        worker.stop()
        raise
    assert code != 0
    assert elapsed < 30
    lines = [line for line in worker.tail(200_000).splitlines()
             if line.startswith("tocsin: the broker")]
    assert len(lines) == 1 and "without our topics" in lines[0], worker.tail()
