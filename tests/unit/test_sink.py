"""The DuckDB projection: idempotent upserts, positions in the same transaction,
read-only query surface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tocsin.sinks.duckdb_sink import DuckDBSink, ReadOnlyViolation


def lifecycle(incident: str, seq: int, kind: str, status: str, at_ms: int) -> dict[str, Any]:
    return {"incident_id": incident, "seq": seq, "kind": kind, "status": status,
            "env": "prod", "service": "s", "step": "p", "error_code": "E", "family": "s:p:E",
            "onset_ms": 1000, "at_ms": at_ms, "window_count": 5, "baseline": 0.0, "lift": None,
            "peak_count": 5, "error_count": 5, "last_error_ms": 1000, "rule": "spike.v1"}


@pytest.fixture
def sink(tmp_path: Path) -> DuckDBSink:
    return DuckDBSink(tmp_path / "db" / "t.duckdb")


def snapshot(sink: DuckDBSink) -> dict[str, Any]:
    return {t: sink.query(f"SELECT * FROM {t} ORDER BY ALL")[1]
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
    _, rows = sink.query("SELECT status, seq, resolved_ms, updated_ms FROM incidents")
    assert rows == [("resolved", 3, 20000, 20000)]


def test_window_upserts_keep_the_latest_absolute_count(sink: DuckDBSink) -> None:
    row = {"env": "prod", "family": "f", "service": "s", "step": "p", "error_code": "E",
           "bucket_start_ms": 0, "bucket_ms": 30000}
    sink.write(family_windows=[{**row, "errors": 2}, {**row, "errors": 4}])
    sink.write(family_windows=[{**row, "errors": 5}])
    assert sink.query("SELECT errors FROM family_windows")[1] == [(5,)]


def test_a_failed_batch_writes_nothing_not_even_positions(sink: DuckDBSink) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        sink.write(incident_events=[{"incident_id": "x"}],  # missing seq: NOT NULL key
                   positions={("tocsin.incidents", 0): 7})
    assert sink.positions() == {}


@pytest.mark.parametrize("sql", ["DELETE FROM incidents", "DROP TABLE incidents",
                                 "SELECT 1; SELECT 2", "COPY incidents TO 'x.csv'",
                                 "ATTACH 'other.duckdb'", "INSERT INTO positions VALUES ('a',0,1)",
                                 "SET enable_external_access = true"])
def test_query_surface_is_read_only(sink: DuckDBSink, sql: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        sink.query(sql)


def test_query_surface_cannot_read_files(sink: DuckDBSink, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(Exception, match=r"(?i)external|permission"):
        sink.query(f"SELECT * FROM read_csv('{secret}')")
