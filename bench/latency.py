"""Detection latency: live spikes produced in real time against a caught-up worker.

Each spike is a fresh family (baseline 0, so only MIN_COUNT 5 applies) on one service,
with event times after everything that service sent before. Four errors are produced and
acknowledged, then, after a short pause, the fifth: the record that crosses the
threshold. Latency = from the fifth record's acknowledgement to the moment the family's
``opened`` record is readable on ``tocsin.incidents`` (polled with a 10 ms fetch wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.streams.kafka.io import stop_quietly

from .tail import TopicTail
from .workload import EVENTS_TOPIC, SERVICES, Workload

INCIDENTS_TOPIC = "tocsin.incidents"
MIN_COUNT = 5
GAP_S = 0.1  # pause before the crossing record: the worker is idle when it arrives
FamilyKey = tuple[str, str, str]


@dataclass
class IncidentWatch:
    """Reads the incidents topic from the beginning; notes when each family opened."""

    bootstrap: str
    opened: dict[FamilyKey, float] = field(default_factory=dict)
    opened_events: dict[FamilyKey, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    _waiters: dict[FamilyKey, asyncio.Event] = field(default_factory=dict)
    _tail: TopicTail | None = None

    async def start(self) -> None:
        self._tail = TopicTail(self.bootstrap, INCIDENTS_TOPIC,
                               lambda rec, now: self._note(rec.value or b"", now))
        await self._tail.start()

    def _note(self, data: bytes, now: float) -> None:
        try:
            value = decode_incident(data)
        except SchemaError:
            return
        kind = str(value.get("kind"))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind != "opened":
            return
        key = (str(value["service"]), str(value["step"]), str(value["error_code"]))
        self.opened.setdefault(key, now)
        self.opened_events.setdefault(key, value)
        self._waiter(key).set()

    def _waiter(self, key: FamilyKey) -> asyncio.Event:
        return self._waiters.setdefault(key, asyncio.Event())

    async def wait_opened(self, key: FamilyKey, timeout_s: float) -> float | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._waiter(key).wait(), timeout_s)
            return self.opened[key]
        return None

    async def stop(self) -> None:
        if self._tail is not None:
            await self._tail.stop()


@dataclass(frozen=True)
class LatencyResult:
    samples_ms: list[float]
    missed: int
    replay_opened: list[FamilyKey]
    unexpected_opened: list[FamilyKey]  # neither a replay spike nor a live one: false alarms

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the samples (None without samples)."""
        if not self.samples_ms:
            return None
        ordered = sorted(self.samples_ms)
        rank = max(1, -(-len(ordered) * q // 100))
        return ordered[int(rank) - 1]


def _error(t_ms: int, service: str, step: str, code: str, n: int) -> dict[str, Any]:
    return {
        "event_time_ms": t_ms, "service": service, "step": step, "env": "prod",
        "status": "error", "error_code": code, "error_message": f"{code}: live spike",
        "duration_ms": 12.5, "service_version": "2.3.1", "trace_id": f"{n:032x}",
        "request_id": f"live-{n}", "user_id": f"user-{n % 5000}",
    }


async def _send(producer: AIOKafkaProducer, event: dict[str, Any]) -> None:
    """Produce one record and wait for its acknowledgement."""
    await (await producer.send(EVENTS_TOPIC, orjson.dumps(event),
                               key=event["service"].encode()))


def live_family(index: int, tag: str) -> FamilyKey:
    service = SERVICES[index % len(SERVICES)]
    return service, f"{service}.live", f"LIVE_{tag}_{index:02d}"


async def _one_spike(producer: AIOKafkaProducer, watch: IncidentWatch, index: int,
                     tag: str, start_ms: int, timeout_s: float) -> float | None:
    """Produce one spike; the detection latency in ms, or None if nothing opened."""
    service, step, code = live_family(index, tag)
    for j in range(MIN_COUNT - 1):
        await _send(producer, _error(start_ms + j * 1000, service, step, code, index * 10 + j))
    await asyncio.sleep(GAP_S)
    await _send(producer, _error(start_ms + (MIN_COUNT - 1) * 1000, service, step, code,
                                 index * 10 + MIN_COUNT))
    acked = time.perf_counter()
    opened = await watch.wait_opened((service, step, code), timeout_s)
    return None if opened is None else (opened - acked) * 1000


def _result(watch: IncidentWatch, workload: Workload, samples: list[float], missed: int,
            live: set[FamilyKey]) -> LatencyResult:
    """Sort what opened: the workload's own spikes (during the throughput phase), the live
    spikes, and anything else (a false alarm)."""
    replay = {(s.service, s.step, s.code) for s in workload.spikes}
    return LatencyResult(
        samples, missed, sorted(k for k in watch.opened if k in replay),
        sorted(k for k in watch.opened if k not in replay and k not in live))


async def run_latency(bootstrap: str, workload: Workload, spikes: int, tag: str,
                      timeout_s: float = 10.0) -> LatencyResult:
    watch = IncidentWatch(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        await watch.start()
        samples: list[float] = []
        missed = 0
        live = {live_family(i, tag) for i in range(spikes)}
        for i in range(spikes):
            start_ms = workload.end_ms + 60_000 + i * 60_000
            latency = await _one_spike(producer, watch, i, tag, start_ms, timeout_s)
            if latency is None:
                missed += 1
            else:
                samples.append(latency)
            await asyncio.sleep(0.2)
        return _result(watch, workload, samples, missed, live)
    finally:
        await watch.stop()
        await stop_quietly(producer)


def measure_latency(bootstrap: str, workload: Workload, spikes: int, tag: str
                    ) -> LatencyResult:
    return asyncio.run(run_latency(bootstrap, workload, spikes, tag))
