"""OpenTelemetry spans in: the Collector's Kafka exporter topic and OTLP/HTTP (ADR 0011).

Spans of one service arrive on any partition of ``otlp_spans`` (the exporter writes them
unkeyed or keyed by trace id). This consumer decodes each record with the official
``opentelemetry-proto`` classes (or walks OTLP/JSON), maps entry spans to wide events and
republishes them on the events topic keyed by service — the keyed internal topic that
puts every family's counts in one place, so the same detection applies to SDK events and
spans alike. Garbage records go to the dead-letter topic with the decoder's reason.

Delivery: the translated events are acknowledged before the span offsets are committed
(one batch's acknowledgements are awaited while the next batch is decoded);
a crash between the two translates that batch again, and the detector drops what it
already counted by the span position each event carries (ADR 0011).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tocsin.processors.otlp import OtlpError, decode_batch, wide_events
from tocsin.streams.kafka_io import dead_letter_headers, new_producer, stop_quietly
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
        await consumer.commit(self.offsets)


class SpanIntake:
    def __init__(self, settings: Settings, bootstrap: str, metrics: Metrics) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        self.producer = new_producer(self.bootstrap)
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
                futures: list[Any] = []
                for records in batch.values():
                    for rec in records:
                        futures += await self._translate(rec)
                # The previous batch's sends had this batch's decoding to complete in:
                # settle them now, so decoding and acknowledgements overlap.
                if pending is not None:
                    await pending.settle(self.consumer)
                pending = Acks(futures, {tp: records[-1].offset + 1
                                         for tp, records in batch.items() if records}) \
                    if batch else None
            if pending is not None:
                await pending.settle(self.consumer)
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def _translate(self, rec: ConsumerRecord[bytes, bytes]) -> list[Any]:
        assert self.producer is not None
        s = self.settings
        encoding = None if s.spans_encoding == "auto" else s.spans_encoding
        try:
            decoded = decode_batch(rec.value, encoding)
        except OtlpError as exc:
            self.metrics.dead_letters += 1
            return [await self.producer.send(s.topics.dlq, rec.value, key=rec.key,
                                              headers=dead_letter_headers(rec, str(exc)))]
        self.metrics.spans_in += len(decoded.spans)
        self.metrics.spans_rejected += len(decoded.rejected)
        futures = []
        source = f"{rec.topic}:{rec.partition}"
        for index, event in enumerate(wide_events(decoded.spans)):
            futures.append(await self.producer.send(
                s.topics.events, orjson.dumps(event), key=event["service"].encode(),
                headers=[(SPAN_SOURCE, f"{source}:{rec.offset}:{index}".encode())]))
        return futures


def gunzip_if_needed(body: bytes, content_encoding: str | None) -> bytes:
    """OTLP/HTTP bodies may be gzip-compressed (Content-Encoding: gzip). aiohttp's server
    already inflates such bodies itself, so only bytes that still look gzipped are
    inflated here (a serialized protobuf never starts with 1f 8b)."""
    if (content_encoding or "").lower() == "gzip" and body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    return body
