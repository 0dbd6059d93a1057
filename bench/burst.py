"""(e) Report versions under a burst of evidence on one open incident.

A fresh family (baseline 0) is spiked on one service, after every earlier live spike's
correlation window, and its ``opened`` event is read from ``tocsin.incidents``. Then N
distinct native alert signals for that service and env (each its own fingerprint, event
times spread over onset..onset+10 min) are POSTed to the worker's ``/v1/signals`` over
``CONCURRENCY`` connections, in *decreasing* event time: each new alert is the earliest
so far, so it enters the report's first eight alerts and changes the report's hash. (In
increasing time the report would stop changing after eight alerts, and versions would
only say that the fold is order-independent.)

``tocsin.reports`` is read from the beginning, keeping the incident's versions (key =
incident id) with the time each became readable. The final version is the one whose
alerts are the eight earliest signals of the burst: everything the report can show has
been folded. Figures: versions published for the burst (the projection folds per consumed
batch and publishes at most one version per incident per batch, so versions < signals),
versions/s and burst seconds (first POST -> final version readable), and the time from
the last POST's 202 to the final version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from tocsin.processors.signals.model import signal_id
from tocsin.streams.kafka.io import stop_quietly

from .intake import CONCURRENCY, LoadResult, drive
from .latency import GAP_S, MIN_COUNT, IncidentWatch, _error, _send
from .tail import TopicTail
from .workload import SERVICES, WINDOW_MS, Workload

REPORTS_TOPIC = "tocsin.reports"
SPREAD_MS = 10 * 60 * 1000  # event times of the burst: onset .. onset + 10 min
SHOWN_ALERTS = 8  # a report lists the first eight alerts by time (processors/report.py)
QUIET_S = 1.5  # after the final version: nothing more may come for this long


@dataclass(frozen=True)
class BurstResult:
    incident_id: str
    service: str
    signals: int  # POSTs answered 202 (one signal each)
    post: LoadResult
    versions: int  # report versions published for the incident after the burst began
    complete: bool  # the final version (the eight earliest alerts) was read
    burst_s: float | None  # first POST -> last version readable
    final_after_ack_ms: float | None  # last POST's 202 -> last version readable

    @property
    def versions_per_s(self) -> float | None:
        return self.versions / self.burst_s if self.burst_s and self.versions else None


class ReportWatch:
    """One incident's report versions on ``tocsin.reports``, with their arrival times."""

    def __init__(self, bootstrap: str, incident_id: str) -> None:
        self.bootstrap = bootstrap
        self.key = incident_id.encode()
        self.versions: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self._tail = TopicTail(bootstrap, REPORTS_TOPIC, self._note)

    async def start(self) -> None:
        await self._tail.start()

    def _note(self, rec: ConsumerRecord[bytes, bytes], now: float) -> None:
        if rec.key == self.key:
            self.versions.append((now, orjson.loads(rec.value or b"{}")))
            self.changed.set()

    async def wait(self, done: Any, timeout_s: float) -> bool:
        """Until ``done(versions)`` holds; False on timeout."""
        deadline = time.perf_counter() + timeout_s
        while not done(self.versions):
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    async def stop(self) -> None:
        await self._tail.stop()


def burst_bodies(n: int, service: str, onset_ms: int, tag: str
                 ) -> tuple[list[tuple[str, bytes]], set[str]]:
    """N native alerts in decreasing event time, and the ids of the eight earliest."""
    bodies, earliest = [], set()
    for j in range(n):
        t = onset_ms + (n - 1 - j) * SPREAD_MS // n
        fingerprint = f"burst-{tag}-{j}"
        body = {"type": "alert", "service": service, "env": "prod", "event_time_ms": t,
                "fingerprint": fingerprint, "severity": "warning", "reason": "ErrorBudgetBurn",
                "title": f"error budget burn on {service} ({j})",
                "labels": {"alertname": "ErrorBudgetBurn", "service": service,
                           "env": "prod", "slo": "availability"}}
        bodies.append(("/v1/signals", orjson.dumps(body)))
        if j >= n - SHOWN_ALERTS:
            earliest.add(signal_id("native", fingerprint))
    return bodies, earliest


def _shows(ids: set[str]) -> Any:
    def done(versions: list[tuple[float, dict[str, Any]]]) -> bool:
        return bool(versions) and {a["id"] for a in versions[-1][1]["alerts"]} == ids
    return done


async def open_incident(bootstrap: str, workload: Workload, spikes: int, tag: str,
                        timeout_s: float = 15.0) -> dict[str, Any]:
    """Spike a fresh family well after the live spikes; its ``opened`` event."""
    index = 7  # one service; its live spike's correlation window is long past
    service = SERVICES[index]
    step, code = f"{service}.burst", f"BURST_{tag}"
    start_ms = workload.end_ms + (spikes + 2) * 60_000 + 2 * WINDOW_MS + 15 * 60_000
    watch = IncidentWatch(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        await watch.start()
        for j in range(MIN_COUNT):
            if j == MIN_COUNT - 1:
                await asyncio.sleep(GAP_S)
            await _send(producer, _error(start_ms + j * 1000, service, step, code,
                                         90_000 + j))
        if await watch.wait_opened((service, step, code), timeout_s) is None:
            raise RuntimeError(f"the burst family {service}:{step}:{code} did not open "
                               f"in {timeout_s:.0f}s")
        return watch.opened_events[(service, step, code)]
    finally:
        await watch.stop()
        await stop_quietly(producer)


async def run_burst(bootstrap: str, base_url: str, workload: Workload, spikes: int,
                    tag: str, n: int, timeout_s: float) -> BurstResult:
    opened = await open_incident(bootstrap, workload, spikes, tag)
    incident_id, service = str(opened["incident_id"]), str(opened["service"])
    onset = opened["onset_ms"]
    onset_ms = onset if isinstance(onset, int) else int(onset.timestamp() * 1000)
    reports = ReportWatch(bootstrap, incident_id)
    await reports.start()
    try:
        if not await reports.wait(lambda v: bool(v), 20.0):
            raise RuntimeError(f"no report for the burst incident {incident_id} in 20s")
        before = len(reports.versions)
        bodies, earliest = burst_bodies(n, service, onset_ms, tag)
        post = await drive(base_url, bodies, CONCURRENCY, max_seconds=timeout_s)
        complete = await reports.wait(_shows(earliest), timeout_s)
        if complete:  # anything after the final version would be a surprise: wait for it
            seen = len(reports.versions)
            while True:
                await asyncio.sleep(QUIET_S)
                if len(reports.versions) == seen:
                    break
                seen = len(reports.versions)
        burst = reports.versions[before:]
        last = burst[-1][0] if burst else None
        return BurstResult(
            incident_id, service, post.requests, post, len(burst), complete,
            None if last is None else last - post.first_sent,
            None if last is None or not post.last_ack else (last - post.last_ack) * 1000)
    finally:
        await reports.stop()


def measure_burst(bootstrap: str, base_url: str, workload: Workload, spikes: int, tag: str,
                  n: int, timeout_s: float) -> BurstResult:
    return asyncio.run(run_burst(bootstrap, base_url, workload, spikes, tag, n, timeout_s))
