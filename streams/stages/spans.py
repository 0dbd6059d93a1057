"""OpenTelemetry spans in: the Collector's Kafka exporter topic and OTLP/HTTP (ADR 0011).

Spans of one service arrive on any partition of ``otlp_spans`` (the exporter writes them
unkeyed or keyed by trace id). This consumer decodes each record with the official
``opentelemetry-proto`` classes (or walks OTLP/JSON), maps entry spans to wide events and
republishes them on the events topic keyed by service — the keyed internal topic that
puts every family's counts in one place, so the same detection applies to SDK events and
spans alike. Each event goes out as the compact binary span event record
(processors/otlp/record.py, ADR 0015) with its span position header, or as its JSON when the
record cannot carry it exactly (processors/otlp/republish.py). Garbage records go to the
dead-letter topic with the decoder's reason.

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
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, IllegalStateError

from tocsin.processors.otlp import Decoded, OtlpError, decode_batch
from tocsin.processors.otlp.mapping import detected_event, entries, to_wide_event
from tocsin.processors.otlp.merge import MAX_AHEAD_MS as MAX_AHEAD_MS  # re-exported
from tocsin.processors.otlp.merge import Entry, PartitionMerge, holds_back, merge_time
from tocsin.processors.otlp.record import VERSIONS as RECORD_VERSIONS
from tocsin.processors.otlp.republish import by_trace_batches, event_records
from tocsin.processors.otlp.spans import Peer, Span
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.headers import MARK, SOURCES, SPAN_SOURCE
from tocsin.streams.kafka.io import (
    CachedKeyPartitioner,
    Outgoing,
    new_producer,
    send_batches,
    stage_consumer,
    stop_quietly,
)
from tocsin.streams.stages.handoff import HandOff
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

log = logging.getLogger("tocsin.spans")
END_MS = attrgetter("end_ms")


@dataclass(frozen=True, slots=True)
class Acks:
    """One batch's sends and the offsets to commit once the broker acknowledged them all."""

    futures: list[Any]
    offsets: dict[TopicPartition, int]

    async def settle(self, consumer: AIOKafkaConsumer) -> None:
        for fut in self.futures:
            await fut
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self.offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions meanwhile: whoever reads them next starts
            # from the last commit, and the detector drops what it already counted.
            log.warning("span offsets not committed (%s): they will be read again", exc)


Read = tuple[ConsumerRecord[bytes, bytes], Decoded | OtlpError]

# Fetched per partition at a time: the merge releases only while every partition has a
# head, so slices keep all partitions arriving together. With one fetch able to bring 8 MB
# of one partition, the others' heads came a fetch later and the merge held everything
# back meanwhile (the stages after it idle; bench (h) end to end 9-10.5 s -> 7-8.5 s).
# A record larger than a slice still comes whole (the broker always returns one record).
PARTITION_FETCH_BYTES = 1024 * 1024
PAUSE_AT = 5_000  # records buffered on one partition while another holds the merge back
RESUME_AT = 1_000


class SpanIntake:
    def __init__(self, settings: Settings, bootstrap: str, metrics: Metrics,
                 handoff: HandOff | None = None, events_handoff: HandOff | None = None
                 ) -> None:
        self.settings = settings
        self.handoff = handoff  # by-trace records' spans, for this process's trace stage
        # span event records' and packs' events, for this process's detection
        self.events_handoff = events_handoff
        self.bootstrap = bootstrap
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self.running = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters: DeadLetterSender | None = None
        self.merge: PartitionMerge[Read] = PartitionMerge()
        self.partitioner = CachedKeyPartitioner()
        self._next: dict[int, int] = {}  # partition -> next offset to fetch
        self._heard: dict[int, float] = {}  # partition -> monotonic time of its last record
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._fresh: set[TopicPartition] = set()  # assigned, read position not known yet
        self._pending: Acks | None = None  # the last release, until it is settled
        self._marks: dict[str, int] = {}  # source partition -> largest span end released
        self._event_marks: dict[str, int] = {}  # source -> merge time reached (running max)
        # partition -> when it was last announced idle (again every IDLE_AGAIN_S while it
        # stays idle: a detector restored from an older checkpoint hears it too)
        self._idle_said: dict[int, float] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        # Batches of 512 KB: with aiokafka's 16 KB default a send waits for the broker
        # every ~50 events when the released records put many on one partition.
        self.producer = new_producer(self.bootstrap, max_batch_size=512 * 1024)
        self.consumer = stage_consumer(
            self.bootstrap, s.fetch_max_bytes, group=f"{s.app_id}-spans",
            session_timeout_ms=s.session_timeout_ms,
            max_partition_fetch_bytes=min(s.fetch_max_bytes, PARTITION_FETCH_BYTES))
        self.consumer.subscribe([s.topics.spans], listener=_Rebalance(self))
        await self.producer.start()
        self.dead_letters = DeadLetterSender(self.producer, s.topics.dlq)
        await self.consumer.start()
        self.running.set()
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
                await self._track_assignment(batch)
                self._check_resets(batch)
                now = time.monotonic()
                for tp, records in batch.items():
                    if tp not in self._assigned:
                        continue  # revoked while this batch was fetched
                    for rec in records:
                        read = self._decode(rec)
                        self.merge.add(tp.partition, rec.offset, _time_of(rec, read[1]),
                                       read)
                    self._next[tp.partition] = records[-1].offset + 1
                    self._heard[tp.partition] = now
                    self._idle_said.pop(tp.partition, None)
                released = self.merge.release(self._holds_back)
                self._backpressure()
                futures = await self._publish(released)
                futures += await self._say_idle()
                offsets = {TopicPartition(s.topics.spans, e.partition): e.offset + 1
                           for e in released}
                # The previous release's sends had this batch's decoding to complete in:
                # settle them now, so decoding and acknowledgements overlap.
                await self.settle()
                self._pending = Acks(futures, offsets) if released or futures else None
            await self.settle()
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def settle(self) -> None:
        """Wait for the last release's acknowledgements and commit its offsets (taken out
        first: the rebalance listener may settle it too, never both)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            assert self.consumer is not None
            await pending.settle(self.consumer)

    def revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Forget what was buffered and known of partitions taken away: a partition given
        back starts again from its committed offset, and is read afresh."""
        gone = {tp.partition for tp in revoked}
        if gone:
            log.info("span partitions revoked: %s (buffered records dropped: %d)",
                     sorted(gone), sum(self.merge.buffered(p) for p in gone))
        self.merge.assign(p for p in self.merge.buffers if p not in gone)
        for partition in gone:
            self._idle_said.pop(partition, None)
            self._next.pop(partition, None)
            self._heard.pop(partition, None)
        self._assigned = frozenset(tp for tp in self._assigned if tp.partition not in gone)

    def assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._fresh.update(assigned)

    def _check_resets(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                      ) -> None:
        """A partition whose log now ends below our read position restarted (topic
        recreated, broker restarted empty): read it from its start as a new epoch, logged
        and counted (ADR 0014). Records already buffered from the old log go out first."""
        assert self.consumer is not None
        for tp in self._assigned:
            pos = self._next.get(tp.partition, 0)
            records = batch.get(tp)
            high = self.consumer.highwater(tp)
            if records and records[0].offset < pos:
                start = records[0].offset  # the client already went back to the start
            elif high is not None and high < pos:
                start = 0
                self.consumer.seek(tp, 0)
            else:
                continue
            self.metrics.log_resets[f"{tp.topic}:{tp.partition}"] += 1
            log.error("RESET LOG: %s partition %s ends at %s, below the read position %s: "
                      "reading the new log from offset %s as a new epoch", tp.topic,
                      tp.partition, high, pos, start)
            self._next[tp.partition] = start

    async def _track_assignment(
            self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Learn the read position of partitions assigned since the last batch: the first
        offset ``batch`` brought for one (the consumer's position has already moved past
        those records: taken as the read position it made every rebalance look like a log
        reset), else the consumer's position."""
        assert self.consumer is not None
        if not self._fresh:
            return
        fresh, self._fresh = self._fresh, set()
        current = self.consumer.assignment()
        now = time.monotonic()
        for tp in fresh & current:
            records = batch.get(tp)
            self._next[tp.partition] = records[0].offset if records \
                else await self.consumer.position(tp)
            self._heard[tp.partition] = now
        self._assigned = frozenset(current)
        self.merge.assign(tp.partition for tp in current)

    def _holds_back(self, partition: int) -> bool:
        """Whether an empty partition may still hold a record earlier than the heads
        (:func:`~tocsin.processors.otlp.merge.holds_back`, read with the clock now); a
        partition no longer assigned never does."""
        assert self.consumer is not None
        tp = TopicPartition(self.settings.topics.spans, partition)
        if tp not in self._assigned:
            return False
        return holds_back(time.monotonic(), self._heard.get(partition, 0.0),
                          self._next.get(partition, 0), self.consumer.highwater(tp),
                          self.settings.spans_idle_ms)

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
                # Paused is not quiet: the stall clock starts again from here.
                self._heard[tp.partition] = time.monotonic()

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
        events: list[Outgoing] = []
        moved: dict[str, int] = {}
        partitions = sorted(await self.producer.partitions_for(s.topics.events))
        handoff = self.events_handoff

        def place(key: bytes) -> int:
            return self.partitioner(key, partitions, partitions)

        for entry in released:
            rec, read = entry.item
            if isinstance(read, OtlpError):
                self.metrics.dead_letters += 1
                assert self.dead_letters is not None
                futures.append(await self.dead_letters.send(
                    of_record(rec, str(read), None, s.dlq_max_value_bytes)))
                continue
            # Counted as they leave the merge: spans_in is what was sent on as events.
            self.metrics.spans_in += len(read.spans)
            self.metrics.spans_rejected += len(read.rejected)
            source = f"{rec.topic}:{rec.partition}"
            offset = rec.offset
            # The record's place in its source's order: the running maximum of the
            # source's merge times, so each source is in order for detection's merge.
            at = max(entry.time_ms, self._event_marks.get(source, entry.time_ms))
            if at != self._event_marks.get(source):
                self._event_marks[source] = moved[source] = at
            # What detection reads of each entry span's wide event; the whole event only
            # for one a record cannot carry (it goes as JSON).
            pairs = entries(read.spans)
            detected = [detected_event(span, peer) for span, peer in pairs]
            for partition, key, value, indexes in event_records(
                    detected, source, offset, place, partial(_whole_event, pairs)):
                events.append((partition, key, value, [
                    (SPAN_SOURCE, f"{source}:{offset}:{indexes[0]}@{at}".encode())]))
                if handoff is not None and value[0] in RECORD_VERSIONS \
                        and handoff.holds(partition):
                    handoff.put(partition, value, [[detected[i], source, offset, i]
                                                   for i in indexes])
        if events:
            futures += await send_batches(self.producer, s.topics.events, events)
        # After a release's events, a mark per source that moved, to every events
        # partition: the merge time its records have reached, so detection merges the
        # span events of several intakes in one order (ADR 0015). Every later event of
        # that source carries a merge time at or after it.
        futures += await self._send_progress(s.topics.events, [
            (src, str(at)) for src, at in sorted(moved.items())])
        futures += await self._forward_by_trace(released)
        return futures

    async def _say_idle(self) -> list[Any]:
        """Caught-up, quiet partitions with nothing held, announced idle (again every
        ``IDLE_AGAIN_S`` while they stay so): detection and trace assembly stop waiting
        for them until they give records again."""
        topic = self.settings.topics.spans
        now = time.monotonic()
        idle = sorted(tp.partition for tp in self._assigned
                      if now - self._idle_said.get(tp.partition, -IDLE_AGAIN_S) >= IDLE_AGAIN_S
                      and not self.merge.buffered(tp.partition)
                      and not self._holds_back(tp.partition))
        self._idle_said.update((p, now) for p in idle)
        idle_marks = [(f"{topic}:{p}", "idle") for p in idle]
        return [*await self._send_progress(self.settings.topics.events, idle_marks),
                *await self._send_progress(self.settings.topics.spans_by_trace, idle_marks)]

    async def _send_progress(self, topic: str, marks: list[tuple[str, str]]) -> list[Any]:
        """Progress marks (`<source>=<ms>` or `=idle`) to every partition of ``topic``,
        with the span topic's partition count (every source there is)."""
        if not marks:
            return []
        assert self.producer is not None
        s = self.settings
        partitions = sorted(await self.producer.partitions_for(topic))
        count = len(await self.producer.partitions_for(s.topics.spans))
        sources = f"{s.topics.spans}:{count}".encode()
        records = [(p, None, b"", [(MARK, f"{source}={at}".encode()), (SOURCES, sources)])
                   for source, at in marks for p in partitions]
        self.metrics.stages["marks_sent"] += len(records)
        return await send_batches(self.producer, topic, records)

    async def _forward_by_trace(self, released: list[Entry[Read]]) -> list[Any]:
        """Every released span again, regrouped by trace id for trace assembly (ADR 0015):
        per source and by-trace partition, the spans of the release's consecutive span
        records in one record (:func:`~tocsin.processors.otlp.republish.by_trace_batches`),
        then a mark per source that moved to every partition of the by-trace topic — the
        largest span end that source has sent, so the assembly knows how far each source
        has surely come."""
        assert self.producer is not None
        topic = self.settings.topics.spans_by_trace
        count = len(await self.producer.partitions_for(topic))
        handoff = self.handoff
        out: list[Outgoing] = []
        moved: dict[str, int] = {}
        records: list[tuple[str, int, tuple[Span, ...]]] = []
        for entry in released:
            rec, read = entry.item
            if isinstance(read, OtlpError) or not read.spans:
                continue
            source = f"{rec.topic}:{rec.partition}"
            records.append((source, rec.offset, read.spans))
            latest = max(map(END_MS, read.spans))
            if latest > self._marks.get(source, -1):
                self._marks[source] = moved[source] = latest
        for partition, source, first, value, spans in by_trace_batches(records, count):
            out.append((partition, None, value,
                        [(SPAN_SOURCE, f"{source}:{first}:0".encode())]))
            if handoff is not None and handoff.holds(partition):
                handoff.put(partition, value, spans)
        if not out and not moved:
            return []
        futures = await send_batches(self.producer, topic, out) if out else []
        self.metrics.stages["spans_forwarded"] += len(out)
        futures += await self._send_progress(topic, [(src, str(at))
                                                     for src, at in sorted(moved.items())])
        return futures


IDLE_AGAIN_S = 5.0


def _whole_event(pairs: list[tuple[Span, Peer | None]], index: int) -> dict[str, Any]:
    return to_wide_event(*pairs[index])


def _time_of(rec: ConsumerRecord[bytes, bytes], read: Decoded | OtlpError) -> int | None:
    """A record's merge time (:func:`~tocsin.processors.otlp.merge.merge_time`), capped
    by the record's own timestamp."""
    return merge_time(read, rec.timestamp)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Settles the last release before partitions go (its offsets can still be
    committed then) and has the intake forget them; new partitions are read afresh."""

    def __init__(self, intake: SpanIntake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await self.intake.settle()
        except Exception as exc:  # noqa: BLE001 - the sends' failure surfaces in run()
            log.warning("settling span acknowledgements on revoke failed: %s", exc)
        self.intake.revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.intake.assigned(assigned)

