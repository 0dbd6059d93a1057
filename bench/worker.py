"""(b) Tocsin's detection path: the real worker as a subprocess, watched over HTTP.

``python -m tocsin run --role all`` (:class:`tocsin.testing.Worker`) with a fresh app id
(a clean consumer group), a 6 s session timeout, the worker's own checkpoint interval and
the intake's rate limit lifted (its HTTP intake is measured too). Throughput is read from
``/healthz`` (``metrics.events_in``, the events decoded and counted): from the first poll
that sees events counted until the count reaches N. Settled means detection's commits and
the projection's DuckDB positions at the end of every topic
(:meth:`tocsin.testing.Worker.wait_settled`). Peak RSS is the worker's ``VmHWM`` from
``/proc``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tocsin import testing

POLL_S = 0.05


class WorkerError(testing.WorkerError):
    """The worker exited, never answered, or stalled."""


@dataclass(frozen=True)
class Throughput:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class TocsinWorker(testing.Worker):
    """A bench worker: default topic names under a fresh ``bench-*`` app id, its DuckDB
    file and log in ``workdir`` (``<name>.duckdb``, ``<name>.log``), in its own process
    group; throughput, settle time and peak RSS measured from outside. ``names`` (app id
    and every topic) replaces the default topic names under ``app_id``."""

    def __init__(self, bootstrap: str, workdir: Path, role: testing.Role = "all",
                 env: dict[str, str] | None = None, name: str = "worker", *,
                 http_port: int | None = None, app_id: str | None = None,
                 log_path: Path | None = None, names: testing.Names | None = None) -> None:
        # The intake's per-token rate limit (default 50/s, burst 100; without tokens every
        # sender shares the "anonymous" bucket) is lifted: the bench measures the intake.
        super().__init__(
            bootstrap, workdir / ("bench.duckdb" if name == "worker" else f"{name}.duckdb"),
            names=names or testing.Names.defaults(app_id or f"bench-{uuid.uuid4().hex[:8]}"),
            role=role, env={"TOCSIN_INTAKE_RATE_PER_S": "1000000",
                            "TOCSIN_INTAKE_BURST": "1000000", **(env or {})},
            http_port=http_port, log_path=log_path or workdir / f"{name}.log",
            checkpoint_interval_ms=None, new_session=True)
        self.workdir = workdir

    @property
    def app_id(self) -> str:
        return self.names.app_id

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def db_path(self) -> Path:
        return self.db

    def events_in(self, counter: str = "events_in") -> int | None:
        body = self.health()
        return None if body is None else int(body["metrics"][counter])

    def wait_detecting(self, timeout_s: float) -> None:
        """Until the detection consumer holds its partitions (idle worker)."""
        self.wait_for(lambda: bool((self.health() or {}).get("detecting")), timeout_s,
                      "detection holding its partitions")

    def measure(self, events: int, timeout_s: float, counter: str = "events_in",
                start_counter: str | None = None) -> Throughput:
        """events/s from the first poll that sees counting until ``events`` are counted
        (``counter``: the /healthz metric, ``spans_in`` for the span intake). With
        ``start_counter``, the clock starts when that one moves (spans read, before the
        merge lets them through) and the whole total is what was counted."""
        deadline = time.monotonic() + timeout_s
        first: tuple[float, int] | None = None
        while time.monotonic() < deadline:
            seen = self.events_in(counter)
            now = time.perf_counter()
            if first is None and start_counter is not None and self.events_in(start_counter):
                first = (now, 0)
            if seen:
                if first is None:
                    first = (now, seen)
                if seen >= events:
                    if seen == first[1]:
                        raise WorkerError("all events were counted before the first poll")
                    return Throughput(seen - first[1], now - first[0])
            time.sleep(POLL_S)
        raise WorkerError(f"the worker counted {self.events_in(counter)} of {events} "
                          f"({counter}) in "
                          f"{timeout_s:.0f}s:\n{self.log_tail()}")

    def wait_settled_s(self, timeout_s: float = 90.0) -> float | None:
        """Seconds until everything on the log is through (:meth:`wait_settled`:
        detection's commits, then the projection's DuckDB positions, at the end of every
        topic); None if not within ``timeout_s``."""
        started = time.perf_counter()
        try:
            self.wait_settled(timeout_s)
        except testing.WaitTimeout:
            return None
        return time.perf_counter() - started

    def wait_quiet(self, quiet_s: float = 2.0, timeout_s: float = 90.0) -> float | None:
        """Seconds until the worker's work counters (events, checkpoints, rows projected)
        stopped moving for ``quiet_s``; None if they never settled within ``timeout_s``.
        Only for (g): its heavy queries hold every query slot by design, so the DuckDB
        positions :meth:`wait_settled_s` reads through ``/v1/query`` are out of reach."""
        started = time.perf_counter()
        last: tuple[int, ...] | None = None
        since = started
        while time.perf_counter() - started < timeout_s:
            body = self.health()
            now = time.perf_counter()
            if body is not None:
                m = body["metrics"]
                counters = (m["events_in"], m["checkpoints"], m["rows_projected"])
                if counters != last:
                    last, since = counters, now
                elif now - since >= quiet_s:
                    return since - started
            time.sleep(0.1)
        return None

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the worker process, in MiB (None when /proc has no answer)."""
        with contextlib.suppress(OSError, testing.WorkerError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (negative if killed,
        None if never started)."""
        return super().stop(timeout_s)
