"""Replay: a recorded log (``tocsin export``) through detection, trace assembly and triage,
with no broker, by the code the worker runs (ADR 0023).

- **Detection** reads each events partition in offset order with
  :class:`~tocsin.streams.stages.detect_loop.DetectRecords`, the stage's own per-record
  rules, in batches of ``max_poll_records`` as the stage fetches them: wide events, the
  span intake's translated span events and progress marks, operator actions and what
  goes to the dead letters alike.
- **Trace assembly** decodes the recorded ``otlp_spans`` records as the span intake
  does, merges its partitions by merge time, regroups the spans by trace id over the
  by-trace partitions as the intake forwards them, and closes traces at the least of the
  sources' marks, as the stage does.
- **Triage** folds the lifecycle changes, the recorded signals (and the deploys detection
  registers again: the same delivery ids, applied once), and the failing-trace summaries,
  one fold per summaries partition as on the worker, in event-time order.

The fold is order-independent (ADR 0009), so each incident's last report is the live run's
bytes and hash; the versions in between depend on when the worker flushed, and a replay
makes its own. Decisions are in event time, so nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import multiprocessing
import multiprocessing.context
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tocsin.clients.tlog import (
    MANIFEST,
    LogReader,
    LogRecord,
    RecordedLogError,
    sha256_file,
    verify_export,
)
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import FamilyWindow, StepWindow, VersionChanged
from tocsin.processors.feed import deploy_delivery, deploy_signal
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.otlp import OtlpError, decode_batch
from tocsin.processors.otlp.merge import PartitionMerge, merge_time
from tocsin.processors.otlp.republish import by_trace_batches
from tocsin.processors.otlp.spans import Span
from tocsin.processors.report import canonical_json
from tocsin.processors.rules import RuleSet
from tocsin.processors.signals.model import Signal
from tocsin.processors.source_merge import progress_watermark
from tocsin.processors.traces import TraceAssembler
from tocsin.processors.traces.assembler import ClosedTrace
from tocsin.processors.traces.blast import TraceSummary
from tocsin.processors.traces.summary import SummaryError, decode_summary, summary_records
from tocsin.processors.triage import Triage, TriageConfig
from tocsin.processors.triage_loop import TriageLoop
from tocsin.schemas.codec import SchemaError, decode_incident, encode_incident
from tocsin.schemas.signal_wire import decode_signal
from tocsin.streams.kafka.dead_letters import DeadLetter, dead_letter
from tocsin.streams.kafka.headers import DELIVERY_HEADER, header
from tocsin.streams.stages.detect_loop import DetectRecords, PartitionRun, event_decoders
from tocsin.streams.stages.triage import owner_of
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, rules_of

WINDOWS_EVERY = 50_000  # records between two drains of the window counts (a checkpoint)


class ReplayError(Exception):
    """A recorded log that cannot be replayed (bad directory, manifest or file)."""


@dataclass(frozen=True, slots=True)
class Letter:
    """A record replay dead-lettered: where it lies and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    letter: DeadLetter


@dataclass
class Outputs:
    """Everything a replay produced, in the order it was produced."""

    changes: list[tuple[int, IncidentEvent]] = field(default_factory=list)  # (partition, .)
    deploys: list[Signal] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    windows: list[tuple[int, list[FamilyWindow], list[StepWindow]]] = field(
        default_factory=list)
    summaries: list[tuple[str, bytes]] = field(default_factory=list)  # (service key, value)
    reports: list[dict[str, Any]] = field(default_factory=list)  # every version, in order
    provenance: dict[str, bytes] = field(default_factory=dict)  # report hash -> header
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # incident -> last report


@dataclass
class Counts:
    events: int = 0  # records of the events topic read
    signals: int = 0
    span_records: int = 0
    spans: int = 0
    traces_closed: int = 0
    summaries: int = 0
    dead_letters: int = 0


class ReplayDetection(DetectRecords):
    """The detection stage's rules over recorded partitions; what they send is kept."""

    def __init__(self, settings: Settings, rules: RuleSet, out: Outputs) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = Metrics()
        self.decode, self.decode_native, _ = event_decoders(settings)
        self.out = out
        self.topic = settings.topics.events
        self.partition = 0

    def run(self, partition: int, records: Iterable[LogRecord]) -> int:
        """Every record of one events partition, in batches as the stage fetches them;
        how many were read."""
        self.partition = partition
        run = PartitionRun(0, 0, detector=PartitionDetector(self.settings.detector,
                                                            self.rules))
        batch: list[LogRecord] = []
        size = self.settings.max_poll_records
        read = since_windows = 0
        for rec in records:
            batch.append(rec)
            if len(batch) >= size:
                self.process(run, batch)
                read += len(batch)
                since_windows += len(batch)
                batch = []
                if since_windows >= WINDOWS_EVERY:
                    self._windows(run)
                    since_windows = 0
        if batch:
            self.process(run, batch)
            read += len(batch)
        self._windows(run)
        return read

    def _windows(self, run: PartitionRun) -> None:
        run.detector.evict_idle()
        fams, steps = run.detector.drain_windows()
        if fams or steps:
            self.out.windows.append((self.partition, fams, steps))

    def _emit(self, run: PartitionRun, change: IncidentEvent) -> None:
        self.metrics.lifecycle[change.kind] += 1
        self.out.changes.append((self.partition, change))

    def _register_deploy(self, run: PartitionRun, changed: VersionChanged) -> None:
        self.metrics.deploys_registered += 1
        self.out.deploys.append(deploy_signal(changed))

    def _dead_letter(self, run: PartitionRun, rec: Any, reason: str,
                     field_name: str | None = None) -> None:
        self.metrics.dead_letters += 1
        self.out.letters.append(Letter(self.topic, self.partition, rec.offset, reason,
                                       dead_letter(self.topic, self.partition, rec.offset,
                                                   rec.key, rec.value, rec.headers, reason,
                                                   field_name,
                                                   self.settings.dlq_max_value_bytes)))


@dataclass(frozen=True)
class RecordedLog:
    """An export directory, checked against its manifest: its files by topic."""

    root: Path
    manifest: dict[str, Any]
    files: dict[str, dict[int, dict[str, Any]]]  # topic -> partition -> manifest entry
    manifest_sha256: str

    @classmethod
    def open(cls, directory: Path | str) -> RecordedLog:
        root = Path(directory)
        if not root.is_dir():
            raise ReplayError(f"{root}: not a directory (an export of `tocsin export`)")
        try:
            manifest = verify_export(root)
        except RecordedLogError as exc:
            raise ReplayError(str(exc)) from exc
        files: dict[str, dict[int, dict[str, Any]]] = {}
        for entry in manifest.get("files", ()):
            files.setdefault(str(entry["topic"]), {})[int(entry["partition"])] = entry
        return cls(root, manifest, files, sha256_file(root / MANIFEST))

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.files.get(topic, {}))

    def records(self, topic: str, partition: int) -> Iterator[LogRecord]:
        """One file's records, checked to be the ones its manifest entry lists."""
        entry = self.files[topic][partition]
        path = self.root / str(entry["path"])
        n = 0
        last = None
        try:
            with LogReader(path) as reader:
                if (reader.topic, reader.partition) != (topic, partition):
                    raise ReplayError(f"{path}: holds {reader.topic}/{reader.partition}, "
                                      f"the manifest says {topic}/{partition}")
                for rec in reader:
                    n += 1
                    last = rec.offset
                    yield rec
        except RecordedLogError as exc:
            raise ReplayError(str(exc)) from exc
        if n != entry["count"] or (n and last != entry["last_offset"]):
            raise ReplayError(f"{path}: {n} records to offset {last}, the manifest says "
                              f"{entry['count']} to {entry['last_offset']}")


def detect_partition(settings: Settings, rules: RuleSet, log: RecordedLog, partition: int
                     ) -> tuple[Outputs, int]:
    """One events partition through detection: what it produced, and records read."""
    out = Outputs()
    read = ReplayDetection(settings, rules, out).run(
        partition, log.records(settings.topics.events, partition))
    return out, read


def detect_partitions(settings: Settings, rules: RuleSet, log: RecordedLog,
                      partitions: list[int]) -> dict[int, tuple[Outputs, int]]:
    """:func:`detect_partition` of each (in a pool's process)."""
    return {p: detect_partition(settings, rules, log, p) for p in partitions}


def _groups(log: RecordedLog, topic: str, partitions: list[int], jobs: int
            ) -> list[list[int]]:
    """Partitions in at most ``jobs`` groups of about as many records (largest first)."""
    jobs = max(1, min(jobs, len(partitions)))
    groups: list[list[int]] = [[] for _ in range(jobs)]
    sizes = [0] * jobs
    for p in sorted(partitions, key=lambda p: (-int(log.files[topic][p]["count"]), p)):
        i = sizes.index(min(sizes))
        groups[i].append(p)
        sizes[i] += int(log.files[topic][p]["count"]) + 1
    return [sorted(g) for g in groups if g]


def _context() -> multiprocessing.context.BaseContext:
    """fork where there is one (the modules are loaded already), the default elsewhere."""
    try:
        return multiprocessing.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return multiprocessing.get_context()


class TraceReplay:
    """Trace assembly over the recorded span topic, as the span intake and the trace stage
    do it: the span partitions merged by merge time, spans regrouped by trace id over
    ``by_trace`` partitions, traces closed at the least of the sources' marks."""

    def __init__(self, settings: Settings, by_trace: int) -> None:
        self.settings = settings
        self.by_trace = by_trace
        self.assemblers = [TraceAssembler(external_watermark=True) for _ in range(by_trace)]
        self.marks: dict[str, int] = {}
        self.expected: set[str] = set()
        self.closed = 0

    def run(self, log: RecordedLog, counts: Counts, out: Outputs) -> None:
        topic = self.settings.topics.spans
        partitions = log.partitions(topic)
        if not partitions:
            return
        self.expected = {f"{topic}:{p}" for p in partitions}
        encoding = None if self.settings.spans_encoding == "auto" \
            else self.settings.spans_encoding
        merge: PartitionMerge[tuple[int, int, tuple[Span, ...]]] = PartitionMerge(partitions)
        for p in partitions:
            for rec in log.records(topic, p):
                counts.span_records += 1
                try:
                    decoded = decode_batch(rec.value, encoding)
                except OtlpError:
                    continue  # the intake dead-letters it; detection's log shows that
                if decoded.spans:
                    merge.add(p, rec.offset, merge_time(decoded, rec.timestamp_ms),
                              (p, rec.offset, tuple(decoded.spans)))
        for entry in merge.release(lambda _p: False):
            p, offset, spans = entry.item
            counts.spans += len(spans)
            self._add(f"{topic}:{p}", offset, spans, out)
        for assembler in self.assemblers:  # every source idle: the newest mark
            if self.marks:
                self._publish(assembler.flush(max(self.marks.values())), out)

    def _add(self, source: str, offset: int, spans: tuple[Span, ...], out: Outputs) -> None:
        for partition, _source, _first, _value, group in by_trace_batches(
                [(source, offset, spans)], self.by_trace):
            assembler = self.assemblers[partition]
            closed: list[ClosedTrace] = []
            for span in group:
                closed += assembler.add(span)
            self._publish(closed, out)
        latest = max(s.end_ms for s in spans)
        if latest > self.marks.get(source, -1):
            self.marks[source] = latest
            watermark = progress_watermark(self.marks, set(), self.expected)
            if watermark is not None:
                for assembler in self.assemblers:
                    self._publish(assembler.flush(watermark), out)

    def _publish(self, closed: list[ClosedTrace], out: Outputs) -> None:
        self.closed += len(closed)
        for trace in closed:
            out.summaries.extend(summary_records(trace))


class Replay:
    """One replay of a recorded log under ``settings`` and ``rules`` (by default the rules
    file the settings name, ADR 0022)."""

    def __init__(self, settings: Settings, rules: RuleSet | None = None) -> None:
        self.settings = settings
        self.rules = rules_of(settings) if rules is None else rules
        self.triage_config = TriageConfig(news_cooldown_ms=settings.news_cooldown_ms,
                                          rules=None if self.rules.is_empty else self.rules)
        self.out = Outputs()
        self.counts = Counts()
        self.folds: list[TriageLoop] = []

    def run(self, log: RecordedLog, jobs: int = 1) -> Outputs:
        """Replay ``log``: detection's partitions on ``jobs`` processes (each partition is
        independent; their outputs are taken in partition order, so the result does not
        depend on ``jobs``), trace assembly meanwhile, then triage."""
        s = self.settings
        events = log.partitions(s.topics.events)
        groups = _groups(log, s.topics.events, events, jobs)
        partitions = max(len(events), 1)
        traces = TraceReplay(s, partitions)
        if len(groups) <= 1:
            for p in events:
                self._take(p, *detect_partition(s, self.rules, log, p))
            traces.run(log, self.counts, self.out)
        else:
            with ProcessPoolExecutor(len(groups), mp_context=_context()) as pool:
                futures = [pool.submit(detect_partitions, s, self.rules, log, g)
                           for g in groups]
                traces.run(log, self.counts, self.out)
                done = {p: r for f in futures for p, r in f.result().items()}
            for p in events:
                self._take(p, *done[p])
        self.counts.traces_closed = traces.closed
        self.counts.summaries = len(self.out.summaries)
        self._triage(log, partitions)
        self.counts.dead_letters = len(self.out.letters)
        return self.out

    def _take(self, partition: int, out: Outputs, read: int) -> None:
        self.counts.events += read
        self.out.changes += out.changes
        self.out.deploys += out.deploys
        self.out.letters += out.letters
        self.out.windows += out.windows

    # ------------------------------------------------------------------ triage

    def _triage(self, log: RecordedLog, partitions: int) -> None:
        """The fold's inputs merged by event time (incidents, signals, summaries), each
        fold flushed after each lifecycle change and every 1,000 other inputs."""
        s = self.settings
        self.folds = [TriageLoop(Triage(self.triage_config)) for _ in range(partitions)]
        encoding = s.incident_encoding
        inputs: list[tuple[int, int, int, Any]] = []
        seq = 0
        for p in log.partitions(s.topics.signals):
            for rec in log.records(s.topics.signals, p):
                self.counts.signals += 1
                try:
                    signal = decode_signal(rec.value or b"")
                except (SchemaError, KeyError, TypeError, ValueError):
                    continue  # the projection dead-letters it; triage skips it
                delivery = header(rec.headers, DELIVERY_HEADER)
                seq += 1
                inputs.append((signal.event_time_ms, 1, seq, (
                    "signal", signal, delivery.decode(errors="replace") if delivery
                    else None, [s.topics.signals, p, rec.offset])))
        for i, signal in enumerate(self.out.deploys):
            seq += 1
            inputs.append((signal.event_time_ms, 1, seq, (
                "signal", signal, deploy_delivery(signal), ["replay:deploys", 0, i])))
        for i, (partition, change) in enumerate(self.out.changes):
            event = decode_incident(encode_incident(change.to_dict(), encoding))
            seq += 1
            inputs.append((change.at_ms, 0, seq, ("incident", event, None,
                                                  ["replay:incidents", partition, i])))
        for key, value in self.out.summaries:
            try:
                summary, end_ms = decode_summary(value)
            except SummaryError:
                continue
            seq += 1
            inputs.append((end_ms, 2, seq, ("summary", summary, key, end_ms)))
        heapq.heapify(inputs)
        since = 0
        while inputs:
            _, _, _, (kind, value, extra, where) = heapq.heappop(inputs)
            if kind == "incident":
                fold = self.folds[owner_of(value["service"], partitions)]
                fold.apply_incident(value, where)
                self._flush(fold)
                continue
            if kind == "signal":
                for fold in self.folds:
                    fold.apply_signal(value, extra, where)
            else:
                assert isinstance(value, TraceSummary)
                self.folds[owner_of(str(extra), partitions)].apply_summary(value, where)
            since += 1
            if since >= 1_000:
                since = 0
                for fold in self.folds:
                    self._flush(fold)
        for fold in self.folds:
            self._flush(fold)
            for incident_id in sorted(fold.triage.incidents):
                self.out.final[incident_id] = fold.triage.report(incident_id)

    def _flush(self, fold: TriageLoop) -> None:
        for report in fold.flush():
            self.out.reports.append(report)
            self.out.provenance[report["report_hash"]] = canonical_json(
                fold.provenance_of(report))
        fold.triage.take_updates()

