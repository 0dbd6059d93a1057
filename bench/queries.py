"""(g) Detection and projection while analysts run heavy queries (ADR 0006).

Four fresh workers (``run --role all``, fresh app ids, so each reads the whole workload
from the start; output topics of their own, so each projects only what it detected), one
after the other in the same run, alone, with queries, with queries, alone (so that a
drift of the machine's load weighs on both sides alike), with the same settings:
``TOCSIN_QUERY_CONCURRENCY=6`` (so that all six heavy queries run at once; the default is
4) and ``TOCSIN_QUERY_TIMEOUT_MS=10000``. With queries, six client threads start with the
worker and loop one heavy query each until it is stopped:

* 3 x a CPU-bound scan, ``SELECT sum(hash(range)) FROM range(10^12)``: it runs until the
  time limit interrupts it (408), and is sent again;
* 3 x the 20M-row answer, ``SELECT range, repeat('x', 100) FROM range(20000000)``: its
  process streams 100,001 rows, encodes them and answers 413.

For each worker: detection events/s (``/healthz`` ``events_in``, as in (b)), the rows
DuckDB held when the N-th event was counted and once it settled, the projection lag
(N-th event counted → the worker's counters quiet, as (b)'s settle time) and projected
rows/s over the whole run; the worker's peak RSS. Queries run in child processes at nice
19 and SCHED_IDLE on copies of the database: the worker's own threads and GIL are not
theirs.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from tocsin import testing

from .worker import Throughput, TocsinWorker
from .workload import Workload

CLIENTS = 6
HEAVY = (
    "SELECT sum(hash(range)) FROM range(1000000000000)",
    "SELECT range, repeat('x', 100) FROM range(20000000)",
)
WORKER_ENV = {"TOCSIN_QUERY_CONCURRENCY": str(CLIENTS), "TOCSIN_QUERY_TIMEOUT_MS": "10000"}


@dataclass
class QueryLoad:
    """``CLIENTS`` threads, each POSTing its heavy query again as soon as it is answered."""

    base_url: str
    statuses: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> QueryLoad:
        for i in range(CLIENTS):
            t = threading.Thread(target=self._loop, args=(HEAVY[i % len(HEAVY)],),
                                 name=f"bench-query-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, sql: str) -> None:
        body = json.dumps({"sql": sql}).encode()
        while not self._stop.is_set():
            req = urllib.request.Request(f"{self.base_url}/v1/query", data=body,
                                         method="POST")
            status = 0
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                    status = resp.status
            except urllib.error.HTTPError as exc:
                exc.read()
                status = exc.code
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                self._stop.wait(0.1)  # not listening yet
                continue
            with self._lock:
                self.statuses[status] += 1
            if status == 429:
                self._stop.wait(1.0)

    def stop(self) -> Counter[int]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=1)  # a query still running is abandoned with the worker
        with self._lock:
            return Counter(self.statuses)


@dataclass(frozen=True)
class QueryRun:
    """One worker of (g): alone or under the query load."""

    throughput: Throughput
    rows_at_n: int  # rows DuckDB held when the N-th event was counted
    rows_final: int
    lag_s: float | None  # N-th event counted -> counters quiet
    peak_rss_mb: float | None
    statuses: dict[int, int]  # answers to the heavy queries, by HTTP status
    queries: dict[str, object]  # the worker's /healthz "queries" at the end

    @property
    def rows_per_s(self) -> float | None:
        if self.lag_s is None:
            return None
        return self.rows_final / (self.throughput.seconds + self.lag_s)


def measure_one(bootstrap: str, workload: Workload, workdir: Path, heavy: bool, n: int
                ) -> QueryRun:
    name = f"queries-{n}-{'heavy' if heavy else 'alone'}"
    # Every topic its own but the shared workload's events.
    topics = {testing.topic_env_var(t): f"bench.{name}.{t}"
              for t in testing.TOPIC_FIELDS if t != "events"}
    worker = TocsinWorker(bootstrap, workdir, env={**WORKER_ENV, **topics}, name=name).start()
    load = QueryLoad(worker.base_url).start() if heavy else None
    try:
        tput = worker.measure(workload.events, timeout_s=max(120.0, workload.events / 2000))
        at_n = worker.health() or {}
        lag = worker.wait_quiet(quiet_s=2.0, timeout_s=60.0)
        end = worker.health() or {}
        statuses = dict(load.stop()) if load is not None else {}
        rss = worker.peak_rss_mb()
    finally:
        if load is not None:
            load.stop()
        with contextlib.suppress(Exception):
            worker.stop(timeout_s=3.0)  # then SIGKILL: its query processes see EOF and exit
    return QueryRun(tput, int(at_n.get("metrics", {}).get("rows_projected", 0)),
                    int(end.get("metrics", {}).get("rows_projected", 0)),
                    lag, rss, statuses,
                    dict(end.get("queries") or {}))


ORDER = (False, True, True, False)  # heavy queries or not, worker after worker


@dataclass(frozen=True)
class QueriesPhase:
    alone: tuple[QueryRun, ...] = ()
    heavy: tuple[QueryRun, ...] = ()
    skipped: str | None = None

    @staticmethod
    def mean_rate(runs: tuple[QueryRun, ...]) -> float | None:
        return mean(r.throughput.events_per_s for r in runs) if runs else None

    @staticmethod
    def mean_lag(runs: tuple[QueryRun, ...]) -> float | None:
        lags = [r.lag_s for r in runs if r.lag_s is not None]
        return mean(lags) if lags and len(lags) == len(runs) else None


def measure_queries(bootstrap: str, workload: Workload, workdir: Path,
                    say: Callable[[str], None]) -> QueriesPhase:
    alone: list[QueryRun] = []
    heavy: list[QueryRun] = []
    for n, with_queries in enumerate(ORDER, 1):
        run = measure_one(bootstrap, workload, workdir, with_queries, n)
        (heavy if with_queries else alone).append(run)
        say(f"(g) worker {n}/{len(ORDER)} "
            f"{f'with {CLIENTS} heavy queries' if with_queries else 'alone'}: "
            f"{run.throughput.events_per_s:,.0f} events/s, projection lag "
            f"{run.lag_s if run.lag_s is not None else float('nan'):.2f} s"
            + (f", query answers {run.statuses}" if with_queries else ""))
    return QueriesPhase(tuple(alone), tuple(heavy))

