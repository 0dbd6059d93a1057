"""Analysts' SQL, read-only and bounded for real (ADR 0006).

Nothing here touches the writer's connection. A query runs

* on a **copy** of the database file (a *snapshot*): the sink checkpoints (the writer is
  held for milliseconds) and the file is copied without the writer's lock; a new snapshot
  is taken at most every ``snapshot_interval_ms`` and only when a batch was committed
  since the last one, and copying never takes more than a tenth of the time (two copies
  are at least ten copy times apart). DuckDB 2.0 refuses to open or attach the writer's
  file a second time in the same process ("Unique file handle conflict"), and another
  process cannot open it while the worker holds its lock, so a copy is what a reader can
  open;
* in a **child process** (one of at most ``concurrency``; beyond that: 429), which opens
  the snapshot ``read_only`` with ``enable_external_access = false``,
  ``lock_configuration = true``, ``memory_limit``, ``threads`` and no temp directory, under
  an address-space limit (``memory_limit`` + 1 GiB: DuckDB's limit does not cover the
  vectors of a query, and ``SELECT repeat('x', 50000000) FROM range(2048)`` asks for
  100 GB), at ``nice`` 19 and, on Linux, ``SCHED_IDLE``, so that detection and
  projection keep the CPU and the GIL;
* with a **statement check** first (one statement; SELECT, or EXPLAIN without ANALYZE of a
  SELECT) for a clear message; the guarantee is the read-only copy, not the check;
* **streamed**: rows are fetched in batches and encoded as they come; never more than
  ``max_rows`` + 1 rows or ``max_bytes`` of JSON (413 beyond either);
* under a **time limit** (``timeout_ms``, then ``interrupt()``: 408) and cancelled
  (``interrupt()``) when the HTTP client goes away.

The same child runs ``tocsin query`` when no worker holds the file (:func:`run_file_query`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import decimal
import itertools
import logging
import os
import re
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson

if TYPE_CHECKING:
    from tocsin.sinks.duckdb_sink import DuckDBSink

log = logging.getLogger("tocsin.query")

INCIDENTS_SQL = """
SELECT i.incident_id, i.family, i.env, i.service, i.step, i.error_code, i.status,
       i.onset_ms, i.updated_ms, i.resolved_ms, i.peak_count, i.error_count,
       r.report_hash, r.cause_kind, r.cause_confidence
FROM incidents i
LEFT JOIN (SELECT incident_id, arg_max(report_hash, written_seq) AS report_hash,
                  arg_max(cause_kind, written_seq) AS cause_kind,
                  arg_max(cause_confidence, written_seq) AS cause_confidence
           FROM triage_reports GROUP BY incident_id) r USING (incident_id)
WHERE $1::VARCHAR IS NULL OR i.status = $1
ORDER BY i.onset_ms DESC, i.incident_id
"""
REPORT_SQL = ("SELECT body FROM triage_reports WHERE incident_id = $1 "
              "ORDER BY written_seq DESC LIMIT 1")

ADDRESS_SPACE_MARGIN = 1 << 30  # beyond memory_limit: interpreter, stacks, allocator arenas
GRACE_S = 5.0  # after the time limit, a child that has not answered is killed
FETCH_ROWS = 1024  # rows fetched at once, fewer when rows are wide
FIRST_FETCH_ROWS = 16  # the first batch, before the width of a row is known
FETCH_BYTES = 4 << 20  # ... so that one batch stays near this many bytes of JSON
COPY_DUTY = 10  # snapshots are at least this many copy durations apart
RETRY_AFTER_S = 1


class QueryRefused(ValueError):
    """The statement is not one the query surface runs."""


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    """The bounds of one query; every field has a TOCSIN_QUERY_* setting (ADR 0006)."""

    max_rows: int = 100_000
    max_bytes: int = 64 << 20
    timeout_ms: int = 30_000
    memory_limit: str = "256MB"
    threads: int = 1
    nice: int = 19
    idle: bool = True  # SCHED_IDLE where the OS has it (Linux): only CPU nobody else wants

    def __post_init__(self) -> None:
        parse_bytes(self.memory_limit)
        if self.max_rows < 1 or self.max_bytes < 1024 or self.timeout_ms < 1:
            raise ValueError(f"query limits out of range: {self}")
        if self.threads < 1 or not 0 <= self.nice <= 19:
            raise ValueError(f"query threads >= 1 and nice 0..19: {self}")

    @property
    def address_space(self) -> int:
        return parse_bytes(self.memory_limit) + ADDRESS_SPACE_MARGIN

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> QueryLimits:
        """From Settings' ``query_*`` fields (those it has), then ``overrides``."""
        values = {f.name: getattr(settings, f"query_{f.name}")
                  for f in dataclasses.fields(cls) if hasattr(settings, f"query_{f.name}")}
        return cls(**{**values, **overrides})


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """A DuckDB-style size ('256MB', '1GiB', '300 MB'): MB = 10^6, MiB = 2^20."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text.lower())
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 256MB, 1GiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if size < 16 * 10**6:
        raise ValueError(f"memory limit {text!r} is below 16MB")
    return size


@dataclasses.dataclass(frozen=True)
class QueryAnswer:
    """What the HTTP view sends: a status, the body bytes, their type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # from the query's process: rows, ms, peak_rss_kb (its VmHWM during this query)
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def fail(cls, status: int, message: str, headers: Mapping[str, str] | None = None
             ) -> QueryAnswer:
        return cls(status, orjson.dumps({"error": message}), headers=dict(headers or {}))

    @property
    def error(self) -> str | None:
        if self.status < 400:
            return None
        try:
            return str(orjson.loads(self.body)["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self.body.decode(errors="replace")


# ---------------------------------------------------------------- the statement check

ALLOWED = frozenset({"SELECT", "EXPLAIN"})


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """One SELECT (DuckDB's parser decides), or EXPLAIN of one without ANALYZE."""
    statements = _statements(con, sql)
    if len(statements) != 1:
        raise QueryRefused(f"send exactly one statement, got {len(statements)}")
    try:
        kind = statements[0].type.name
    except ValueError:  # a type Python's StatementType lacks (UPDATE EXTENSIONS in 2.0.1)
        kind = "an unnamed statement type"
    if kind not in ALLOWED:
        raise QueryRefused(f"only SELECT queries are allowed here, got {kind}")
    if kind == "EXPLAIN":
        _check_explain(con, sql)


def _statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return list(con.extract_statements(sql))
    except Exception as exc:
        raise QueryRefused(f"cannot parse SQL: {exc}") from exc


def _check_explain(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """EXPLAIN ANALYZE runs its statement: only a plain EXPLAIN of a SELECT passes."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql)
              if kind != duckdb.token_type.comment]
    ends = [pos for pos, _ in tokens[1:]] + [len(sql)]
    words = [sql[pos:end].strip().upper() for (pos, _), end in zip(tokens, ends, strict=True)]
    i = 1  # words[0] is EXPLAIN
    if i < len(words) and words[i].startswith("("):
        depth = 0
        while i < len(words):
            depth += words[i].count("(") - words[i].count(")")
            if words[i].startswith(("ANALYZE", "ANALYSE")):
                break
            i += 1
            if depth <= 0:
                break
    if i >= len(words) or words[i].startswith(("ANALYZE", "ANALYSE")):
        raise QueryRefused("EXPLAIN ANALYZE runs the statement: only EXPLAIN of a SELECT "
                           "is allowed here")
    inner = _statements(con, sql[tokens[i][0]:])
    if len(inner) != 1 or inner[0].type.name != "SELECT":
        raise QueryRefused("only EXPLAIN of a SELECT is allowed here, got EXPLAIN "
                           + (inner[0].type.name if inner else "of nothing"))


# ------------------------------------------------------------------ the child process

def duckdb_config(limits: QueryLimits) -> dict[str, Any]:
    """The query instance's configuration; the order matters (DuckDB 2.0 refuses
    ``temp_directory`` given before ``enable_external_access``)."""
    return {
        "enable_external_access": False,
        "lock_configuration": True,
        "memory_limit": limits.memory_limit,
        "threads": limits.threads,
        "temp_directory": "",  # no spilling: the memory limit is the limit
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "allow_persistent_secrets": False,
    }


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (HUGEINT): as a string
        return orjson.dumps(_wide_ints(value), default=_default,
                            option=orjson.OPT_NON_STR_KEYS)


def _wide_ints(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, list | tuple):
        return [_wide_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _wide_ints(v) for k, v in value.items()}
    return value


def rows_json(columns: list[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """The body of a /v1/query answer (the streamed encoder writes the same bytes)."""
    return _dumps({"columns": columns, "rows": rows})


class _Stopped(Exception):
    """The query was interrupted; ``reason`` says why."""


class _Run:
    """One request in the child: its connection, so that the main thread can interrupt
    it, and why it was stopped."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.limits = QueryLimits(**request["limits"])
        self.lock = threading.Lock()
        self.con: duckdb.DuckDBPyConnection | None = None
        self.reason: str | None = None  # "timeout" or "cancelled"
        self.result: tuple[dict[str, Any], bytes] = ({"status": 500, "error": "no answer"}, b"")
        self.done_r, self.done_w = os.pipe()

    def stop(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
            if self.con is not None:
                self.con.interrupt()

    def run(self) -> None:
        started = time.perf_counter()
        try:
            self.result = self._execute()
        except BaseException as exc:  # noqa: BLE001 - the child must always answer
            self.result = ({"status": 500, "error": f"{type(exc).__name__}: {exc}"}, b"")
        self.result[0]["ms"] = round((time.perf_counter() - started) * 1000, 1)
        self.result[0]["peak_rss_kb"] = _peak_rss_kb()
        os.write(self.done_w, b"x")

    def _stopped(self) -> tuple[dict[str, Any], bytes]:
        if self.reason == "cancelled":
            return {"status": 499, "error": "cancelled: the client went away"}, b""
        return {"status": 408, "error": f"query ran over {self.limits.timeout_ms} ms "
                                        "(TOCSIN_QUERY_TIMEOUT_MS) and was interrupted"}, b""

    def _execute(self) -> tuple[dict[str, Any], bytes]:
        req, limits = self.request, self.limits
        try:
            con = duckdb.connect(req["db"], read_only=True, config=duckdb_config(limits))
        except duckdb.Error as exc:
            return {"status": 503, "error": f"cannot open {req['db']} read-only: {exc}"}, b""
        with self.lock:
            self.con = con
            stopped = self.reason is not None
        try:
            if stopped:
                return self._stopped()
            check_statement(con, req["sql"])
            con.execute(req["sql"], req.get("params") or [])
            columns = [d[0] for d in con.description or []]
            return self._fetch(con, columns)
        except QueryRefused as exc:
            return {"status": 400, "error": str(exc)}, b""
        except (duckdb.InterruptException, _Stopped):
            return self._stopped()
        except (duckdb.OutOfMemoryException, MemoryError) as exc:
            # a process that ran out of memory is not trusted with the next query
            return {"status": 422, "recycle": True,
                    "error": f"the query needs more than its memory ({limits.memory_limit}, "
                             f"TOCSIN_QUERY_MEMORY_LIMIT): {str(exc)[:300]}"}, b""
        except Exception as exc:  # noqa: BLE001 - a bad query is the caller's 4xx
            return {"status": 400, "error": f"{type(exc).__name__}: {exc}"}, b""
        finally:
            with self.lock:
                self.con = None
            con.close()

    def _fetch(self, con: duckdb.DuckDBPyConnection, columns: list[str]
               ) -> tuple[dict[str, Any], bytes]:
        req, limits = self.request, self.limits
        shape = req.get("shape", "rows")
        if shape == "scalar":
            row = con.fetchone()
            if row is None:
                return {"status": 404, "error": req.get("missing", "no rows")}, b""
            return {"status": 200, "rows": 1}, str(row[0]).encode()
        if shape == "records":
            head, tail = b'{"' + str(req["key"]).encode() + b'":[', b"]}"
        else:
            head, tail = b'{"columns":' + _dumps(columns) + b',"rows":[', b"]}"
        parts, size, n, batch_rows = [head], len(head) + len(tail), 0, FIRST_FETCH_ROWS
        while True:
            if self.reason is not None:
                raise _Stopped(self.reason)
            batch = con.fetchmany(min(batch_rows, limits.max_rows + 1 - n))
            if not batch:
                break
            n += len(batch)
            if n > limits.max_rows:
                return {"status": 413, "error": f"more than {limits.max_rows} rows "
                                                "(TOCSIN_QUERY_MAX_ROWS); add LIMIT"}, b""
            if shape == "records":
                chunk = _dumps([dict(zip(columns, r, strict=True)) for r in batch])[1:-1]
            else:
                chunk = _dumps(batch)[1:-1]
            size += len(chunk) + (len(parts) > 1)
            if size > limits.max_bytes:
                return {"status": 413, "error": f"answer over {limits.max_bytes} bytes "
                                                "(TOCSIN_QUERY_MAX_BYTES); select fewer "
                                                "columns or rows"}, b""
            if len(parts) > 1:
                parts.append(b",")
            parts.append(chunk)
            batch_rows = max(1, min(FETCH_ROWS, FETCH_BYTES * len(batch) // max(len(chunk), 1)))
        parts.append(tail)
        return {"status": 200, "rows": n}, b"".join(parts)


def _peak_rss_kb() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


_HEAD = struct.Struct(">I")


def _frame(payload: bytes) -> bytes:
    return _HEAD.pack(len(payload)) + payload


def _answer_frame(header: dict[str, Any], body: bytes) -> bytes:
    head = orjson.dumps(header)
    return _frame(_HEAD.pack(len(head)) + head + body)


def _split_answer(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = _HEAD.unpack_from(payload)
    return dict(orjson.loads(payload[4:4 + n])), payload[4 + n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> dict[str, Any] | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, _HEAD.unpack(head)[0])
    return None if body is None else dict(orjson.loads(body))


def _serve(request: dict[str, Any], fd: int) -> tuple[tuple[dict[str, Any], bytes], bool]:
    """Run one request on a thread; meanwhile watch the parent (a cancel message, or
    EOF) and the clock. Returns the answer and whether the parent is still there."""
    _reset_peak_rss()
    run = _Run(request)
    worker = threading.Thread(target=run.run, name="tocsin-query", daemon=True)
    worker.start()
    deadline = time.monotonic() + run.limits.timeout_ms / 1000
    parent = True
    try:
        while worker.is_alive():
            watch = [run.done_r] + ([fd] if parent else [])
            timeout = max(0.0, deadline - time.monotonic()) if run.reason is None else None
            ready, _, _ = select.select(watch, [], [], timeout)
            if run.done_r in ready:
                break
            if fd in ready:
                message = _read_frame(fd)
                if message is None:
                    parent = False
                run.stop("cancelled")
            elif not ready:
                run.stop("timeout")
        worker.join()
    finally:
        os.close(run.done_r)
        os.close(run.done_w)
    return run.result, parent


def child_main(argv: list[str] | None = None) -> int:
    """``python -m tocsin.streams.query_service --address-space N --nice K``: answer
    framed requests on stdin until EOF."""
    p = argparse.ArgumentParser(prog="tocsin-query-child")
    p.add_argument("--address-space", type=int, default=0)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--idle", action="store_true")
    args = p.parse_args(argv)
    if args.address_space:
        resource.setrlimit(resource.RLIMIT_AS, (args.address_space, args.address_space))
    if args.nice:
        os.nice(args.nice)
    if args.idle and hasattr(os, "SCHED_IDLE"):  # DuckDB's threads inherit it
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    while True:
        request = _read_frame(0)
        if request is None:
            return 0
        if request.get("op") != "query":
            continue  # a cancel that arrived after its answer
        (header, body), parent = _serve(request, 0)
        if not parent:
            return 0
        data = _answer_frame(header, body)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


def _child_command(limits: QueryLimits) -> list[str]:
    return [sys.executable, "-P", "-m", "tocsin.streams.query_service",
            "--address-space", str(limits.address_space), "--nice", str(limits.nice),
            *(["--idle"] if limits.idle else [])]


def _request(db: str, sql: str, params: Sequence[Any], limits: QueryLimits,
             **extra: Any) -> dict[str, Any]:
    return {"op": "query", "db": db, "sql": sql, "params": list(params),
            "limits": dataclasses.asdict(limits), **extra}


def _to_answer(header: Mapping[str, Any], body: bytes, shape: str) -> QueryAnswer:
    status = int(header["status"])
    stats = {k: v for k, v in header.items() if k in ("rows", "ms", "peak_rss_kb")}
    if status >= 400:
        return dataclasses.replace(QueryAnswer.fail(status, str(header.get("error"))),
                                   stats=stats)
    return QueryAnswer(status, body, "text/plain; charset=utf-8" if shape == "scalar"
                       else "application/json", stats=stats)


# ------------------------------------------------------------ one query, synchronously

def run_file_query(db: str | Path, sql: str, params: Sequence[Any] = (),
                   limits: QueryLimits | None = None) -> QueryAnswer:
    """One query on a database file no worker holds (``tocsin query``'s fallback): the
    same child, limits and check as the worker's query surface, the file read-only."""
    limits = limits or QueryLimits(nice=0, idle=False)
    proc = subprocess.Popen(_child_command(limits), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(_frame(orjson.dumps(_request(str(db), sql, params, limits))))
        proc.stdin.flush()
        # the child interrupts the query itself at timeout_ms; this is the backstop
        deadline = time.monotonic() + limits.timeout_ms / 1000 + GRACE_S + 10
        fd, data, need = proc.stdout.fileno(), b"", 4
        while len(data) < need:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return QueryAnswer.fail(408, f"query ran over {limits.timeout_ms} ms and "
                                             "its process was stopped")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return QueryAnswer.fail(500, f"the query's process exited ({proc.poll()})")
            data += chunk
            if need == 4 and len(data) >= 4:
                need = 4 + _HEAD.unpack_from(data)[0]
        header, body = _split_answer(data[4:need])
        return _to_answer(header, body, "rows")
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: the child exits (interrupting a query it still runs)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# ------------------------------------------------------------------------- snapshots

@dataclasses.dataclass(eq=False)
class Snapshot:
    path: str
    generation: int
    published: float  # time.monotonic()
    copy_s: float
    checkpoint_s: float  # of copy_s, the writer held for the checkpoint
    size: int
    refs: int = 0
    retired: bool = False


class Snapshots:
    """Read-only copies of the sink's file, newest first; a copy is deleted once a newer
    one exists and no query holds it. ``acquire`` runs on one thread only."""

    def __init__(self, sink: DuckDBSink, directory: Path, interval_s: float) -> None:
        self.sink = sink
        self.directory = directory
        self.interval_s = interval_s
        self.name = Path(sink.path).name  # DuckDB names the catalog after the file
        self.current: Snapshot | None = None
        self.published = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        shutil.rmtree(directory, ignore_errors=True)  # a crash's leftovers
        directory.mkdir(parents=True)

    def acquire(self) -> Snapshot:
        with self._lock:
            current = self.current
        if current is None or (current.generation != self.sink.generation
                               and self._due(current)):
            current = self._publish()
        with self._lock:
            current.refs += 1
        return current

    def _due(self, current: Snapshot) -> bool:
        gap = max(self.interval_s, COPY_DUTY * current.copy_s)
        return time.monotonic() - current.published >= gap

    def _publish(self) -> Snapshot:
        folder = self.directory / f"{next(self._ids):08d}"
        folder.mkdir()
        final, tmp = folder / self.name, folder / f"{self.name}.tmp"
        started = time.monotonic()
        try:
            generation = self.sink.copy_checkpoint(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        now = time.monotonic()
        snap = Snapshot(str(final), generation, now, now - started, self.sink.checkpoint_s,
                        final.stat().st_size)
        with self._lock:
            old, self.current = self.current, snap
            self.published += 1
            if old is not None:
                old.retired = True
                if old.refs == 0:
                    _remove(old)
        return snap

    def release(self, snap: Snapshot) -> None:
        with self._lock:
            snap.refs -= 1
            if snap.refs == 0 and snap.retired:
                _remove(snap)

    def close(self) -> None:
        with self._lock:
            self.current = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove(snap: Snapshot) -> None:
    shutil.rmtree(Path(snap.path).parent, ignore_errors=True)


# ---------------------------------------------------------------------- the service

class _Runner:
    """A child process, idle or answering one request."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.reap: asyncio.TimerHandle | None = None
        self.killed = False

    @property
    def alive(self) -> bool:
        return not self.killed and self.proc.returncode is None

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_frame(orjson.dumps(message)))
        await self.proc.stdin.drain()

    async def receive(self) -> tuple[dict[str, Any], bytes]:
        assert self.proc.stdout is not None
        (n,) = _HEAD.unpack(await self.proc.stdout.readexactly(4))
        return _split_answer(await self.proc.stdout.readexactly(n))

    def kill(self) -> None:
        self.killed = True
        if self.reap is not None:
            self.reap.cancel()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class QueryService:
    """The worker's query surface: ``run`` (/v1/query), ``incidents`` (/v1/incidents),
    ``latest_report`` (/v1/incidents/{id}/report), all on snapshots, in child processes,
    at most ``concurrency`` at once (429 beyond)."""

    def __init__(self, sink: DuckDBSink, *, max_rows: int = 100_000,
                 max_bytes: int = 64 << 20, timeout_ms: int = 30_000,
                 memory_limit: str = "256MB", concurrency: int = 4,
                 snapshot_interval_ms: int = 500, threads: int = 1, nice: int = 19,
                 idle_s: float = 60.0, snapshot_dir: str | Path | None = None) -> None:
        if concurrency < 1:
            raise ValueError("query concurrency must be at least 1")
        self.limits = QueryLimits(max_rows, max_bytes, timeout_ms, memory_limit, threads,
                                  nice)
        self.concurrency = concurrency
        self.idle_s = idle_s
        if snapshot_dir is None:  # an in-memory sink has no file: every query answers 503
            snapshot_dir = (tempfile.mkdtemp(prefix="tocsin-snapshots-")
                            if sink.path == ":memory:" else f"{sink.path}.snapshots")
        self.snapshots = Snapshots(sink, Path(snapshot_dir), snapshot_interval_ms / 1000)
        self._snapshot_thread = ThreadPoolExecutor(1, thread_name_prefix="tocsin-snapshot")
        self._idle: list[_Runner] = []
        self._runners: set[_Runner] = set()
        self.running = 0
        self.counts: Counter[str] = Counter()
        self._closed = False

    @classmethod
    def from_settings(cls, sink: DuckDBSink, settings: Any) -> QueryService:
        """The worker's service, limits from ``TOCSIN_QUERY_*``."""
        return cls(sink, max_rows=settings.query_max_rows, max_bytes=settings.query_max_bytes,
                   timeout_ms=settings.query_timeout_ms,
                   memory_limit=settings.query_memory_limit,
                   concurrency=settings.query_concurrency,
                   snapshot_interval_ms=settings.query_snapshot_interval_ms)

    # ---- the three reads
    async def run(self, sql: str, params: Sequence[Any] = ()) -> QueryAnswer:
        return await self._submit(sql, params, shape="rows")

    async def incidents(self, status: str | None) -> QueryAnswer:
        return await self._submit(INCIDENTS_SQL, [status], shape="records", key="incidents")

    async def latest_report(self, incident_id: str) -> QueryAnswer:
        return await self._submit(REPORT_SQL, [incident_id], shape="scalar",
                                  missing=f"no report for {incident_id}")

    def stats(self) -> dict[str, Any]:
        snap = self.snapshots.current
        return {
            "running": self.running, "concurrency": self.concurrency,
            "processes": len(self._runners), **dict(sorted(self.counts.items())),
            "snapshots": self.snapshots.published,
            "snapshot_generation": snap.generation if snap else None,
            "snapshot_age_ms": round((time.monotonic() - snap.published) * 1000)
            if snap else None,
            "snapshot_copy_ms": round(snap.copy_s * 1000, 1) if snap else None,
            "snapshot_checkpoint_ms": round(snap.checkpoint_s * 1000, 1) if snap else None,
            "snapshot_bytes": snap.size if snap else None,
        }

    async def _submit(self, sql: str, params: Sequence[Any], **extra: Any) -> QueryAnswer:
        if self._closed:
            return QueryAnswer.fail(503, "the worker is stopping")
        if self.running >= self.concurrency:  # asyncio: no lock needed
            self.counts["refused_busy"] += 1
            return QueryAnswer.fail(
                429, f"{self.concurrency} queries are running (TOCSIN_QUERY_CONCURRENCY); "
                     f"retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        self.running += 1
        gone = asyncio.Event()
        job = asyncio.ensure_future(self._job(sql, params, extra, gone))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            gone.set()  # the job interrupts the query, then frees its slot
            raise

    async def _job(self, sql: str, params: Sequence[Any], extra: dict[str, Any],
                   gone: asyncio.Event) -> QueryAnswer:
        loop = asyncio.get_running_loop()
        shape = str(extra["shape"])
        try:
            try:
                snap = await loop.run_in_executor(self._snapshot_thread,
                                                  self.snapshots.acquire)
            except Exception as exc:
                log.exception("no snapshot for a query")
                self.counts["failed"] += 1
                return QueryAnswer.fail(503, f"no snapshot to query: {exc}")
            try:
                if gone.is_set():
                    self.counts["abandoned"] += 1
                    return QueryAnswer.fail(499, "the client went away")
                request = _request(snap.path, sql, params, self.limits, **extra)
                header, body = await self._ask(request, gone)
            finally:
                self.snapshots.release(snap)
        finally:
            self.running -= 1
        status = int(header["status"])
        self.counts[{408: "timed_out", 499: "abandoned"}.get(
            status, "answered" if status < 500 else "failed")] += 1
        return _to_answer(header, body, shape)

    async def _ask(self, request: dict[str, Any], gone: asyncio.Event
                   ) -> tuple[dict[str, Any], bytes]:
        try:
            runner = await self._take()
        except Exception as exc:
            log.exception("cannot start a query process")
            return {"status": 503, "error": f"cannot start a query process: {exc}"}, b""
        answer: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        waiter = asyncio.ensure_future(gone.wait())
        try:
            await runner.send(request)
            answer = asyncio.ensure_future(runner.receive())
            limit_s = self.limits.timeout_ms / 1000 + GRACE_S
            done, _ = await asyncio.wait({answer, waiter}, timeout=limit_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if answer not in done and waiter in done:
                await runner.send({"op": "cancel"})
                done, _ = await asyncio.wait({answer}, timeout=GRACE_S)
            if answer not in done:
                runner.kill()
                return ({"status": 499, "error": "the client went away"} if gone.is_set()
                        else {"status": 408, "error": f"query ran over "
                              f"{self.limits.timeout_ms} ms and its process was stopped"}), b""
            result = answer.result()
            if result[0].get("recycle"):
                runner.kill()
        except (OSError, asyncio.IncompleteReadError) as exc:
            runner.kill()
            code = await _exit_code(runner)
            log.warning("a query process exited (%s): %s", code, exc)
            return {"status": 500, "error": f"the query's process exited ({code}); the "
                                            "worker is unaffected"}, b""
        finally:
            waiter.cancel()
            if answer is not None and not answer.done():
                answer.cancel()
            self._give_back(runner)
        return result

    async def _take(self) -> _Runner:
        while self._idle:
            runner = self._idle.pop()
            if runner.reap is not None:
                runner.reap.cancel()
            if runner.alive:
                return runner
            self._runners.discard(runner)
        proc = await asyncio.create_subprocess_exec(
            *_child_command(self.limits), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        runner = _Runner(proc)
        self._runners.add(runner)
        return runner

    def _give_back(self, runner: _Runner) -> None:
        if self._closed or not runner.alive:
            runner.kill()
            self._runners.discard(runner)
            return
        runner.reap = asyncio.get_running_loop().call_later(self.idle_s, self._reap, runner)
        self._idle.append(runner)

    def _reap(self, runner: _Runner) -> None:
        if runner in self._idle:
            self._idle.remove(runner)
            self._runners.discard(runner)
            if runner.proc.stdin is not None:
                runner.proc.stdin.close()  # EOF: the child exits

    async def close(self) -> None:
        """Stop every child (running queries get 503/500), delete the snapshots."""
        self._closed = True
        runners = list(self._runners)
        for runner in runners:
            runner.kill()
        for runner in runners:
            await _exit_code(runner)
        self._runners.clear()
        self._idle.clear()
        self._snapshot_thread.shutdown(wait=True)
        self.snapshots.close()


async def answer_unless_gone(work: Awaitable[QueryAnswer], gone: Callable[[], bool],
                             poll_s: float = 0.1) -> QueryAnswer | None:
    """``work``'s answer; None, with the query interrupted, once ``gone()`` says the
    client left. aiohttp cancels the handler of a client that went away only with
    ``handler_cancellation``; either way (cancelled, or ``gone()``) ``work`` is cancelled,
    which interrupts its query."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if gone():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return None
    except asyncio.CancelledError:
        task.cancel()
        raise


async def _exit_code(runner: _Runner) -> int | None:
    with contextlib.suppress(asyncio.TimeoutError):
        return await asyncio.wait_for(runner.proc.wait(), 5)
    return None


if __name__ == "__main__":
    sys.exit(child_main())
