"""The benchmark workload: wide events (JSON, wide_event.v1) generated deterministically.

``N`` events over ``DURATION_MS`` of event time, round-robin over 20 services (keyed by
service). 5% of each service's events are errors, spread round-robin over enough
families that no family ever holds more than two errors in a 10-minute window (below
MIN_COUNT 5). A few spikes (``REPLAY_SPIKES``) turn a run of one service's consecutive
events into errors of a fresh family, each well after 40 minutes of history.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tocsin.streams.kafka.io import (
    CachedKeyPartitioner,
    Outgoing,
    TopicSpec,
    ensure_topics,
    send_batches,
)

EVENTS_TOPIC = "tocsin.events"
PARTITIONS = 6
T0_MS = 1_793_610_000_000  # 2026-11-02T08:20:00Z
DURATION_MS = 4 * 3600 * 1000
WINDOW_MS = 10 * 60 * 1000
ERROR_EVERY = 20  # 5% of each service's events
SPIKE_LENGTH = 30  # consecutive events of one service that fail during a replay spike
SERVICES = (
    "frontend", "checkout", "payment", "inventory", "search", "cart", "auth", "users",
    "catalog", "pricing", "shipping", "orders", "notifications", "recommendations",
    "reviews", "ads", "email", "currency", "fraud", "ledger",
)
VERBS = ("GET", "POST", "db.query", "cache.get")
DOWNSTREAMS = ("postgres", "redis", "kafka", "s3")
TRACE_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835  # spreads trace ids over all 128 bits


@dataclass(frozen=True)
class Spike:
    """A burst of ``SPIKE_LENGTH`` errors of a fresh family, from a known position."""

    service_index: int
    fraction: float  # where the burst starts, as a fraction of the workload
    code: str

    @property
    def service(self) -> str:
        return SERVICES[self.service_index]

    @property
    def step(self) -> str:
        return f"{self.service}.spike"


REPLAY_SPIKES = (
    Spike(3, 0.35, "SPIKE_A"),
    Spike(8, 0.50, "SPIKE_B"),
    Spike(13, 0.65, "SPIKE_C"),
    Spike(18, 0.80, "SPIKE_D"),
)


@dataclass(frozen=True)
class Workload:
    """Everything the phases need to know about what was produced."""

    events: int
    families: int
    start_ms: int
    end_ms: int
    bytes: int
    spikes: tuple[Spike, ...] = REPLAY_SPIKES


def steps_of(service: str) -> list[str]:
    return [f"{v} /{service}" if v in ("GET", "POST") else f"{service}.{v}" for v in VERBS]


def codes_per_step(events: int) -> int:
    """Enough codes that each family gets at most about one error per 10-minute window."""
    errors_per_service = events / len(SERVICES) / ERROR_EVERY
    windows = DURATION_MS / WINDOW_MS
    return max(8, math.ceil(errors_per_service / windows / len(VERBS)))


def _base(n: int, t_ms: int, service: str, step: str) -> dict[str, Any]:
    return {
        "event_time_ms": t_ms, "service": service, "step": step, "env": "prod",
        "status": "ok", "duration_ms": 5.0 + (n * 7919) % 250 / 10,
        "service_version": "2.3.1", "trace_id": f"{n * TRACE_MIX % (1 << 128):032x}",
        "span_id": f"{n:016x}", "request_id": f"req-{n}", "user_id": f"user-{n % 5000}",
        "attributes": {"region": "eu-west-1", "pod": f"{service}-{n % 7}"},
    }


def _failed(event: dict[str, Any], code: str, message: str,
            downstream: str | None = None) -> dict[str, Any]:
    event.update(status="error", error_code=code, error_message=message)
    if downstream is not None:
        event["downstream"] = {"service": downstream, "endpoint": None, "kind": "db"}
    return event


class _Background:
    """Round-robin of one service's errors over its (step, code) families."""

    def __init__(self, service: str, codes: int) -> None:
        self.steps = steps_of(service)
        self.codes = codes
        self.errors = 0

    def next_error(self, event: dict[str, Any]) -> dict[str, Any]:
        e, self.errors = self.errors, self.errors + 1
        step = self.steps[e % len(self.steps)]
        code = f"E{(e // len(self.steps)) % self.codes:03d}"
        event["step"] = step
        return _failed(event, code, f"{code} while handling {step}",
                       DOWNSTREAMS[e % len(DOWNSTREAMS)])


def generate(events: int) -> Iterator[dict[str, Any]]:
    """The ``events`` wide events, in event-time order, services round-robin."""
    count = len(SERVICES)
    background = [_Background(s, codes_per_step(events)) for s in SERVICES]
    spikes = {s.service_index: (int(events * s.fraction) // count, s) for s in REPLAY_SPIKES}
    for n in range(events):
        i, k = n % count, n // count  # service index, the service's own event counter
        service = SERVICES[i]
        event = _base(n, T0_MS + n * DURATION_MS // events, service,
                      background[i].steps[k % len(VERBS)])
        start, spike = spikes.get(i, (-1, None))
        if spike is not None and start <= k < start + SPIKE_LENGTH:
            event["step"] = spike.step
            yield _failed(event, spike.code, f"{spike.code}: injected spike")
        elif k % ERROR_EVERY == i % ERROR_EVERY:
            yield background[i].next_error(event)
        else:
            yield event


def family_count(events: int) -> int:
    return len(SERVICES) * len(VERBS) * codes_per_step(events) + len(REPLAY_SPIKES)


async def create_topics(bootstrap: str) -> None:
    await ensure_topics(bootstrap, [TopicSpec(EVENTS_TOPIC, PARTITIONS, 7 * 24 * 3600 * 1000)])


async def _send_batches(producer: AIOKafkaProducer, events: int) -> int:
    """Publish the workload in per-partition batches (far cheaper than a ``send()`` per
    record), each record on the partition Kafka's default partitioner gives its key."""
    size = 0
    partitioner, partitions = CachedKeyPartitioner(), list(range(PARTITIONS))

    def records() -> Iterator[Outgoing]:
        nonlocal size
        for event in generate(events):
            key = event["service"].encode()
            body = orjson.dumps(event)
            size += len(body)
            yield partitioner(key, partitions, partitions), key, body, []

    await asyncio.gather(*await send_batches(producer, EVENTS_TOPIC, records()))
    return size


async def produce(bootstrap: str, events: int) -> Workload:
    """Create the events topic and publish the workload, keyed by service (acks=all)."""
    await create_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=256 * 1024, enable_idempotence=False)
    await producer.start()
    try:
        size = await _send_batches(producer, events)
    finally:
        await producer.stop()
    return Workload(events=events, families=family_count(events), start_ms=T0_MS,
                    end_ms=T0_MS + DURATION_MS, bytes=size)
