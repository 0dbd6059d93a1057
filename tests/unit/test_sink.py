"""The DuckDB projection: idempotent upserts, positions in the same transaction,
consistent copies for the query surface (which tests/unit/test_query_service.py covers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

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
