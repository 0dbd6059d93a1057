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
on the partition does not decide which spans a trace gets. Every source of the span
topic (named on the marks) holds the watermark back until it has spoken; one the span
intake declares idle (caught up and quiet) does not, until it sends again; a slow one
does, however far the others run ahead (``processors.source_merge.progress_watermark``).

State: the assembler's open traces, the marks (and which sources are idle or expected)
and the next input offset, saved together
in one changelog-backed table record after the summaries are acknowledged (the
detector's checkpoint-with-position pattern, ADR 0004). A restart reads from that offset:
its cost is the open traces plus one checkpoint interval, never the log. A summary sent
again after a crash is the same bytes with the same trace id, which triage counts once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from tocsin.processors.source_merge import progress_watermark
from tocsin.processors.traces import TraceAssembler
from tocsin.processors.traces.assembler import ClosedTrace, span_from_wire
from tocsin.processors.traces.summary import summary_records
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.headers import progress_of, span_source
from tocsin.streams.kafka.io import new_producer
from tocsin.streams.stages.partitioned import PartitionedStage, StageRun

log = logging.getLogger("tocsin.traces")
END_MS = attrgetter("end_ms")


@dataclass
class TraceRun(StageRun):
    assembler: TraceAssembler = field(kw_only=True)
    marks: dict[str, int] = field(kw_only=True)
    idle: set[str] = field(kw_only=True, default_factory=set)
    expected: set[str] = field(kw_only=True, default_factory=set)


class TraceStage(PartitionedStage[TraceRun]):
    """Owns the by-trace consumer, one assembler per assigned partition, their
    checkpoints, and the summaries they publish."""

    group = "traces"
    log = log
    dead_letters: DeadLetterSender | None = None
    handoff_metric = "by_trace"  # by-trace records' spans this process's intake decoded

    @property
    def topic(self) -> str:
        return self.settings.topics.spans_by_trace

    def new_producer(self) -> AIOKafkaProducer:
        producer = new_producer(self.bootstrap, max_batch_size=256 * 1024)
        self.dead_letters = DeadLetterSender(producer, self.settings.topics.dlq)
        return producer

    def _dead_letter(self, run: TraceRun, rec: ConsumerRecord[bytes, bytes], reason: str
                     ) -> None:
        """Only the span intake writes the by-trace topic: anything else is dead-lettered
        (a replayed range sends its letters again; the projection keys them by source
        position, ADR 0004)."""
        assert self.dead_letters is not None
        self.metrics.stages["by_trace_unreadable"] += 1
        self.metrics.dead_letters += 1
        log.warning("by-trace record %s:%s unreadable: %s", rec.partition, rec.offset,
                    reason)
        run.pending.append(asyncio.ensure_future(self.dead_letters.send(of_record(
            rec, reason, None, self.settings.dlq_max_value_bytes))))

    def restore_run(self, saved: tuple[dict[str, Any], int] | None) -> TraceRun:
        if saved is None:
            return TraceRun(0, 0, assembler=TraceAssembler(external_watermark=True), marks={})
        state, offset = saved
        assembler = TraceAssembler.restore(state["assembler"])
        assembler.external_watermark = True
        return TraceRun(offset, offset, assembler=assembler, marks=dict(state["marks"]),
                        idle=set(state.get("idle", ())),
                        expected=set(state.get("expected", ())))

    def state_of(self, run: TraceRun) -> dict[str, Any]:
        return {"assembler": run.assembler.snapshot(), "marks": run.marks,
                "idle": sorted(run.idle), "expected": sorted(run.expected)}

    def checkpointed(self, partition: int, run: TraceRun) -> None:
        self.metrics.stages["traces_checkpoints"] += 1
        self.metrics.assembly[partition] = run.assembler.counters.as_dict()

    def released(self, partition: int) -> None:
        self.metrics.assembly.pop(partition, None)

    # ------------------------------------------------------------------ hot path

    def process(self, run: TraceRun, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        closed: list[ClosedTrace] = []
        assembler = run.assembler
        handoff = self.handoff
        for rec in records:
            if rec.offset < run.next_offset:
                continue
            run.next_offset = rec.offset + 1
            progress = progress_of(rec.headers) if not rec.value else None
            if progress is not None:
                source, at_ms, sources = progress
                run.expected |= sources
                if at_ms is None:
                    run.idle.add(source)
                else:
                    run.idle.discard(source)
                    if at_ms > run.marks.get(source, -1):
                        run.marks[source] = at_ms
                continue
            if len(rec.value or b"") > self.settings.max_record_bytes:
                self._dead_letter(run, rec, f"oversize: {len(rec.value or b'')} bytes > "
                                            f"{self.settings.max_record_bytes}")
                continue
            spans = handoff.take(rec.partition, rec.value) \
                if handoff is not None and rec.value else None
            if spans is None:
                try:
                    spans = [span_from_wire(s)
                             for s in orjson.loads(rec.value or b"")["spans"]]
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                        IndexError) as exc:
                    self._dead_letter(run, rec, f"not a by-trace span record: {exc}")
                    continue
            origin = span_source(rec.headers)
            for span in spans:
                closed += assembler.add(span)
            if origin is not None and spans:
                run.idle.discard(origin[0])
                latest = max(map(END_MS, spans))
                if latest > run.marks.get(origin[0], -1):
                    run.marks[origin[0]] = latest
        watermark = progress_watermark(run.marks, run.idle, run.expected)
        if watermark is not None:
            closed += assembler.flush(watermark)
        self._publish(run, closed)

    def _publish(self, run: TraceRun, closed: list[ClosedTrace]) -> None:
        assert self.producer is not None
        topic = self.settings.topics.summaries
        self.metrics.stages["traces_closed"] += len(closed)
        for trace in closed:
            for key, value in summary_records(trace):
                run.pending.append(asyncio.ensure_future(
                    self.producer.send(topic, value, key=key.encode())))
                self.metrics.stages["summaries_published"] += 1
