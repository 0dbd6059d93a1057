"""The worker's query service (ADR 0006): queries on snapshots, in child processes kept
for reuse, at most ``concurrency`` at once (429 beyond), under a time limit, interrupted
when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tocsin.streams.query.limits import GRACE_S, QueryLimits
from tocsin.streams.query.protocol import (
    HEAD,
    QueryAnswer,
    child_command,
    frame,
    request_message,
    split_answer,
    to_answer,
)
from tocsin.streams.query.snapshots import Snapshots

if TYPE_CHECKING:
    from tocsin.sinks.duckdb_sink import DuckDBSink

log = logging.getLogger("tocsin.query")

INCIDENTS_SQL = """
SELECT i.incident_id, i.family, i.env, i.service, i.step, i.error_code, i.status,
       i.onset_ms, i.updated_ms, i.resolved_ms, i.peak_count, i.error_count, i.phase,
       i.acknowledged_by, r.report_hash, r.cause_kind, r.cause_confidence
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

RETRY_AFTER_S = 1


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
        self.proc.stdin.write(frame(orjson.dumps(message)))
        await self.proc.stdin.drain()

    async def receive(self) -> tuple[dict[str, Any], bytes]:
        assert self.proc.stdout is not None
        (n,) = HEAD.unpack(await self.proc.stdout.readexactly(4))
        return split_answer(await self.proc.stdout.readexactly(n))

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
                request = request_message(snap.path, sql, params, self.limits, **extra)
                header, body = await self._ask(request, gone)
            finally:
                self.snapshots.release(snap)
        finally:
            self.running -= 1
        status = int(header["status"])
        self.counts[{408: "timed_out", 499: "abandoned"}.get(
            status, "answered" if status < 500 else "failed")] += 1
        return to_answer(header, body, shape)

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
            *child_command(self.limits), stdin=asyncio.subprocess.PIPE,
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
