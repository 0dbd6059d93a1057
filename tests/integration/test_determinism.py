"""Invariant 1: the same log gives the same rows and ids, byte for byte — replayed, in 1 or
6 partitions, on 1 or 2 workers, across a SIGKILL and restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.integration.harness import (
    HOUR_MS,
    T0_MS,
    Names,
    WorkerProc,
    dump,
    event,
    incident_records,
    produce_events,
    steady,
)


def busy_log() -> list[dict[str, Any]]:
    """Six services for 100 min; three families spike at different times, one of them
    twice (so it gets two incidents with different ids); background errors throughout."""
    services = ("checkout", "cart", "search", "payment", "auth", "inventory")
    log = steady(T0_MS, 6000, services)
    for s in range(0, 6000, 170):
        log.append(event(T0_MS + s * 1000 + 11, "search", "GET /", error="SRCH_500"))
    bursts = [("checkout", "payment.charge", "PMT_502", 2_500), ("auth", "login", "AUTH_401",
              3_000), ("checkout", "payment.charge", "PMT_502", 4_800),
              ("inventory", "reserve", "INV_503", 3_100)]
    for service, step, code, start_s in bursts:
        for k in range(90):
            log.append(event(T0_MS + (start_s + k) * 1000 + 5, service, step, error=code))
    log.sort(key=lambda e: (e["event_time_ms"], e["service"]))
    return log


@pytest.fixture(scope="module")
def log() -> list[dict[str, Any]]:
    return busy_log()


@pytest.fixture(scope="module")
def reference(broker: str, log: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Any]:
    """One uninterrupted run on 6 partitions and one worker."""
    names = Names.fresh("ref")
    produce_events(broker, names.events, log, partitions=6)
    db = tmp_path_factory.mktemp("ref") / "ref.duckdb"
    worker = WorkerProc(broker, names, db).start()
    try:
        worker.wait_projected(len(log))
        worker.wait_triaged()  # every report version made and acknowledged,
        worker.wait_caught_up()  # and in DuckDB
    finally:
        assert worker.stop() == 0
    rows = dump(db)
    assert len(rows["incidents"]) == 4, rows["incidents"]
    records = incident_records(broker, names.incidents)
    return {"names": names, "rows": rows, "records": records, "db": db}


def latest_reports(db: Path) -> dict[str, str]:
    """Each incident's latest report hash in a DuckDB file (the last version written)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT incident_id, arg_max(report_hash, written_seq) "
                                "FROM triage_reports GROUP BY incident_id").fetchall())
    finally:
        con.close()


def _ids(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((r["incident_id"], r["seq"]) for r in records)


def test_reference_run_has_distinct_ids_for_a_family_that_spikes_twice(
        reference: dict[str, Any]) -> None:
    rows = reference["rows"]["incidents"]
    payment = [r for r in rows if r[5] == "checkout:payment.charge:PMT_502"]
    assert len(payment) == 2 and payment[0][0] != payment[1][0]
    assert len({r[0] for r in rows}) == 4
    assert len(_ids(reference["records"])) == len(set(_ids(reference["records"])))


def test_replay_of_the_same_log_gives_identical_rows_and_no_second_opened(
        broker: str, reference: dict[str, Any], log: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Fresh state (a new app id) replays the very same input into the very same output
    # topics: nothing already published may be published again.
    names = Names.fresh("replay")
    ref: Names = reference["names"]
    names.events, names.incidents, names.windows = ref.events, ref.incidents, ref.windows
    worker = WorkerProc(broker, names, tmp_path / "replay.duckdb").start()
    try:
        worker.wait_events(len(log))
        worker.wait_projected(len(log))
        suppressed = worker.health()["metrics"]["duplicates_suppressed"]  # type: ignore[index]
    finally:
        assert worker.stop() == 0
    assert dump(tmp_path / "replay.duckdb") == reference["rows"]
    def ordered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda r: (r["incident_id"], r["seq"]))

    assert ordered(incident_records(broker, ref.incidents)) == ordered(reference["records"])
    assert suppressed == len(reference["records"])


def test_one_partition_gives_the_same_rows_as_six(
        broker: str, reference: dict[str, Any], log: list[dict[str, Any]], tmp_path: Path
) -> None:
    names = Names.fresh("onepart")
    produce_events(broker, names.events, log, partitions=1)
    worker = WorkerProc(broker, names, tmp_path / "one.duckdb").start()
    try:
        worker.wait_projected(len(log))
    finally:
        assert worker.stop() == 0
    assert dump(tmp_path / "one.duckdb") == reference["rows"]


def test_two_workers_give_the_same_rows_as_one(
        broker: str, reference: dict[str, Any], log: list[dict[str, Any]], tmp_path: Path
) -> None:
    names = Names.fresh("two")
    db = tmp_path / "two.duckdb"
    first = WorkerProc(broker, names, db, role="all").start()
    second = WorkerProc(broker, names, tmp_path / "second.duckdb", role="detect").start()
    try:
        # Both members of the group own some of the six partitions before any input.
        def split(_: dict[str, Any]) -> bool:
            mine, theirs = first.health(), second.health()
            return bool(mine and theirs and mine["partitions"] and theirs["partitions"]
                        and len(mine["partitions"]) + len(theirs["partitions"]) == 6)

        first._wait(split, 90, "the partitions split between two workers")
        produce_events(broker, names.events, log, partitions=6)
        first.wait_projected(len(log))
        counted = [w.health()["metrics"]["events_in"] for w in (first, second)]  # type: ignore[index]
    finally:
        assert second.stop() == 0
        assert first.stop() == 0
    assert all(n > 0 for n in counted) and sum(counted) >= len(log), counted
    assert dump(db) == reference["rows"]


def test_sigkill_mid_stream_then_restart_leaves_duckdb_identical(
        broker: str, reference: dict[str, Any], log: list[dict[str, Any]], tmp_path: Path
) -> None:
    names = Names.fresh("kill")
    names.events = reference["names"].events
    db = tmp_path / "kill.duckdb"
    worker = WorkerProc(broker, names, db).start()
    worker.wait_events(len(log) // 3)
    worker.kill()
    worker = WorkerProc(broker, names, db).start()
    try:
        worker.wait_projected(len(log))
    finally:
        assert worker.stop() == 0
    assert dump(db) == reference["rows"]
    records = incident_records(broker, names.incidents)
    assert _ids(records) == _ids(reference["records"]), "no duplicate or lost lifecycle event"


def test_the_exported_log_replays_offline_to_the_same_rows_ids_and_report_hashes(
        broker: str, reference: dict[str, Any], tmp_path: Path) -> None:
    """Issue 13: `tocsin export` of the reference run's input, `tocsin replay` of it with no
    broker: the same DuckDB rows (incidents, lifecycle, window counts) and each incident's
    last report hash the same as the live worker's."""
    env = {**os.environ, **reference["names"].env()}
    out, db = tmp_path / "log", tmp_path / "replayed.duckdb"
    tocsin = [sys.executable, "-P", "-m", "tocsin"]
    done = subprocess.run([*tocsin, "export", "--broker", broker, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*tocsin, "replay", str(out), "--db", str(db), "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    replayed = json.loads(done.stdout)
    live = latest_reports(reference["db"])
    assert len(live) == 4
    assert {r["id"]: r["report_hash"] for r in replayed["incidents"]} == live
    assert dump(db) == reference["rows"]
    assert latest_reports(db) == live
    assert replayed["counts"]["events"] == sum(
        f["count"] for f in json.loads((out / "manifest.json").read_text())["files"]
        if f["topic"] == reference["names"].events)


def test_week_old_timestamps_are_windowed_by_event_time(broker: str, tmp_path: Path) -> None:
    """Faust's windowed tables expire by the wall clock; ours must not care how old the
    events are (these are from a week before the fixed demo epoch, and far in the past of
    any wall clock running this test)."""
    week_ago = T0_MS - 7 * 24 * HOUR_MS
    names = Names.fresh("old")
    log = steady(week_ago, 2400, ("checkout", "cart"))
    log += [event(week_ago + 2_400_000 + k * 1000, "checkout", "pay", error="OLD_1")
            for k in range(8)]
    log += steady(week_ago + 2_410_000, 900, ("checkout", "cart"))
    produce_events(broker, names.events, log)
    worker = WorkerProc(broker, names, tmp_path / "old.duckdb").start()
    try:
        worker.wait_projected(len(log))
        rows = worker.query("SELECT onset_ms, status FROM incidents")
    finally:
        assert worker.stop() == 0
    assert rows == [{"onset_ms": week_ago + 2_404_000, "status": "resolved"}]


def test_sigterm_flushes_the_last_checkpoint_so_a_restart_replays_nothing(
        broker: str, tmp_path: Path) -> None:
    names = Names.fresh("term")
    log = steady(T0_MS, 600, ("a", "b"))
    produce_events(broker, names.events, log)
    db = tmp_path / "term.duckdb"
    worker = WorkerProc(broker, names, db,
                        extra_env={"TOCSIN_CHECKPOINT_INTERVAL_MS": "3600000"}).start()
    worker.wait_events(len(log))
    assert worker.stop() == 0  # SIGTERM: the hour-long interval never fired; shutdown must
    worker = WorkerProc(broker, names, db).start()
    try:
        worker.wait_ready(90)
        time.sleep(1.0)  # a negative: no fact says "nothing was replayed"; give it the time
        assert worker.health()["metrics"]["events_in"] == 0  # type: ignore[index]
        worker.wait_projected(len(log))
    finally:
        assert worker.stop() == 0
