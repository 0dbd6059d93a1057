"""Detection's rules for one partition's records, apart from Kafka: what the detection
stage (streams/stages/detect.py) runs on each fetched batch, and what ``tocsin replay``
runs on a recorded log, so a replay decides with the very code the worker decides with.

A record of the events topic is one of:

- a wide event (JSON, Avro, or a mapped JSON shape, ADR 0013): decoded and fed;
- a translated span event (header ``tocsin.span_source``, ADR 0015): held in the
  partition's :class:`SourceMerge` until every span source has passed it, then fed;
- a span source's progress mark (no value, header ``tocsin.mark``): moves the merge;
- an operator action (header ``tocsin.action``, ADR 0016): applied where it lies in the
  log;
- anything else: a dead letter with the reason.

What the rules produce goes to three hooks a subclass implements: :meth:`_emit` (a
lifecycle change), :meth:`_register_deploy` (a version change seen on the events) and
:meth:`_dead_letter`. No I/O here; the hooks do it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tocsin.processors.actions import CommandError, Refusal, decode_command
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import VersionChanged
from tocsin.processors.feed import deploy_delivery, feed
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.mapping import load_mapping, mapped_decoder
from tocsin.processors.otlp.pack import PACK_VERSION, decode_span_pack
from tocsin.processors.otlp.record import VERSIONS as RECORD_VERSIONS
from tocsin.processors.otlp.record import RecordError, decode_span_event
from tocsin.processors.recent_requests import RecentRequests
from tocsin.processors.signals.model import Signal
from tocsin.processors.source_merge import SourceMerge
from tocsin.schemas.codec import SchemaError, WideEventDecoder
from tocsin.schemas.signal_wire import decode_signal, encode_signal
from tocsin.streams.kafka.headers import (
    ACTION,
    DELIVERY_HEADER,
    RUNTIME,
    header,
    progress_of,
    span_source,
    span_time,
)
from tocsin.streams.kafka.registry import SchemaRegistry
from tocsin.streams.stages.handoff import HandOff
from tocsin.streams.stages.partitioned import StageRun
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

Decode = Callable[[bytes | None], dict[str, Any]]


def event_decoders(settings: Settings) -> tuple[Decode, Decode, SchemaRegistry | None]:
    """(decode, decode_native, registry): the decoder of the events topic's records (through
    ``TOCSIN_EVENT_MAPPING`` when set, compiled once here), the one of records that are
    ``wide_event.v1`` already (the span intake's translations), and the schema registry
    client both look Avro writer schemas up with, if one is configured."""
    registry = SchemaRegistry(settings.schema_registry_url) \
        if settings.schema_registry_url else None
    native = WideEventDecoder(registry.lookup if registry else None)
    decode = native if settings.event_mapping is None else \
        mapped_decoder(load_mapping(settings.event_mapping), native)
    return decode, native, registry


@dataclass
class PartitionRun(StageRun):
    detector: PartitionDetector = field(kw_only=True)
    # Translated span events wait here until every span source has passed them, so
    # several span intakes writing one partition give one order (ADR 0015).
    merge: SourceMerge = field(kw_only=True, default_factory=SourceMerge)
    # The latest failing requests by request id, for GET /v1/requests/{id} (not state)
    requests: RecentRequests = field(kw_only=True, default_factory=RecentRequests)


SEQ_PER_RECORD = 1 << 20  # a span event's order in its source: offset, then index


def _span_records(data: bytes, origin: tuple[str, tuple[int, int]]) -> list[list[Any]]:
    """A span event record's or pack's events as [event, source, offset, index], checked
    against the ``tocsin.span_source`` header the dedup goes by: the same source and span
    record, the first at the header's index, a pack's next ones at increasing indexes
    (RecordError else)."""
    items = decode_span_pack(data) if data[0] == PACK_VERSION else [decode_span_event(data)]
    source, (offset, index) = origin
    out: list[list[Any]] = []
    for event, at_source, (at_offset, at_index) in items:
        if at_source != source or at_offset != offset or (
                at_index != index if not out else at_index <= out[-1][3]):
            raise RecordError(
                f"position {at_source}:{at_offset}:{at_index} differs from the "
                f"span_source header's {source}:{offset}:{index}")
        out.append([event, source, offset, at_index])
    return out


def deploy_record(signal: Signal) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A registered deploy as the signals topic holds it: (value, headers). Its delivery
    id makes the triage fold apply it once however often it is registered again."""
    return encode_signal(signal), [("tocsin.signal_id", signal.signal_id.encode()),
                                   (DELIVERY_HEADER, deploy_delivery(signal).encode())]


class DetectRecords:
    """The per-record rules of detection over one partition's records, in offset order.
    Subclasses give the settings, metrics and decoders, and implement the three hooks."""

    settings: Settings
    metrics: Metrics
    decode: Decode
    decode_native: Decode
    handoff: HandOff | None = None

    def _emit(self, run: PartitionRun, change: IncidentEvent) -> None:
        raise NotImplementedError

    def _register_deploy(self, run: PartitionRun, changed: VersionChanged) -> None:
        raise NotImplementedError

    def _dead_letter(self, run: PartitionRun, rec: Any, reason: str,
                     field_name: str | None = None) -> None:
        raise NotImplementedError

    def process(self, run: PartitionRun, records: list[Any]
                ) -> None:
        decode = self.decode
        decode_native = self.decode_native
        handoff = self.handoff
        limit = self.settings.max_record_bytes
        merge = run.merge
        counted = 0
        for rec in records:
            if rec.offset < run.next_offset:
                continue
            run.next_offset = rec.offset + 1
            data = rec.value
            if not data and rec.headers:
                progress = progress_of(rec.headers)
                if progress is not None:  # a span source's progress mark
                    source, at_ms, sources = progress
                    merge.expect(sources)
                    if at_ms is None:
                        merge.set_idle(source)
                    else:
                        merge.mark(source, at_ms)
                    continue
            if data is not None and len(data) > limit:
                self._dead_letter(run, rec, f"oversize: {len(data)} bytes > {limit}")
                continue
            origin = span_source(rec.headers) if rec.headers else None
            if origin is None and rec.headers:
                if header(rec.headers, ACTION) is not None:
                    counted += self._act(run, rec)
                    continue
                if header(rec.headers, RUNTIME) is not None:
                    counted += self._runtime(run, rec)
                    continue
            try:
                if origin is None:
                    event = decode(data)
                elif data and data[0] in RECORD_VERSIONS:
                    # The span intake's binary record or pack (ADR 0015): held in the
                    # merge as one item, a list of [event, source, offset, index];
                    # handed off by this process's intake when it wrote these bytes.
                    taken = handoff.take(rec.partition, data) if handoff is not None \
                        else None
                    held = taken if taken is not None and taken[0][1] == origin[0] \
                        and (taken[0][2], taken[0][3]) == origin[1] \
                        else _span_records(data, origin)
                else:
                    # a translated span as JSON (or Avro)
                    held = [[decode_native(data), origin[0], *origin[1]]]
            except SchemaError as exc:
                self._dead_letter(run, rec, str(exc), exc.field)
                continue
            except RecordError as exc:
                self._dead_letter(run, rec, f"span event record: {exc.reason}")
                continue
            if origin is None:
                counted += self._feed(run, event)
            else:
                offset, index = origin[1]
                at = span_time(rec.headers)
                merge.add(origin[0], held[0][0]["event_time_ms"] if at is None else at,
                          offset * SEQ_PER_RECORD + index, held)
        counted += self._release(run)
        self.metrics.events_in += counted

    def _release(self, run: PartitionRun) -> int:
        """Feed the span events every source has passed; how many were counted."""
        counted = 0
        merge = run.merge
        if merge.expected:  # nothing goes before the sources are known
            accept = run.detector.accept_source
            for held in merge.release():
                for event, source, offset, index in held:
                    if accept(source, (offset, index)):
                        counted += self._feed(run, event)
        return counted

    def _act(self, run: PartitionRun, rec: Any) -> int:
        """An operator action, decided where it lies in the log (ADR 0016): the span events
        releasable by then go first, so its place among them is the log's, not a batch's.
        Applied, it is a lifecycle event; refused, a dead letter naming the rule."""
        try:
            command = decode_command(rec.value or b"")
        except CommandError as exc:
            self._dead_letter(run, rec, f"action command: {exc}")
            return 0
        counted = self._release(run)
        outcome = run.detector.act(command)
        if isinstance(outcome, Refusal):
            self.metrics.stages["actions_refused"] += 1
            self._dead_letter(run, rec, f"action {command.action_id} refused: "
                                        f"{outcome.rule}: {outcome.message}")
            return counted
        self.metrics.stages["actions_applied"] += len(outcome)
        for change in outcome:
            self._emit(run, change)
        return counted

    def _runtime(self, run: PartitionRun, rec: Any) -> int:
        """A runtime signal for the [runtime] rule (ADR 0022), decided where it lies in the
        log, after the span events releasable by then (as an action is)."""
        try:
            signal = decode_signal(rec.value or b"")
        except SchemaError as exc:
            self._dead_letter(run, rec, f"runtime signal: {exc}", exc.field)
            return 0
        counted = self._release(run)
        for change in run.detector.runtime_signal(signal):
            self._emit(run, change)
        return counted

    def _feed(self, run: PartitionRun, event: dict[str, Any]) -> int:
        changed, changes = feed(run.detector, event, run.requests)
        if changed is not None:
            self._register_deploy(run, changed)
        for change in changes:
            self._emit(run, change)
        return 1
