"""(b) Tocsin's detection path: the real worker as a subprocess, watched over HTTP.

``python -m tocsin run --role all`` with a fresh app id (a clean consumer group), a
6 s session timeout and the intake's rate limit lifted (its HTTP intake is measured
too). Throughput is read from ``/healthz`` (``metrics.events_in``, the events decoded
and counted): from the first poll that sees events counted until the count reaches N.
Peak RSS is the worker's ``VmHWM`` from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tocsin.streams.kafka.broker import free_port

POLL_S = 0.05


class WorkerError(RuntimeError):
    """The worker exited, never answered, or stalled."""


@dataclass(frozen=True)
class Throughput:
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class TocsinWorker:
    """Start the worker, poll its health, read its peak RSS, stop it (always)."""

    def __init__(self, bootstrap: str, workdir: Path, role: str = "all",
                 env: dict[str, str] | None = None, name: str = "worker") -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.role = role
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.app_id = f"bench-{uuid.uuid4().hex[:8]}"
        self.log_path = workdir / f"{name}.log"
        self.db_path = workdir / ("bench.duckdb" if name == "worker" else f"{name}.duckdb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TocsinWorker:
        # The intake's per-token rate limit (default 50/s, burst 100; without tokens every
        # sender shares the "anonymous" bucket) is lifted: the bench measures the intake.
        env = dict(os.environ, TOCSIN_SESSION_TIMEOUT_MS="6000", TOCSIN_APP_ID=self.app_id,
                   TOCSIN_INTAKE_RATE_PER_S="1000000", TOCSIN_INTAKE_BURST="1000000",
                   **self.extra_env)
        cmd = [sys.executable, "-m", "tocsin", "run", "--broker", self.bootstrap,
               "--db", str(self.db_path), "--http-port", str(self.port),
               "--role", self.role]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise WorkerError(f"the worker exited with {self.proc.returncode}:\n"
                              f"{self.log_tail()}")

    def health(self) -> dict[str, Any] | None:
        """The /healthz body, or None while the worker does not answer."""
        self._check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def events_in(self, counter: str = "events_in") -> int | None:
        body = self.health()
        return None if body is None else int(body["metrics"][counter])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.health() is not None:
                return
            time.sleep(0.1)
        raise WorkerError(f"no /healthz answer in {timeout_s:.0f}s:\n{self.log_tail()}")

    def wait_detecting(self, timeout_s: float) -> None:
        """Until the detection consumer holds its partitions (idle worker)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.health()
            if body is not None and body.get("detecting"):
                return
            time.sleep(0.1)
        raise WorkerError(f"detection not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

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

    def wait_quiet(self, quiet_s: float = 2.0, timeout_s: float = 90.0) -> float | None:
        """Seconds until the worker's work counters (events, checkpoints, rows projected)
        stopped moving for ``quiet_s``: the tail of the backlog (last checkpoint, window
        records, DuckDB rows) is done. None if it never settled within ``timeout_s``."""
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
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (None if killed)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None

    def __enter__(self) -> TocsinWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
