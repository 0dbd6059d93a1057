"""Small aiokafka helpers: topic creation with explicit configs, reading a topic to its end,
dead-letter records.

Tansu quirks shape these (measured on Tansu 0.6): ``end_offsets`` returns the base offset of the
last batch, so "caught up" is decided from the fetch high watermark; DescribeConfigs only
knows configs given at creation, so every topic is created with explicit ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    compacted: bool = False


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], replication: int = 1,
                        timeout_s: float = 20.0) -> None:
    """Create what is missing, with explicit ``retention.ms`` and ``cleanup.policy``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                s.name, s.partitions, replication,
                topic_configs={
                    "retention.ms": str(s.retention_ms),
                    "cleanup.policy": "compact" if s.compacted else "delete",
                },
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


async def wait_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float
                           ) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if loop.time() > deadline:
            raise KafkaError(f"topic {topic} has no partitions")
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.1)


async def read_to_end(bootstrap: str, topic: str, idle_timeout_s: float = 10.0,
                      ends: dict[int, int] | None = None, starts: dict[int, int] | None = None
                      ) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of a topic, from the beginning (or from ``starts``, partition -> offset,
    where given) to the high watermark seen at fetch time; each partition's end (that high
    watermark) is put in ``ends`` when given."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in await wait_partitions(consumer, topic, 10.0)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if starts and starts.get(tp.partition):
                consumer.seek(tp, starts[tp.partition])
        pending = set(tps)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=100, max_records=10_000)
            for recs in batch.values():
                records.extend(recs)
            progressed = bool(batch)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    pending.discard(tp)
                    if ends is not None:
                        ends[tp.partition] = high
                    progressed = True
            if progressed:
                last_progress = loop.time()
            elif loop.time() - last_progress > idle_timeout_s:
                raise KafkaError(f"reading {topic} to its end stalled on {sorted(pending)}")
    finally:
        await stop_quietly(consumer)
    return records


def dead_letter_headers(record: ConsumerRecord[bytes, bytes], reason: str,
                        field: str | None = None) -> list[tuple[str, bytes]]:
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("tocsin.dlq.")]
    headers += [
        ("tocsin.dlq.source_topic", record.topic.encode()),
        ("tocsin.dlq.source_partition", str(record.partition).encode()),
        ("tocsin.dlq.source_offset", str(record.offset).encode()),
        ("tocsin.dlq.reason", reason.encode()[:2000]),
    ]
    if field:
        headers.append(("tocsin.dlq.field", field.encode()))
    return headers


class CachedKeyPartitioner:
    """aiokafka's default placement (murmur2 of the key, as the Java client), with each
    key's hash remembered: aiokafka computes murmur2 in pure Python on every send, and
    Tocsin's keys (services, incident ids) repeat. Bounded: the memory is dropped when it
    holds ``max_keys`` keys. Keyless records are placed as aiokafka places them."""

    def __init__(self, max_keys: int = 65_536) -> None:
        self.max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
        if key is None:
            return DefaultPartitioner()(key, all_partitions, available)  # type: ignore[no-any-return]
        idx = self._hashes.get(key)
        if idx is None:
            if len(self._hashes) >= self.max_keys:
                self._hashes.clear()
            idx = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[idx % len(all_partitions)]


Outgoing = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]
"""One record to send: (partition, key, value, headers; aiokafka wants a list)."""


async def send_batches(producer: AIOKafkaProducer, topic: str, records: Iterable[Outgoing]
                       ) -> list[asyncio.Future[Any]]:
    """Send records in per-partition batches, in the given order per partition: one
    ``send_batch`` per full batch instead of one ``send`` (~20 µs of Python) per record.
    The futures resolve when the broker acknowledged each batch."""
    builders: dict[int, Any] = {}
    futures: list[asyncio.Future[Any]] = []
    for partition, key, value, headers in records:
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # Full: send it; a fresh batch always takes its first record.
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers)
    for partition, builder in sorted(builders.items()):
        if builder.record_count():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


def new_producer(bootstrap: str, max_request_size: int = 8 * 1024 * 1024,
                 max_batch_size: int = 16_384) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5,
        max_request_size=max_request_size, enable_idempotence=False,
        max_batch_size=max_batch_size,
        partitioner=CachedKeyPartitioner(),
    )


def stage_consumer(bootstrap: str, fetch_max_bytes: int, *, group: str | None = None,
                   session_timeout_ms: int = 10_000, **extra: Any) -> AIOKafkaConsumer:
    """A stage's consumer: offsets committed by hand after its checkpoint, read from the
    start when none is committed, fetches answered within 50 ms. With ``group``, a member
    of that consumer group, heartbeating six times a session (at least every 300 ms)."""
    membership: dict[str, Any] = {} if group is None else {
        "group_id": group, "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(session_timeout_ms // 6, 300)}
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=50, fetch_max_bytes=fetch_max_bytes, **membership, **extra)


async def commit_quietly(consumer: AIOKafkaConsumer | None,
                         offsets: dict[TopicPartition, int], log: Any) -> None:
    """Commit a stage's offsets after its checkpoint: informative only (the checkpoint
    holds the truth), so a failure is a warning, not an error."""
    if consumer is None or not offsets:
        return
    try:
        await consumer.commit(offsets)
    except Exception as exc:  # noqa: BLE001 - informative only: state holds truth
        log.warning("offset commit failed (state checkpoint holds): %s", exc)


async def stop_quietly(*clients: AIOKafkaConsumer | AIOKafkaProducer | None) -> None:
    for client in clients:
        if client is not None:
            # aiokafka 0.14 can surface the cancellation of its own internal
            # committed-offset task from stop(); that is not ours to propagate.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await client.stop()


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """aiokafka logs every refused connection at ERROR: a command line tool that says the
    error once (doctor, export) silences it meanwhile."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
