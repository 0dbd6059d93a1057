"""The query surface is read-only and bounded for real (ADR 0006): every DuckDB statement
type is refused by the check, and is harmless even without it on the query connection;
rows, bytes, time, memory and concurrency are bounded; an abandoned query is interrupted.

Each query runs in a child process on a copy of the file, as in the worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.query import (
    QueryLimits,
    QueryRefused,
    QueryService,
    answer_unless_gone,
    check_statement,
    duckdb_config,
    run_file_query,
)
from tocsin.streams.query import snapshots as snapshots_module

WRITES = [
    "INSERT INTO positions VALUES ('tocsin.incidents', 0, 0)",
    "UPDATE positions SET next_offset = 0",
    "DELETE FROM incidents",
    "CREATE TABLE stolen AS SELECT * FROM incidents",
    "DROP TABLE incidents",
    "ALTER TABLE incidents RENAME TO gone",
    "MERGE INTO positions USING (SELECT 'x' AS topic) s ON positions.topic = s.topic "
    "WHEN NOT MATCHED THEN INSERT VALUES ('x', 0, 1)",
    "COPY incidents TO '{tmp}/out.csv'",
]

# One or more statements of every type DuckDB 2.0 parses SQL text into; the key is the
# type extract_statements reports (checked below, so each sample exercises its type).
SAMPLES: dict[str, list[str]] = {
    "INSERT": ["INSERT INTO positions VALUES ('tocsin.incidents', 0, 0)",
               "INSERT OR REPLACE INTO positions VALUES ('tocsin.incidents', 0, 0)"],
    "UPDATE": ["UPDATE positions SET next_offset = 0",
               "UPDATE incidents SET status = 'resolved'"],
    "DELETE": ["DELETE FROM incidents", "TRUNCATE incident_events"],
    "CREATE": ["CREATE TABLE stolen AS SELECT * FROM incidents",
               "CREATE OR REPLACE TABLE incidents AS SELECT 1 AS a",
               "CREATE VIEW v AS SELECT 1 AS a", "CREATE SEQUENCE s",
               "CREATE MACRO m(x) AS x", "CREATE FUNCTION f(x) AS x",
               "CREATE INDEX i ON incidents (status)", "CREATE SCHEMA s",
               "CREATE TYPE e AS ENUM ('a')", "CREATE TEMP TABLE t AS SELECT 1 AS a",
               "CREATE SECRET s (TYPE http)", "CREATE PERSISTENT SECRET s2 (TYPE http)"],
    "DROP": ["DROP TABLE incidents", "DROP TABLE positions", "DROP SEQUENCE report_order",
             "DROP SCHEMA main CASCADE", "DEALLOCATE p"],
    "ALTER": ["ALTER TABLE incidents RENAME TO gone",
              "ALTER TABLE positions DROP COLUMN next_offset",
              "COMMENT ON TABLE incidents IS 'x'"],
    "COPY": ["COPY incidents TO '{tmp}/out.csv'", "COPY positions FROM '{tmp}/in.csv'",
             "COPY (SELECT * FROM incidents) TO '{tmp}/out.parquet' (FORMAT parquet)"],
    "EXPLAIN": [f"EXPLAIN ANALYZE {w}" for w in WRITES] + [
        "EXPLAIN ANALYSE DELETE FROM incidents",
        "EXPLAIN /* x */ ANALYZE -- y\n DELETE FROM incidents",
        "explain analyze drop table incidents",
        "EXPLAIN (ANALYZE) DELETE FROM incidents",
        "EXPLAIN (FORMAT json, ANALYZE) DELETE FROM incidents",
        "EXPLAIN DELETE FROM incidents", "EXPLAIN DROP TABLE incidents",
        "EXPLAIN ANALYZE SELECT 1"],
    "PRAGMA": ["PRAGMA database_list", "PRAGMA version", "PRAGMA enable_profiling",
               "IMPORT DATABASE '{tmp}/export'", "COPY FROM DATABASE main TO other"],
    "SET": ["SET enable_external_access = true", "SET memory_limit = '100GB'",
            "SET lock_configuration = false", "RESET threads", "USE system",
            "SET VARIABLE v = 1", "RESET VARIABLE v"],
    "ATTACH": ["ATTACH '{db}' AS w", "ATTACH ':memory:' AS m",
               "ATTACH '{tmp}/new.duckdb' AS n"],
    "DETACH": ["DETACH DATABASE IF EXISTS x"],
    "EXPORT": ["EXPORT DATABASE '{tmp}/export'"],
    "LOAD": ["LOAD json", "INSTALL httpfs", "FORCE INSTALL json",
             "LOAD '{tmp}/evil.duckdb_extension'"],
    "CALL": ["CALL checkpoint()", "CHECKPOINT", "FORCE CHECKPOINT",
             "CALL pragma_database_list()"],
    "TRANSACTION": ["BEGIN", "COMMIT", "ROLLBACK", "ABORT"],
    "VACUUM": ["VACUUM", "ANALYZE", "VACUUM ANALYZE incidents"],
    "PREPARE": ["PREPARE p AS DELETE FROM incidents"],
    "EXECUTE": ["EXECUTE p"],
    "MULTI": ["PIVOT incidents ON status"],
    "MERGE_INTO": [WRITES[6]],
}
# Statement types of duckdb.StatementType no SQL text parses into in DuckDB 2.0.1: the
# SQL one would expect, and the type it parses as (covered above).
NOT_FROM_SQL = {
    "INVALID": None, "RELATION": None, "LOGICAL_PLAN": None, "EXTENSION": None,
    "CREATE_FUNC": ("CREATE FUNCTION f(x) AS x", "CREATE"),
    "ANALYZE": ("ANALYZE", "VACUUM"),
    "VARIABLE_SET": ("SET VARIABLE v = 1", "SET"),
    "COPY_DATABASE": ("COPY FROM DATABASE main TO other", "PRAGMA"),
}
# A type Python's enum lacks (its number is 29): refused all the same.
UNNAMED = ["UPDATE EXTENSIONS", "UPDATE EXTENSIONS (json)"]
# Reads allowed by the check; on the query connection they see the copy only.
PATH_READS = [
    "SELECT * FROM read_csv('{db}')", "SELECT * FROM read_text('{db}')",
    "SELECT * FROM read_blob('{db}')", "SELECT * FROM read_parquet('{db}')",
    "SELECT * FROM glob('{tmp}/*')", "SELECT * FROM read_text('{db}.wal')",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_json('{tmp}/in.csv')",
    "SELECT * FROM sniff_csv('{tmp}/in.csv')", "SELECT * FROM duckdb_databases()",
    "SELECT * FROM pragma_database_list()", "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_extensions()", "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_temporary_files()", "SELECT * FROM query('DELETE FROM incidents')",
    "SELECT * FROM query_table('incidents')", "SELECT nextval('report_order')",
    "SELECT current_setting('temp_directory')", "SELECT * FROM read_blob('{snap}')",
]
ALLOWED = ["SELECT 1", "FROM incidents", "WITH x AS (SELECT 1) SELECT * FROM x",
           "VALUES (1)", "DESCRIBE incidents", "SHOW TABLES", "SUMMARIZE incidents",
           "EXPLAIN SELECT * FROM incidents", "EXPLAIN (FORMAT json) SELECT 1",
           "/* a comment */ SELECT 1;", "UNPIVOT (SELECT 1 AS a) ON a INTO NAME k VALUE v"]


def lifecycle(incident: str, seq: int, kind: str, status: str, at_ms: int) -> dict[str, Any]:
    return {"incident_id": incident, "seq": seq, "kind": kind, "status": status,
            "env": "prod", "service": "s", "step": "p", "error_code": "E", "family": "s:p:E",
            "onset_ms": 1000, "at_ms": at_ms, "window_count": 5, "baseline": 0.0, "lift": None,
            "peak_count": 5, "error_count": 5, "last_error_ms": 1000, "rule": "spike.v1"}


def fill(sink: DuckDBSink) -> None:
    sink.write(
        incident_events=[lifecycle("inc_a", 1, "opened", "active", 1000),
                         lifecycle("inc_a", 2, "resolved", "resolved", 9000)],
        step_windows=[{"env": "prod", "service": "s", "step": "p", "bucket_start_ms": i,
                       "bucket_ms": 30_000, "requests": 10, "errors": 1} for i in range(50)],
        reports=[{"incident_id": "inc_a", "report_hash": "h1", "body": '{"v": 1}',
                  "status": "resolved", "incident_seq": 2, "generated_at_ms": 9000}],
        positions={("tocsin.incidents", 0): 2, ("tocsin.windows", 0): 50})


def expand(sql: str, tmp: Path, db: str, snap: str = "") -> str:
    return sql.replace("{tmp}", str(tmp)).replace("{db}", db).replace("{snap}", snap)


def fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """Every table's rows, the schema and the sequences of the current database, hashed
    (temporary objects left out: they live in the connection, not the file)."""
    h = hashlib.sha256()
    mine = "WHERE database_name = current_database() AND NOT temporary"
    for name, sql in con.execute(
            f"SELECT table_name, sql FROM duckdb_tables() {mine} ORDER BY 1").fetchall():
        rows = con.execute(f'SELECT * FROM "{name}" ORDER BY ALL').fetchall()
        h.update(repr((sql, rows)).encode())
    h.update(repr(con.execute(f"SELECT sequence_name, last_value FROM duckdb_sequences() "
                              f"{mine} ORDER BY ALL").fetchall()).encode())
    return h.hexdigest()


def writer_fingerprint(sink: DuckDBSink) -> str:
    with sink._lock:
        cur = sink.con.cursor()
        try:
            return fingerprint(cur)
        finally:
            cur.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "db" / "tocsin.duckdb")
    fill(s)
    (tmp_path / "in.csv").write_text("topic,partition,next_offset\nx,0,1\n")
    yield s
    s.close()


def serve(sink: DuckDBSink, work: Any, **limits: Any) -> Any:
    """Run ``await work(service)`` on a fresh service; close it whatever happens."""
    async def go() -> Any:
        service = QueryService(sink, **{"timeout_ms": 5000, "snapshot_interval_ms": 0,
                                        **limits})
        try:
            return await work(service)
        finally:
            await service.close()
    return asyncio.run(go())


def body(answer: Any) -> Any:
    return orjson.loads(answer.body)


def test_the_samples_cover_every_statement_type() -> None:
    con = duckdb.connect()
    names = set(duckdb.StatementType.__members__)
    assert names == set(SAMPLES) | set(NOT_FROM_SQL) | {"SELECT"}
    for kind, sqls in SAMPLES.items():
        for sql in sqls:
            found = [s.type.name for s in con.extract_statements(expand(sql, Path("/t"), "d"))]
            assert found == [kind], sql
    for kind, expected in NOT_FROM_SQL.items():
        if expected is not None:
            sql, parsed_as = expected
            assert [s.type.name for s in con.extract_statements(sql)] == [parsed_as], kind
    for sql in UNNAMED:
        with pytest.raises(ValueError, match="29"):
            _ = con.extract_statements(sql)[0].type


@pytest.mark.parametrize("sql", [s for sqls in SAMPLES.values() for s in sqls] + UNNAMED
                         + ["SELECT 1; DELETE FROM incidents", "SELECT 1; SELECT 2", ""])
def test_the_check_refuses_everything_but_one_select(sql: str) -> None:
    with pytest.raises(QueryRefused):
        check_statement(duckdb.connect(), expand(sql, Path("/t"), "d"))


@pytest.mark.parametrize("sql", ALLOWED + PATH_READS)
def test_the_check_lets_selects_and_plain_explain_through(sql: str) -> None:
    check_statement(duckdb.connect(), expand(sql, Path("/t"), "d"))


def test_every_statement_type_is_refused_with_a_message_and_changes_nothing(
        sink: DuckDBSink, tmp_path: Path) -> None:
    before = writer_fingerprint(sink)
    statements = [expand(s, tmp_path, sink.path) for sqls in SAMPLES.values()
                  for s in sqls] + UNNAMED

    async def work(service: QueryService) -> list[Any]:
        return [await service.run(sql) for sql in statements]

    for sql, answer in zip(statements, serve(sink, work), strict=True):
        assert answer.status == 400, (sql, answer)
        assert any(word in body(answer)["error"] for word in
                   ("only SELECT", "only EXPLAIN", "EXPLAIN ANALYZE")), (sql, answer)
    assert writer_fingerprint(sink) == before
    assert sink.positions() == {("tocsin.incidents", 0): 2, ("tocsin.windows", 0): 50}
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "export").exists()
    sink.write(positions={("tocsin.incidents", 0): 3})  # the writer goes on
    assert sink.positions()[("tocsin.incidents", 0)] == 3


def test_without_the_check_the_query_connection_still_cannot_write(
        sink: DuckDBSink, tmp_path: Path) -> None:
    """The real guarantee: every statement run directly on a connection configured as a
    query's (read-only copy, no external access, locked configuration) changes neither
    the copy nor the writer, and writes no file."""
    copy = tmp_path / "copy" / "tocsin.duckdb"
    copy.parent.mkdir()
    sink.copy_checkpoint(copy)
    writer_before = writer_fingerprint(sink)
    files_before = sorted(p.name for p in tmp_path.rglob("*"))
    con = duckdb.connect(str(copy), read_only=True, config=duckdb_config(QueryLimits()))
    copy_before = fingerprint(con)
    outcomes: dict[str, str] = {}
    for sql in [expand(s, tmp_path, sink.path) for sqls in SAMPLES.values()
                for s in sqls] + UNNAMED:
        try:
            con.execute(sql)
            outcomes[sql] = "ran"
        except (duckdb.Error, ValueError) as exc:
            outcomes[sql] = type(exc).__name__
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
    # What ran is harmless: temp objects, variables, a no-op checkpoint, a built-in load.
    ran = {sql for sql, what in outcomes.items() if what == "ran"}
    assert ran <= {"CREATE TEMP TABLE t AS SELECT 1 AS a", "SET VARIABLE v = 1",
                   "RESET VARIABLE v", "CREATE SECRET s (TYPE http)", "LOAD json",
                   "CALL checkpoint()", "CHECKPOINT", "FORCE CHECKPOINT", "VACUUM",
                   "ANALYZE", "VACUUM ANALYZE incidents", "CALL pragma_database_list()",
                   "PRAGMA database_list", "PRAGMA version", "PRAGMA enable_profiling",
                   "BEGIN", "COMMIT", "ROLLBACK", "ABORT", "USE system", "RESET threads",
                   "PREPARE p AS DELETE FROM incidents", "DETACH DATABASE IF EXISTS x",
                   "DEALLOCATE p", "EXPLAIN DELETE FROM incidents",
                   "EXPLAIN DROP TABLE incidents", "EXPLAIN ANALYZE SELECT 1",
                   "ATTACH ':memory:' AS m", "PIVOT incidents ON status"}, ran
    for write in WRITES:  # the plain and EXPLAIN ANALYZE forms of each write failed
        sql = expand(write, tmp_path, sink.path)
        assert outcomes[sql] != "ran" and outcomes[f"EXPLAIN ANALYZE {sql}"] != "ran", sql
    con.execute("USE tocsin")
    assert fingerprint(con) == copy_before
    assert con.execute("SELECT current_setting('enable_external_access'), "
                       "current_setting('temp_directory')").fetchall() == [(False, "")]
    con.close()
    assert writer_fingerprint(sink) == writer_before
    assert sorted(p.name for p in tmp_path.rglob("*")) == files_before


def test_path_and_file_functions_see_nothing_beyond_the_copy(
        sink: DuckDBSink, tmp_path: Path) -> None:
    async def work(service: QueryService) -> list[Any]:
        first = await service.run("SELECT 1")
        snap = service.snapshots.current
        assert first.status == 200 and snap is not None
        return [(sql, await service.run(expand(sql, tmp_path, sink.path, snap.path)))
                for sql in PATH_READS]

    before = writer_fingerprint(sink)
    snapshots = str(Path(f"{sink.path}.snapshots"))
    for sql, answer in serve(sink, work):
        if answer.status != 200:
            assert answer.status == 400 and body(answer)["error"], sql
            continue
        text = answer.body.decode()
        assert "topic,partition" not in text and "root:" not in text, sql  # no file read
        # Paths named are the copy's (under <db>.snapshots/), never the writer's file.
        assert sink.path + '"' not in text and sink.path + ".wal" not in text, sql
        if "duckdb_databases" in sql or "database_list" in sql:
            assert snapshots in text, sql
    assert writer_fingerprint(sink) == before


def test_answers_are_the_rows_incidents_and_reports(sink: DuckDBSink) -> None:
    async def work(service: QueryService) -> list[Any]:
        return [await service.run("SELECT status, seq FROM incidents"),
                await service.run("SELECT count(*) AS n FROM step_windows WHERE errors = ?",
                                  [1]),
                await service.incidents(None), await service.incidents("active"),
                await service.latest_report("inc_a"), await service.latest_report("nope"),
                await service.run("SELECT 1::HUGEINT << 100 AS big, 2.5::DECIMAL(4,1) AS d, "
                                  "INTERVAL 90 SECOND AS i, '\\x01'::BLOB AS b"),
                await service.run("SELECT current_setting('memory_limit') AS m, "
                                  "current_setting('threads') AS t, "
                                  "current_setting('enable_external_access') AS e, "
                                  "current_setting('lock_configuration') AS l")]

    rows, count, all_, active, report, missing, types, config = serve(sink, work)
    assert body(rows) == {"columns": ["status", "seq"], "rows": [["resolved", 2]]}
    assert body(count)["rows"] == [[50]]
    assert [i["incident_id"] for i in body(all_)["incidents"]] == ["inc_a"]
    assert body(all_)["incidents"][0]["report_hash"] == "h1"
    assert body(active) == {"incidents": []}
    assert report.status == 200 and report.body == b'{"v": 1}'
    assert missing.status == 404 and body(missing)["error"] == "no report for nope"
    assert body(types)["rows"] == [[str(1 << 100), 2.5, 90.0, "01"]]
    assert body(config)["rows"] == [["244.1 MiB", 1, False, True]]


def test_a_query_sees_what_was_committed_before_it(sink: DuckDBSink,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot_interval_ms 0 (and copies allowed back to back): a fresh copy whenever a
    batch was committed since; old copies are deleted once no query holds them."""
    monkeypatch.setattr(snapshots_module, "COPY_DUTY", 0)
    async def work(service: QueryService) -> list[Any]:
        seen = []
        for i in range(3):
            sink.write(positions={("tocsin.windows", 1): i})
            answer = await service.run("SELECT next_offset FROM positions "
                                       "WHERE \"partition\" = 1")
            seen.append(body(answer)["rows"])
        again = await service.run("SELECT 1")  # nothing written: the same copy
        seen.append(service.snapshots.published)
        seen.append(sorted(p.name for p in service.snapshots.directory.iterdir()))
        assert again.status == 200
        return seen

    assert serve(sink, work) == [[[0]], [[1]], [[2]], 3, ["00000003"]]
    assert not Path(f"{sink.path}.snapshots").exists()  # close() deletes them


def test_a_query_may_be_stale_by_at_most_the_snapshot_interval(sink: DuckDBSink) -> None:
    async def work(service: QueryService) -> list[Any]:
        first = await service.run("SELECT count(*) FROM positions")
        sink.write(positions={("new", 0): 1})
        stale = await service.run("SELECT count(*) FROM positions")
        service.snapshots.interval_s = 0  # as if the interval had passed
        fresh = await service.run("SELECT count(*) FROM positions")
        return [body(a)["rows"] for a in (first, stale, fresh)]

    assert serve(sink, work, snapshot_interval_ms=3_600_000) == [[[2]], [[2]], [[3]]]


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_twenty_million_rows_answer_413_without_materializing_them(sink: DuckDBSink) -> None:
    """Before: the worker grew from ~130 MB to ~5.3 GB on this query. Now the child
    streams it and stops at max_rows + 1 rows; neither process grows."""
    async def work(service: QueryService) -> Any:
        await service.run("SELECT 1")  # the child is up
        before = vm_rss_kb()
        answer = await service.run("SELECT range, repeat('x', 100) FROM range(20000000)")
        return answer, vm_rss_kb() - before

    answer, growth_kb = serve(sink, work)
    assert answer.status == 413
    assert body(answer)["error"].startswith("more than 100000 rows")
    assert answer.stats["peak_rss_kb"] < 200 * 1024, answer.stats  # the child's peak
    assert growth_kb < 30 * 1024  # this (the worker's) process


def test_answer_bytes_are_capped(sink: DuckDBSink) -> None:
    async def work(service: QueryService) -> list[Any]:
        return [await service.run("SELECT repeat('x', 10000) FROM range(200)"),
                await service.run("SELECT repeat('x', 10000) FROM range(50)")]

    over, under = serve(sink, work, max_bytes=1 << 20)
    assert over.status == 413 and "answer over 1048576 bytes" in body(over)["error"]
    assert under.status == 200 and len(under.body) < 1 << 20


def test_memory_is_bounded_and_the_next_query_runs(sink: DuckDBSink) -> None:
    """DuckDB's memory_limit bounds its buffers; vectors of huge strings are not in it
    (100 GB asked here): the child's address-space limit stops them."""
    async def work(service: QueryService) -> list[Any]:
        return [await service.run("SELECT range, repeat('x', 100) AS s FROM "
                                  "range(20000000) ORDER BY s DESC, range DESC"),
                await service.run("SELECT repeat('x', 50000000) FROM range(2048)"),
                await service.run("SELECT 42 AS n")]

    ordered, huge, after = serve(sink, work)
    assert ordered.status == 422 and "TOCSIN_QUERY_MEMORY_LIMIT" in body(ordered)["error"]
    assert ordered.stats["peak_rss_kb"] < 600 * 1024
    assert huge.status in (422, 500), huge  # refused, or its process died: not the worker
    assert body(after)["rows"] == [[42]]


def test_a_query_over_the_time_limit_is_interrupted(sink: DuckDBSink) -> None:
    async def work(service: QueryService) -> list[Any]:
        started = time.monotonic()
        slow = await service.run("SELECT sum(hash(range)) FROM range(1000000000000)")
        took = time.monotonic() - started
        return [slow, took, await service.run("SELECT 1 AS n"), service.stats()]

    slow, took, after, stats = serve(sink, work, timeout_ms=1000)
    assert slow.status == 408 and "interrupted" in body(slow)["error"]
    assert took < 1.0 + 3.0  # interrupted, not waited out (spawn + copy included)
    assert body(after)["rows"] == [[1]]
    assert stats["timed_out"] == 1 and stats["processes"] == 1  # the same child again


def test_beyond_the_concurrency_a_query_gets_429(sink: DuckDBSink) -> None:
    long = "SELECT sum(hash(range)) FROM range(1000000000000)"

    async def work(service: QueryService) -> list[Any]:
        running = [asyncio.ensure_future(service.run(long)) for _ in range(2)]
        while service.running < 2:
            await asyncio.sleep(0.01)
        refused = await service.run("SELECT 1")
        done = await asyncio.gather(*running)
        return [refused, done, await service.run("SELECT 1 AS n")]

    refused, done, after = serve(sink, work, concurrency=2, timeout_ms=1500)
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert "TOCSIN_QUERY_CONCURRENCY" in body(refused)["error"]
    assert [a.status for a in done] == [408, 408]
    assert after.status == 200


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_an_abandoned_query_is_interrupted(sink: DuckDBSink) -> None:
    """The caller's task is cancelled (aiohttp cancels a handler whose client went away):
    the query is interrupted at once, not after the time limit, and its child is kept."""
    async def work(service: QueryService) -> list[Any]:
        task = asyncio.ensure_future(
            service.run("SELECT sum(hash(range)) FROM range(1000000000000)"))
        while not service._runners:
            await asyncio.sleep(0.01)
        (runner,) = service._runners
        start = cpu_ticks(runner.proc.pid)
        while cpu_ticks(runner.proc.pid) < start + 20:  # it is computing the query
            await asyncio.sleep(0.02)
        task.cancel()
        cancelled_at = time.monotonic()
        while service.running:
            await asyncio.sleep(0.01)
        freed_s = time.monotonic() - cancelled_at
        after = await service.run("SELECT 1 AS n")
        return [freed_s, runner.alive, after, service.stats(), task.cancelled()]

    freed_s, kept, after, stats, cancelled = serve(sink, work, timeout_ms=60_000)
    assert cancelled and freed_s < 5.0  # the time limit is 60 s
    assert stats["abandoned"] == 1 and stats.get("timed_out", 0) == 0
    assert kept and stats["processes"] == 1 and after.status == 200


def test_the_cli_fallback_is_bounded_the_same_way(sink: DuckDBSink, tmp_path: Path) -> None:
    """No worker holds the file: the CLI opens it read-only in a child with the same
    check and limits."""
    sink.close()
    db = sink.path
    con = duckdb.connect(db, read_only=True)
    before = fingerprint(con)
    con.close()
    limits = QueryLimits(timeout_ms=1000, nice=0, idle=False)
    ok = run_file_query(db, "SELECT count(*) AS n FROM step_windows", limits=limits)
    assert body(ok) == {"columns": ["n"], "rows": [[50]]}
    assert run_file_query(db, "EXPLAIN ANALYZE DELETE FROM incidents",
                          limits=limits).status == 400
    assert run_file_query(db, "SELECT range FROM range(20000000)", limits=limits).status == 413
    assert run_file_query(db, "SELECT sum(hash(range)) FROM range(1000000000000)",
                          limits=limits).status == 408
    con = duckdb.connect(db, read_only=True)
    assert fingerprint(con) == before
    con.close()
    writer = duckdb.connect(db)  # a writer holds the file: 503, the CLI says so
    try:
        held = run_file_query(db, "SELECT 1", limits=limits)
    finally:
        writer.close()
    assert held.status == 503 and "read-only" in body(held)["error"]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="not a size"):
        QueryLimits(memory_limit="lots")
    with pytest.raises(ValueError, match="below"):
        QueryLimits(memory_limit="1MB")
    assert QueryLimits(memory_limit="1GiB").address_space == (1 << 30) * 2


def test_a_gone_client_or_a_cancelled_handler_cancels_the_query_task() -> None:
    async def go() -> list[Any]:
        seen: list[Any] = []

        async def work() -> Any:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("work cancelled")
                raise

        flag = {"gone": False}
        waiting = asyncio.ensure_future(
            answer_unless_gone(work(), lambda: flag["gone"], poll_s=0.01))
        await asyncio.sleep(0.05)
        flag["gone"] = True
        seen.append(await waiting)
        handler = asyncio.ensure_future(answer_unless_gone(work(), lambda: False))
        await asyncio.sleep(0.05)
        handler.cancel()  # aiohttp's handler_cancellation
        with contextlib.suppress(asyncio.CancelledError):
            await handler
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(go()) == ["work cancelled", None, "work cancelled"]


def test_query_processes_take_only_the_cpu_nobody_else_wants(sink: DuckDBSink) -> None:
    async def work(service: QueryService) -> tuple[int, int]:
        assert (await service.run("SELECT 1")).status == 200
        (runner,) = service._runners
        fields = Path(f"/proc/{runner.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[16]), int(fields[38])  # nice, policy

    nice, policy = serve(sink, work)
    assert nice == 19 and policy == os.SCHED_IDLE
