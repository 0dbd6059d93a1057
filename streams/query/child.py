"""The child process that runs one query at a time with its limits (ADR 0006): the
snapshot opened ``read_only`` with external access off and the configuration locked,
the statement check, rows fetched in batches and encoded as they come, a time limit
and cancellation by the parent, under an address-space limit at low priority."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import decimal
import os
import resource
import select
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson

from tocsin.streams.query.limits import QueryLimits
from tocsin.streams.query.protocol import answer_frame, read_frame
from tocsin.streams.query.statements import QueryRefused, check_statement

FETCH_ROWS = 1024  # rows fetched at once, fewer when rows are wide
FIRST_FETCH_ROWS = 16  # the first batch, before the width of a row is known
FETCH_BYTES = 4 << 20  # ... so that one batch stays near this many bytes of JSON


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
                message = read_frame(fd)
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
    """``python -m tocsin.streams.query --address-space N --nice K``: answer
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
        request = read_frame(0)
        if request is None:
            return 0
        if request.get("op") != "query":
            continue  # a cancel that arrived after its answer
        (header, body), parent = _serve(request, 0)
        if not parent:
            return 0
        data = answer_frame(header, body)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
