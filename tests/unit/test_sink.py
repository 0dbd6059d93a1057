"""The DuckDB projection: idempotent upserts, positions in the same transaction,
consistent copies for the query surface (which tests/unit/test_query_service.py covers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from tocsin.sinks.duckdb_schema import SCHEMA_VERSION
from tocsin.sinks.duckdb_sink import DuckDBSink


def lifecycle(incident: str, seq: int, kind: str, status: str, at_ms: int) -> dict[str, Any]:
    return {"incident_id": incident, "seq": seq, "kind": kind, "status": status,
            "env": "prod", "service": "s", "step": "p", "error_code": "E", "family": "s:p:E",
            "onset_ms": 1000, "at_ms": at_ms, "window_count": 5, "baseline": 0.0, "lift": None,
            "peak_count": 5, "error_count": 5, "last_error_ms": 1000, "rule": "spike.v1"}


@pytest.fixture
def sink(tmp_path: Path) -> DuckDBSink:
    return DuckDBSink(tmp_path / "db" / "t.duckdb")


def read(sink: DuckDBSink, sql: str) -> list[tuple[Any, ...]]:
    """The test's own SQL on the writer (the query surface never gets this connection)."""
    with sink._lock:
        return sink.con.execute(sql).fetchall()


def snapshot(sink: DuckDBSink) -> dict[str, Any]:
    return {t: read(sink, f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("incidents", "incident_events", "family_windows", "positions")}


def test_replaying_a_batch_changes_nothing(sink: DuckDBSink) -> None:
    events = [lifecycle("inc_a", 1, "opened", "active", 1000),
              lifecycle("inc_a", 2, "recovering", "recovering", 9000)]
    windows = [{"env": "prod", "family": "s:p:E", "service": "s", "step": "p",
                "error_code": "E", "bucket_start_ms": 0, "bucket_ms": 30000, "errors": 3}]
    sink.write(incident_events=events, family_windows=windows,
               positions={("tocsin.incidents", 0): 2})
    first = snapshot(sink)
    sink.write(incident_events=events, family_windows=windows,
               positions={("tocsin.incidents", 0): 2})
    sink.write(incident_events=events[:1], positions={("tocsin.incidents", 0): 2})
    assert snapshot(sink) == first
    assert sink.positions() == {("tocsin.incidents", 0): 2}


def test_incident_row_reflects_the_latest_lifecycle_event(sink: DuckDBSink) -> None:
    sink.write(incident_events=[lifecycle("inc_a", 1, "opened", "active", 1000)])
    sink.write(incident_events=[lifecycle("inc_a", 3, "resolved", "resolved", 20000),
                                lifecycle("inc_a", 2, "recovering", "recovering", 9000)])
    rows = read(sink, "SELECT status, seq, resolved_ms, updated_ms FROM incidents")
    assert rows == [("resolved", 3, 20000, 20000)]


def action(incident: str, seq: int, kind: str, status: str, at_ms: int, actor: str,
           phase: str, **extra: Any) -> dict[str, Any]:
    return {**lifecycle(incident, seq, kind, status, at_ms), "action_id": f"act_{seq:016x}",
            "actor": actor, "phase": phase, **extra}


def test_people_s_actions_give_the_response_columns_and_rows(sink: DuckDBSink) -> None:
    """MTTA from the first response (here an investigation, before any acknowledge), MTTR
    from the resolve; who mitigated and who resolved; one incident_actions row per action,
    in any batch order; a machine resolve after a reopen is nobody's."""
    sink.write(incident_events=[
        lifecycle("inc_a", 1, "opened", "active", 1_000),
        action("inc_a", 3, "annotated", "active", 9_000, "bo", "investigating",
               note="pool?"),
        action("inc_a", 2, "investigating", "active", 4_000, "ana", "investigating")])
    sink.write(incident_events=[
        action("inc_a", 4, "mitigated", "active", 10_000, "bo", "mitigated"),
        action("inc_a", 5, "resolved", "resolved", 16_000, "cy", "resolved")])
    columns = ("phase, acknowledged_by, acknowledged_ms, mitigated_by, mitigated_ms, "
               "resolved_by, mtta_ms, mttr_ms, resolved_ms")
    assert read(sink, f"SELECT {columns} FROM incidents") == [
        ("resolved", "ana", 4_000, "bo", 10_000, "cy", 3_000, 15_000, 16_000)]
    assert read(sink, "SELECT seq, kind, actor, note FROM incident_actions ORDER BY seq") \
        == [(2, "investigating", "ana", None), (3, "annotated", "bo", "pool?"),
            (4, "mitigated", "bo", None), (5, "resolved", "cy", None)]
    assert sink.action("act_0000000000000004") is not None
    assert [a["seq"] for a in sink.actions("inc_a")] == [2, 3, 4, 5]
    row = sink.incident("inc_a")
    assert row is not None and row["mtta_ms"] == 3_000
    sink.write(incident_events=[
        action("inc_a", 6, "reopened", "active", 20_000, "ana", "triggered")])
    assert read(sink, "SELECT status, resolved_by, mttr_ms FROM incidents") == \
        [("active", None, None)]
    sink.write(incident_events=[lifecycle("inc_a", 7, "resolved", "resolved", 30_000)])
    assert read(sink, "SELECT resolved_by, mttr_ms, acknowledged_by FROM incidents") == \
        [(None, 29_000, "ana")]
    assert read(sink, "SELECT incidents, resolved, acknowledged, resolved_by_people, "
                      "median_mtta_ms FROM service_response") == [(1, 1, 1, 0, 3_000.0)]


def test_an_incident_nobody_acted_on_has_no_response_columns(sink: DuckDBSink) -> None:
    sink.write(incident_events=[lifecycle("inc_a", 1, "opened", "active", 1_000),
                                lifecycle("inc_a", 2, "resolved", "resolved", 5_000)])
    assert read(sink, "SELECT phase, acknowledged_by, mtta_ms, resolved_by, mttr_ms "
                      "FROM incidents") == [("triggered", None, None, None, 4_000)]
    assert read(sink, "SELECT count(*) FROM incident_actions") == [(0,)]


def test_window_upserts_keep_the_latest_absolute_count(sink: DuckDBSink) -> None:
    row = {"env": "prod", "family": "f", "service": "s", "step": "p", "error_code": "E",
           "bucket_start_ms": 0, "bucket_ms": 30000}
    sink.write(family_windows=[{**row, "errors": 2}, {**row, "errors": 4}])
    sink.write(family_windows=[{**row, "errors": 5}])
    assert read(sink, "SELECT errors FROM family_windows") == [(5,)]


def test_a_failed_batch_writes_nothing_not_even_positions(sink: DuckDBSink) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        sink.write(incident_events=[{"incident_id": "x"}],  # missing seq: NOT NULL key
                   positions={("tocsin.incidents", 0): 7})
    assert sink.positions() == {}


def test_a_copy_is_the_database_as_of_its_checkpoint(sink: DuckDBSink, tmp_path: Path
                                                    ) -> None:
    """copy_checkpoint: a file another DuckDB opens read-only, holding every committed
    batch, its generation the number of batches; the writer goes on writing after it."""
    sink.write(incident_events=[lifecycle("inc_a", 1, "opened", "active", 1000)],
               positions={("tocsin.incidents", 0): 1})
    sink.write(incident_events=[lifecycle("inc_a", 2, "recovering", "recovering", 9000)],
               positions={("tocsin.incidents", 0): 2})
    assert sink.generation == 2
    copy = tmp_path / "copy.duckdb"
    assert sink.copy_checkpoint(copy) == 2
    sink.write(positions={("tocsin.incidents", 0): 3})
    con = duckdb.connect(str(copy), read_only=True)
    try:
        assert con.execute("SELECT status, seq FROM incidents").fetchall() == [
            ("recovering", 2)]
        assert con.execute("SELECT next_offset FROM positions").fetchall() == [(2,)]
    finally:
        con.close()
    assert sink.positions() == {("tocsin.incidents", 0): 3}


def test_the_writer_checkpoints_its_wal_itself_but_never_during_a_copy(
        sink: DuckDBSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's automatic checkpoint is off (it could rewrite blocks a copy is reading);
    ours runs after a commit once the WAL passes the threshold, unless a copy runs."""
    import tocsin.sinks.duckdb_sink as module

    monkeypatch.setattr(module, "WAL_CHECKPOINT_BYTES", 1)
    wal = Path(f"{sink.path}.wal")
    sink._copies = 1
    sink.write(positions={("t", 0): 1})
    assert wal.exists() and wal.stat().st_size > 1
    sink._copies = 0
    sink.write(positions={("t", 0): 2})
    assert not wal.exists() or wal.stat().st_size == 0


# ------------------------------------------------------------------ signals folded in DuckDB


def alert(key: str, at: int, state: str = "firing", occurrences: int = 1,
          title: str = "t") -> Any:
    from tocsin.processors.signals.model import Signal

    return Signal(dedup_key=key, type="alert", state=state,  # type: ignore[arg-type]
                  source="native", severity="warning", title=title, event_time_ms=at,
                  occurrences=occurrences, labels={"team": "pay", "a": "1"})


def fold_in(sink: DuckDBSink, items: list[Any], **positions: int) -> Any:
    from tocsin.streams.stages.project import SignalBatch

    batch = SignalBatch(items)
    sink.write(signal_fold=batch,
               positions={("tocsin.signals", int(p)): o for p, o in positions.items()})
    return batch


def signal_tables(sink: DuckDBSink) -> dict[str, Any]:
    return {t: read(sink, f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("signals", "signal_deliveries")}


def test_signals_folded_in_one_batch_equal_folded_record_by_record(tmp_path: Path) -> None:
    """The fold reads the held rows back inside the transaction: however the log is cut
    into batches, the rows are the same (and equal the in-memory fold's)."""
    import random

    from tocsin.processors.triage import fold
    from tocsin.streams.stages.project import folded_row

    rng = random.Random(7)
    items = []
    for i in range(80):
        s = alert(f"k{rng.randint(1, 5)}", 1000 * rng.randint(0, 9),
                  rng.choice(["firing", "acknowledged", "resolved"]), rng.randint(1, 3),
                  rng.choice("xyz"))
        items.append((s, rng.choice([None, f"d{i % 7}"])))
    one = DuckDBSink(tmp_path / "one.duckdb")
    fold_in(one, items)
    each = DuckDBSink(tmp_path / "each.duckdb")
    for item in items:
        fold_in(each, [item])
    cuts = DuckDBSink(tmp_path / "cuts.duckdb")
    start = 0
    while start < len(items):
        end = start + rng.randint(1, 9)
        fold_in(cuts, items[start:end])
        start = end
    assert signal_tables(one) == signal_tables(each) == signal_tables(cuts)
    memory: dict[str, Any] = {}
    seen = set()
    for s, delivery in items:
        if delivery is not None and (delivery, s.signal_id) in seen:
            continue
        seen.add((delivery, s.signal_id))
        memory[s.signal_id] = fold(memory.get(s.signal_id), s)
    held = one.signal_rows(memory)
    assert held == {k: folded_row(f) for k, f in memory.items()}
    assert len(read(one, "SELECT * FROM signal_deliveries")) == \
        len({(d, s.signal_id) for s, d in items if d is not None})


def test_a_redelivery_counts_once_across_writes_and_restarts(sink: DuckDBSink,
                                                             tmp_path: Path) -> None:
    s = alert("retried", 1000)
    first = fold_in(sink, [(s, "delivery-42")], **{"0": 1})
    again = fold_in(sink, [(s, "delivery-42"), (s, "delivery-43")], **{"0": 3})
    assert (first.redelivered, again.redelivered) == (0, 1)
    assert read(sink, "SELECT occurrences FROM signals") == [(2,)]
    sink.close()
    reopened = DuckDBSink(tmp_path / "db" / "t.duckdb")
    fold_in(reopened, [(s, "delivery-43"), (s, None)], **{"0": 5})
    assert read(reopened, "SELECT occurrences, first_seen_ms, last_seen_ms FROM signals") \
        == [(3, 1000, 1000)], "two deliveries and one without an id, not five"
    assert read(reopened, "SELECT * FROM signal_deliveries ORDER BY ALL") == [
        ("delivery-42", s.signal_id), ("delivery-43", s.signal_id)]
    assert reopened.positions() == {("tocsin.signals", 0): 5}


def test_a_fold_that_fails_writes_nothing_not_even_deliveries(sink: DuckDBSink) -> None:
    from tocsin.streams.stages.project import SignalBatch

    class Broken(SignalBatch):
        def fold(self, held: Any, seen: Any) -> Any:
            rows, applied = super().fold(held, seen)
            return [{**rows[0], "occurrences": "many"}], applied

    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        sink.write(signal_fold=Broken([(alert("k", 1), "d1")]),
                   positions={("tocsin.signals", 0): 1})
    assert signal_tables(sink) == {"signals": [], "signal_deliveries": []}
    assert sink.positions() == {}


def test_a_report_version_written_twice_is_one_row(sink: DuckDBSink) -> None:
    version = {"incident_id": "inc_a", "report_hash": "sha256:1", "body": "{}",
               "provenance": "{}", "generated_at_ms": 5, "incident_seq": 1}
    evidence = [{"incident_id": "inc_a", "report_hash": "sha256:1", "kind": "incident",
                 "id": "inc_a", "source": "tocsin", "summary": "s", "time_ms": 1}]
    sink.write(reports=[version], evidence=evidence, positions={("tocsin.reports", 0): 1})
    sink.write(reports=[version, version], evidence=evidence + evidence,
               positions={("tocsin.reports", 0): 3})
    assert read(sink, "SELECT incident_id, report_hash, written_seq FROM triage_reports") \
        == [("inc_a", "sha256:1", 1)]
    assert len(read(sink, "SELECT * FROM evidence")) == 1
    assert sink.report_keys() == {("inc_a", "sha256:1")}


def test_versions_read_in_one_batch_are_numbered_in_the_order_read(sink: DuckDBSink) -> None:
    # One incident's versions arrive in topic order; the latest by written_seq must be
    # the last one read, whatever order a table scan would give (hashes out of order).
    hashes = [f"sha256:{h}" for h in ("9", "1", "5", "3", "7", "2")]
    versions = [{"incident_id": "inc_a", "report_hash": h, "body": "{}", "provenance": "{}",
                 "generated_at_ms": 5, "incident_seq": 1} for h in hashes]
    sink.write(reports=versions[:1], positions={("tocsin.reports", 0): 1})
    sink.write(reports=versions[1:], positions={("tocsin.reports", 0): 6})
    assert [r[0] for r in read(sink, "SELECT report_hash FROM triage_reports "
                                      "ORDER BY written_seq")] == hashes
    assert read(sink, "SELECT arg_max(report_hash, written_seq) FROM triage_reports") \
        == [("sha256:2",)]


def test_a_file_of_schema_1_gains_the_signal_fold_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE tocsin_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO tocsin_meta VALUES ('schema_version', '1')")
    con.execute("CREATE TABLE signals (signal_id VARCHAR PRIMARY KEY, dedup_key VARCHAR, "
                "type VARCHAR, state VARCHAR, source VARCHAR, service VARCHAR, env VARCHAR, "
                "severity VARCHAR, title VARCHAR, reason VARCHAR, description VARCHAR, "
                "event_time_ms BIGINT, starts_at_ms BIGINT, ends_at_ms BIGINT, "
                "fingerprint VARCHAR, provider_url VARCHAR, labels VARCHAR, "
                "annotations VARCHAR, incident_id VARCHAR, trace_id VARCHAR, "
                "error_code VARCHAR, downstream VARCHAR, runtime_subtype VARCHAR, "
                "pod VARCHAR, container VARCHAR, node VARCHAR, exit_code INTEGER, "
                "restart_count INTEGER, version VARCHAR, \"commit\" VARCHAR, pr_url VARCHAR, "
                "author VARCHAR, occurrences INTEGER, first_seen_ms BIGINT, "
                "last_seen_ms BIGINT)")
    s = alert("old", 1000, occurrences=4)
    con.execute("INSERT INTO signals (signal_id, dedup_key, type, state, source, severity, "
                "title, event_time_ms, labels, annotations, occurrences, first_seen_ms, "
                "last_seen_ms) VALUES ($1, $2, 'alert', 'firing', 'native', 'warning', 't', "
                "1000, '{\"a\":\"1\",\"team\":\"pay\"}', '{}', 4, 1000, 1000)",
                [s.signal_id, s.dedup_key])
    con.close()
    sink = DuckDBSink(path)
    assert read(sink, "SELECT value FROM tocsin_meta WHERE key = 'schema_version'") == \
        [(str(SCHEMA_VERSION),)]
    assert read(sink, "SELECT latest_occurrences FROM signals") == [(None,)]
    fold_in(sink, [(alert("old", 2000), "d1")])
    assert read(sink, "SELECT occurrences, first_seen_ms, last_seen_ms, latest_occurrences "
                      "FROM signals") == [(5, 1000, 2000, 1)]
    assert read(sink, "SELECT * FROM signal_deliveries") == [("d1", s.signal_id)]
