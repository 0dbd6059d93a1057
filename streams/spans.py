"""OpenTelemetry spans in: the Collector's Kafka exporter topic and OTLP/HTTP (ADR 0011).

Spans of one service arrive on any partition of ``otlp_spans`` (the exporter writes them
unkeyed or keyed by trace id). This consumer decodes each record with the official
``opentelemetry-proto`` classes (or walks OTLP/JSON), maps entry spans to wide events and
republishes them on the events topic keyed by service — the keyed internal topic that
puts every family's counts in one place, so the same detection applies to SDK events and
spans alike. Garbage records go to the dead-letter topic with the decoder's reason.

Order: the spans of one service come from every partition, and the detector decides on
each service's events in the order it reads them, so records are released through a
deterministic merge of the partitions (processors/otlp/merge.py): the same log gives the
same events in the same order, whatever the fetches.

Delivery: the translated events are acknowledged before the span offsets are committed
(one release's acknowledgements are awaited while the next batch is decoded);
a crash between the two translates that batch again, and the detector drops what it
already counted by the span position each event carries (ADR 0011).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tocsin.processors.otlp import Decoded, OtlpError, decode_batch, wide_events
from tocsin.processors.otlp.merge import Entry, PartitionMerge
from tocsin.streams.kafka_io import (
    CachedKeyPartitioner,
    dead_letter_headers,
    new_producer,
    send_keyed,
    stop_quietly,
)
from tocsin.streams.metrics import Metrics
from tocsin.streams.settings import Settings

log = logging.getLogger("tocsin.spans")
SPAN_SOURCE = "tocsin.span_source"  # topic:partition:offset:index of the span record


def span_source(headers: object) -> tuple[str, tuple[int, int]] | None:
    """(source partition, (offset, index)) from a translated event's headers, if any."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == SPAN_SOURCE:
            topic_partition, _, rest = bytes(value).decode().rpartition(":")
            source, _, offset = topic_partition.rpartition(":")
            return source, (int(offset), int(rest))
    return None


@dataclass(frozen=True, slots=True)
class Acks:
    """One batch's sends and the offsets to commit once the broker acknowledged them all."""

    futures: list[Any]
    offsets: dict[TopicPartition, int]

    async def settle(self, consumer: AIOKafkaConsumer) -> None:
        for fut in self.futures:
            await fut
        if self.offsets:
            await consumer.commit(self.offsets)


Read = tuple[ConsumerRecord[bytes, bytes], Decoded | OtlpError]

PAUSE_AT = 5_000  # records buffered on one partition while another holds the merge back
RESUME_AT = 1_000
STALL_S = 10.0  # a partition behind its high watermark that sends nothing for this long


class SpanIntake:
    def __init__(self, settings: Settings, bootstrap: str, metrics: Metrics) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.merge: PartitionMerge[Read] = PartitionMerge()
        self.partitioner = CachedKeyPartitioner()
        self._next: dict[int, int] = {}  # partition -> next offset to fetch
        self._heard: dict[int, float] = {}  # partition -> monotonic time of its last record
        self._assigned: frozenset[TopicPartition] = frozenset()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        # Batches of 512 KB: with aiokafka's 16 KB default a send waits for the broker
        # every ~50 events when the released records put many on one partition.
        self.producer = new_producer(self.bootstrap, max_batch_size=512 * 1024)
        self.consumer = AIOKafkaConsumer(
            s.topics.spans, bootstrap_servers=self.bootstrap, group_id=f"{s.app_id}-spans",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 6, 300),
            fetch_max_bytes=s.fetch_max_bytes, max_partition_fetch_bytes=s.fetch_max_bytes,
            fetch_max_wait_ms=50)
        await self.producer.start()
        await self.consumer.start()
        pending: Acks | None = None
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
                await self._track_assignment()
                now = time.monotonic()
                for tp, records in batch.items():
                    for rec in records:
                        read = self._decode(rec)
                        self.merge.add(tp.partition, rec.offset, _time_of(read[1]), read)
                    self._next[tp.partition] = records[-1].offset + 1
                    self._heard[tp.partition] = now
                released = self.merge.release(self._holds_back)
                self._backpressure()
                futures = await self._publish(released)
                offsets = {TopicPartition(s.topics.spans, e.partition): e.offset + 1
                           for e in released}
                # The previous release's sends had this batch's decoding to complete in:
                # settle them now, so decoding and acknowledgements overlap.
                if pending is not None:
                    await pending.settle(self.consumer)
                pending = Acks(futures, offsets) if released else None
            if pending is not None:
                await pending.settle(self.consumer)
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def _track_assignment(self) -> None:
        assert self.consumer is not None
        assigned = frozenset(self.consumer.assignment())
        if assigned == self._assigned:
            return
        self._assigned = assigned
        self.merge.assign(tp.partition for tp in assigned)
        now = time.monotonic()
        for tp in assigned:
            if tp.partition not in self._next:
                self._next[tp.partition] = await self.consumer.position(tp)
                self._heard[tp.partition] = now

    def _holds_back(self, partition: int) -> bool:
        """Whether an empty partition may still hold a record earlier than the heads: it
        is behind its high watermark (unless it stalled), or it is caught up but has been
        quiet for less than ``spans_idle_ms`` (ADR 0011)."""
        assert self.consumer is not None
        tp = TopicPartition(self.settings.topics.spans, partition)
        if tp not in self._assigned:
            return False
        quiet_s = time.monotonic() - self._heard.get(partition, 0.0)
        highwater = self.consumer.highwater(tp)
        if highwater is None or self._next.get(partition, 0) < highwater:
            return quiet_s < STALL_S
        return quiet_s * 1000 < self.settings.spans_idle_ms

    def _backpressure(self) -> None:
        """Pause a partition that ran far ahead while another holds the merge back."""
        assert self.consumer is not None
        paused = self.consumer.paused()
        for tp in self._assigned:
            size = self.merge.buffered(tp.partition)
            if size >= PAUSE_AT and tp not in paused:
                self.consumer.pause(tp)
            elif size <= RESUME_AT and tp in paused:
                self.consumer.resume(tp)

    def _decode(self, rec: ConsumerRecord[bytes, bytes]) -> Read:
        s = self.settings
        encoding = None if s.spans_encoding == "auto" else s.spans_encoding
        try:
            decoded = decode_batch(rec.value, encoding)
        except OtlpError as exc:
            return rec, exc
        self.metrics.spans_read += len(decoded.spans)
        return rec, decoded

    async def _publish(self, released: list[Entry[Read]]) -> list[Any]:
        """The released records' wide events (keyed by service, each with its span
        position) or dead letters, in release order per partition."""
        assert self.producer is not None
        s = self.settings
        futures = []
        events: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        for entry in released:
            rec, read = entry.item
            if isinstance(read, OtlpError):
                self.metrics.dead_letters += 1
                futures.append(await self.producer.send(
                    s.topics.dlq, rec.value, key=rec.key,
                    headers=dead_letter_headers(rec, str(read))))
                continue
            # Counted as they leave the merge: spans_in is what was sent on as events.
            self.metrics.spans_in += len(read.spans)
            self.metrics.spans_rejected += len(read.rejected)
            source = f"{rec.topic}:{rec.partition}:{rec.offset}"
            events += [(event["service"].encode(), orjson.dumps(event),
                        [(SPAN_SOURCE, f"{source}:{index}".encode())])
                       for index, event in enumerate(wide_events(read.spans))]
        if events:
            futures += await send_keyed(self.producer, s.topics.events, events,
                                        self.partitioner)
        return futures


def _time_of(read: Decoded | OtlpError) -> int | None:
    """A record's merge time: the latest end among its spans (exporters send spans as
    they end); None for a record without spans."""
    if isinstance(read, OtlpError) or not read.spans:
        return None
    return max(span.end_ms for span in read.spans)


def gunzip_if_needed(body: bytes, content_encoding: str | None) -> bytes:
    """OTLP/HTTP bodies may be gzip-compressed (Content-Encoding: gzip). aiohttp's server
    already inflates such bodies itself, so only bytes that still look gzipped are
    inflated here (a serialized protobuf never starts with 1f 8b)."""
    if (content_encoding or "").lower() == "gzip" and body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    return body
