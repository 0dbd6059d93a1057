"""(a) The bare ceiling: a plain aiokafka ``getmany`` loop, Tocsin's decoder, a dict count.

No consumer group (partitions are assigned), the same fetch sizes as Tocsin's worker, and
each record decoded by ``WideEventDecoder`` and counted per (service, step, error_code).
The clock runs from the first batch received until the N-th event is counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tocsin.schemas.codec import WideEventDecoder
from tocsin.streams.kafka.io import stop_quietly
from tocsin.streams.worker.settings import Settings

from .workload import EVENTS_TOPIC, PARTITIONS

Key = tuple[str, str, str | None]


@dataclass(frozen=True)
class BareResult:
    events: int
    seconds: float
    keys: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _count(records: list[ConsumerRecord[bytes, bytes]], decode: WideEventDecoder,
           counts: dict[Key, int]) -> None:
    for rec in records:
        event = decode(rec.value)
        key = (event["service"], event["step"], event.get("error_code"))
        counts[key] = counts.get(key, 0) + 1


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    s = Settings()
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=s.max_poll_records, fetch_max_bytes=s.fetch_max_bytes,
        max_partition_fetch_bytes=s.fetch_max_bytes, fetch_max_wait_ms=50,
    )


async def run_bare(bootstrap: str, events: int, timeout_s: float) -> BareResult:
    """Consume the first ``events`` records of the events topic and count them."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(EVENTS_TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        decode = WideEventDecoder()
        counts: dict[Key, int] = {}
        seen = 0
        started: float | None = None
        deadline = time.monotonic() + timeout_s
        while seen < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare consumer saw {seen} of {events} in {timeout_s:.0f}s")
            batch = await consumer.getmany(timeout_ms=100)
            if batch and started is None:
                started = time.perf_counter()
            for records in batch.values():
                _count(records, decode, counts)
                seen += len(records)
        assert started is not None
        return BareResult(seen, time.perf_counter() - started, len(counts))
    finally:
        await stop_quietly(consumer)


def measure_bare(bootstrap: str, events: int, timeout_s: float = 120.0) -> BareResult:
    return asyncio.run(run_bare(bootstrap, events, timeout_s))
