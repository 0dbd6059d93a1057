"""The query surface of a real worker, over real HTTP (ADR 0006): no statement changes the
writer's file; 20M rows answer 413 without the worker growing; a query over the time
limit is interrupted (408); the 5th concurrent query gets 429; a query whose client hangs
up is interrupted."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.integration.harness import Names, WorkerProc, produce_events, spike_log
from tests.unit.test_query_service import PATH_READS, SAMPLES, UNNAMED, expand

LONG = "SELECT sum(hash(range)) FROM range(1000000000000)"  # hours, unless interrupted


def post(worker: WorkerProc, sql: str, timeout_s: float = 60
         ) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}/v1/query",
                                 data=json.dumps({"sql": sql}).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def queries(worker: WorkerProc) -> dict[str, Any]:
    health = worker.health()
    assert health is not None and health["queries"] is not None
    return dict(health["queries"])


def wait_for(worker: WorkerProc, ok: Any, what: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker._check_alive()
        q = queries(worker)
        if ok(q):
            return q
        time.sleep(0.05)
    raise TimeoutError(f"never {what}: {queries(worker)}")


def fingerprint_sql(tables: list[str]) -> str:
    """One SELECT hashing every row of every table (and the sequences): it runs through
    the query surface and on the file itself alike."""
    parts = [f"SELECT '{t}' AS t, count(*) AS n, md5(coalesce(string_agg(x::VARCHAR, '|' "
             f"ORDER BY x::VARCHAR), '')) AS h FROM \"{t}\" x" for t in tables]
    parts.append("SELECT 'seq:' || sequence_name, last_value, '' FROM duckdb_sequences()")
    return " UNION ALL ".join(parts) + " ORDER BY 1"


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_no_statement_changes_the_writers_file(broker: str, tmp_path: Path) -> None:
    """Every statement type DuckDB parses, EXPLAIN ANALYZE of every write, and the file
    and path functions, sent to a worker holding a projection: refused with a message or
    harmless; the file, read after the worker stopped, is what it was before."""
    names = Names.fresh("qbounds")
    log = spike_log()
    produce_events(broker, names.events, log)
    db = tmp_path / "qb.duckdb"
    (tmp_path / "in.csv").write_text("topic,partition,next_offset\nx,0,1\n")
    worker = WorkerProc(broker, names, db).start()
    try:
        worker.wait_projected(len(log))
        # Triage runs in its own stage: the fact that it is done is a report for every
        # incident's last lifecycle event, projected.
        worker.wait_rows("SELECT 1 FROM incidents i WHERE EXISTS (SELECT 1 FROM "
                         "triage_reports r WHERE r.incident_id = i.incident_id "
                         "AND r.incident_seq = i.seq)", 60)
        worker.wait_caught_up()
        tables = [r["table_name"] for r in worker.query(
            "SELECT table_name FROM duckdb_tables() ORDER BY 1")]
        assert {"incidents", "positions", "incident_events", "step_windows"} <= set(tables)
        sql = fingerprint_sql(tables)
        before = worker.query(sql)
        assert next(r for r in before if r["t"] == "incidents")["n"] == 1
        refused = [expand(s, tmp_path, str(db)) for group in SAMPLES.values() for s in group]
        for statement in refused + UNNAMED:
            status, body, _ = post(worker, statement)
            assert status == 400, (statement, body)
            assert any(w in body["error"] for w in ("only SELECT", "only EXPLAIN",
                                                    "EXPLAIN ANALYZE")), (statement, body)
        for statement in [expand(s, tmp_path, str(db)) for s in PATH_READS if "{snap}" not in s]:
            status, body, _ = post(worker, statement)
            assert status in (200, 400), (statement, body)
            assert "topic,partition" not in json.dumps(body), statement  # no file was read
        assert worker.health() is not None
        assert worker.query(sql) == before
        assert not (tmp_path / "out.csv").exists() and not (tmp_path / "export").exists()
    finally:
        assert worker.stop() == 0  # no crash (a dropped table used to crash it)
    con = duckdb.connect(str(db), read_only=True)
    try:
        columns = ["t", "n", "h"]
        on_file = [dict(zip(columns, r, strict=True)) for r in con.execute(sql).fetchall()]
    finally:
        con.close()
    assert on_file == before


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    names = Names.fresh("qlimits")
    log = spike_log()
    produce_events(broker, names.events, log)
    db = tmp_path_factory.mktemp("qlimits") / "ql.duckdb"
    w = WorkerProc(broker, names, db, extra_env={"TOCSIN_QUERY_TIMEOUT_MS": "6000"}).start()
    try:
        w.wait_projected(len(log))
        yield w
    finally:
        assert w.stop() == 0


def test_twenty_million_rows_answer_413_and_the_worker_does_not_grow(
        worker: WorkerProc) -> None:
    """Before: the worker grew from ~130 MB to ~5.3 GB on this query."""
    assert worker.proc is not None
    pid = worker.proc.pid
    assert post(worker, "SELECT 1")[0] == 200  # a query process is up
    before = vm(pid, "VmRSS")
    status, body, _ = post(worker, "SELECT range, repeat('x', 100) FROM range(20000000)")
    assert status == 413 and body["error"].startswith("more than 100000 rows")
    assert vm(pid, "VmRSS") - before < 50 * 1024
    # the query's process: its peak during that query (it resets the mark per query)
    peaks = [vm(c, "VmHWM") for c in children(pid)]
    assert peaks and max(peaks) < 300 * 1024, peaks
    assert worker.health() is not None


def test_a_query_over_the_time_limit_is_interrupted_and_the_worker_stays_healthy(
        worker: WorkerProc) -> None:
    timed_out = queries(worker).get("timed_out", 0)
    started = time.monotonic()
    status, body, _ = post(worker, LONG)
    took = time.monotonic() - started
    assert status == 408 and "TOCSIN_QUERY_TIMEOUT_MS" in body["error"]
    assert 6.0 <= took < 6.0 + 5.0
    assert queries(worker)["timed_out"] == timed_out + 1
    assert worker.query("SELECT count(*) AS n FROM incidents") == [{"n": 1}]


def test_the_fifth_concurrent_query_gets_429(worker: WorkerProc) -> None:
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(post(worker, LONG)[0]))
               for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(worker, lambda q: q["running"] == 4, "4 queries running")
        status, body, headers = post(worker, "SELECT 1")
        assert status == 429 and headers.get("Retry-After") == "1", body
        assert "TOCSIN_QUERY_CONCURRENCY" in body["error"]
    finally:
        for t in threads:
            t.join(timeout=30)
    assert answers == [408] * 4
    assert worker.query("SELECT 1 AS n") == [{"n": 1}]


def test_a_query_whose_client_hangs_up_is_interrupted(worker: WorkerProc) -> None:
    """The client closes its connection mid-query: the query is interrupted then, not at
    the time limit (which would count it as timed out)."""
    before = queries(worker)
    payload = json.dumps({"sql": LONG}).encode()
    sock = socket.create_connection(("127.0.0.1", worker.http_port), timeout=10)
    sock.sendall(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    wait_for(worker, lambda q: q["running"] == 1, "the query running")
    sock.close()
    after = wait_for(worker, lambda q: q["running"] == 0, "the query stopped", timeout_s=5.5)
    assert after.get("abandoned", 0) == before.get("abandoned", 0) + 1
    assert after.get("timed_out", 0) == before.get("timed_out", 0)
    assert worker.query("SELECT 1 AS n") == [{"n": 1}]
