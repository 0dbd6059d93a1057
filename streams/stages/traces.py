"""Trace assembly, a partitioned stage: spans by trace id in, failing-trace summaries out.

The span intake forwards every span it decodes to the by-trace topic, keyed by trace id,
so all spans of a trace meet on one partition whatever partition of ``otlp_spans`` they
came from. This stage (consumer group ``<app>-traces``; any number of workers share it)
keeps one pure :class:`TraceAssembler` per partition, closes traces by event-time
inactivity, and publishes a compact summary of each *failing* trace on the summaries
topic, one copy per service it touched, keyed by service — the triage stage's key
(ADR 0015).

Event time: a partition's spans come from every source (``otlp_spans`` partition), each in
its own order. The watermark is the least of the sources' marks (the largest span end each
source has sent, carried on its data and on empty mark records), so how sources interleave
on the partition does not decide which spans a trace gets. A source whose mark lags the
newest by more than the grace stops holding the others back (a silent partition).

State: the assembler's open traces, the marks and the next input offset, saved together
in one changelog-backed table record after the summaries are acknowledged (the
detector's checkpoint-with-position pattern, ADR 0004). A restart reads from that offset:
its cost is the open traces plus one checkpoint interval, never the log. A summary sent
again after a crash is the same bytes with the same trace id, which triage counts once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from tocsin.processors.traces import TraceAssembler
from tocsin.processors.traces.assembler import ClosedTrace, span_from_list
from tocsin.processors.traces.summary import summary_records
from tocsin.streams.kafka.headers import mark_of, span_source
from tocsin.streams.kafka.io import new_producer, stop_quietly
from tocsin.streams.stages.checkpoints import CheckpointStore
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

log = logging.getLogger("tocsin.traces")
SOURCE_GRACE_MS = 5 * 60_000  # a source this far behind the newest no longer holds back


def least_live_mark(marks: dict[str, int], grace_ms: int = SOURCE_GRACE_MS) -> int | None:
    """The event time every source still sending has surely reached: the least of the
    marks within ``grace_ms`` of the newest; None before any mark."""
    if not marks:
        return None
    newest = max(marks.values())
    return min(m for m in marks.values() if m >= newest - grace_ms)


@dataclass
class TraceRun:
    assembler: TraceAssembler
    marks: dict[str, int]
    next_offset: int
    checkpointed_offset: int
    pending: list[Any] = field(default_factory=list)


class TraceStage(ConsumerRebalanceListener):  # type: ignore[misc]
    """Owns the by-trace consumer, one assembler per assigned partition, their
    checkpoints, and the summaries they publish."""

    def __init__(self, settings: Settings, bootstrap: str, store: CheckpointStore,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.metrics = metrics
        self.runs: dict[int, TraceRun] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_checkpoint = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        self.producer = new_producer(self.bootstrap, max_batch_size=256 * 1024)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=f"{s.app_id}-traces",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 6, 300),
            max_poll_records=s.max_poll_records, fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.fetch_max_bytes, fetch_max_wait_ms=50)
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([s.topics.spans_by_trace], listener=self)
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100)
                self._check_resets(batch)
                for tp, records in batch.items():
                    run = self.runs.get(tp.partition)
                    if run is not None:
                        await self._process(run, records)
                if time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_ms / 1000:
                    await self.checkpoint()
            await self.checkpoint()
        finally:
            await stop_quietly(self.consumer, self.producer)

    # ------------------------------------------------------------------ rebalance

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        parts = sorted(tp.partition for tp in revoked if tp.partition in self.runs)
        if parts:
            await self.checkpoint(parts)
        for p in parts:
            del self.runs[p]
        self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        for tp in sorted(assigned, key=lambda t: t.partition):
            saved = await self.store.load(tp.partition)
            if saved is None:
                run = TraceRun(TraceAssembler(external_watermark=True), {}, 0, 0)
            else:
                state, offset = saved
                assembler = TraceAssembler.restore(state["assembler"])
                assembler.external_watermark = True
                run = TraceRun(assembler, dict(state["marks"]), offset, offset)
            self.runs[tp.partition] = run
            self.consumer.seek(tp, run.next_offset)
            log.info("traces partition %s resumes at offset %s (%d open traces)",
                     tp.partition, run.next_offset, len(run.assembler))
        self.ready.set()

    def _check_resets(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                      ) -> None:
        """A checkpoint beyond its partition's end: the log restarted; read the new one
        from its start as a new epoch, keeping the open traces (ADR 0014)."""
        assert self.consumer is not None
        topic = self.settings.topics.spans_by_trace
        for partition, run in self.runs.items():
            tp = TopicPartition(topic, partition)
            records = batch.get(tp)
            high = self.consumer.highwater(tp)
            if records and records[0].offset < run.next_offset:
                start = records[0].offset
            elif high is not None and high < run.next_offset:
                start = 0
                self.consumer.seek(tp, 0)
            else:
                continue
            self.metrics.log_resets[f"{topic}:{partition}"] += 1
            log.error("RESET LOG: %s partition %s ends at %s, below the checkpointed offset "
                      "%s: reading the new log from offset %s as a new epoch", topic,
                      partition, high, run.next_offset, start)
            run.next_offset = run.checkpointed_offset = start

    # ------------------------------------------------------------------ hot path

    async def _process(self, run: TraceRun, records: list[ConsumerRecord[bytes, bytes]]
                       ) -> None:
        closed: list[ClosedTrace] = []
        assembler = run.assembler
        for rec in records:
            if rec.offset < run.next_offset:
                continue
            run.next_offset = rec.offset + 1
            mark = mark_of(rec.headers) if not rec.value else None
            if mark is not None:
                source, at_ms = mark
                if at_ms > run.marks.get(source, -1):
                    run.marks[source] = at_ms
                continue
            try:
                spans = [span_from_list(s) for s in orjson.loads(rec.value or b"")["spans"]]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                # Only the span intake writes this topic; anything else is not ours.
                self.metrics.stages["by_trace_unreadable"] += 1
                log.warning("by-trace record %s:%s unreadable: %s", rec.partition,
                            rec.offset, exc)
                continue
            origin = span_source(rec.headers)
            for span in spans:
                closed += assembler.add(span)
            if origin is not None and spans:
                latest = max(span.end_ms for span in spans)
                if latest > run.marks.get(origin[0], -1):
                    run.marks[origin[0]] = latest
        watermark = least_live_mark(run.marks)
        if watermark is not None:
            closed += assembler.flush(watermark)
        await self._publish(run, closed)

    async def _publish(self, run: TraceRun, closed: list[ClosedTrace]) -> None:
        assert self.producer is not None
        topic = self.settings.topics.summaries
        self.metrics.stages["traces_closed"] += len(closed)
        for trace in closed:
            for key, value in summary_records(trace):
                run.pending.append(asyncio.ensure_future(
                    self.producer.send(topic, value, key=key.encode())))
                self.metrics.stages["summaries_published"] += 1

    # ------------------------------------------------------------------ checkpoint

    async def checkpoint(self, parts: list[int] | None = None) -> None:
        """Summaries acknowledged, then assembler + marks + next offset in one record."""
        self._last_checkpoint = time.monotonic()
        for p in sorted(self.runs) if parts is None else parts:
            run = self.runs[p]
            if run.next_offset == run.checkpointed_offset and not run.pending:
                continue
            pending, run.pending = run.pending, []
            if pending:
                sent = await asyncio.gather(*pending)
                await asyncio.gather(*sent)
            await self.store.save(p, {"assembler": run.assembler.snapshot(),
                                      "marks": run.marks}, run.next_offset)
            run.checkpointed_offset = run.next_offset
            self.metrics.stages["traces_checkpoints"] += 1
        if self.consumer is not None:
            offsets = {TopicPartition(self.settings.topics.spans_by_trace, p):
                       run.checkpointed_offset
                       for p, run in self.runs.items() if run.checkpointed_offset > 0}
            if offsets:
                try:
                    await self.consumer.commit(offsets)
                except Exception as exc:  # noqa: BLE001 - informative only: state holds truth
                    log.warning("offset commit failed (state checkpoint holds): %s", exc)
