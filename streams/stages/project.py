"""The DuckDB projection: what the stages concluded, from their topics (ADR 0004, ADR 0015
section 8).

It reads summaries, not traffic: lifecycle events, window counts, dead letters, signals and
report versions — never wide events or spans — so its input grows with incidents, not with
traffic. It assigns itself every partition of those topics, resumes from the positions
stored *in DuckDB* and writes each batch with its positions in one transaction, so the
database is exactly the fold of the topics whatever crashes in between, and a restart reads
nothing from the start of any log.

- Report versions come from the reports topic: the value is the report's canonical bytes
  (its hashes are checked), the provenance — where each cited record lies — its
  ``tocsin.provenance`` header. ``triage_reports`` keeps one row per
  ``(incident_id, report_hash)``, so a version published twice is one row.
- Signals are folded here, in DuckDB, not in memory: inside the write transaction the held
  rows of the batch's signal ids are read back, the batch's occurrences are folded onto
  them and the rows upserted (:class:`SignalBatch`). A retried delivery (header
  ``tocsin.delivery``) counts once: ``signal_deliveries`` remembers each
  ``(delivery, signal id)`` applied, in the same transaction.
- A record that is not what its topic carries is dead-lettered with the reason, never a
  crash: no row that DuckDB would refuse reaches the writer's transaction. Progress marks
  (no value, header ``tocsin.mark``) are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tocsin.processors.detector_state import FamilyWindow, StepWindow
from tocsin.processors.report import verify
from tocsin.processors.signals.model import FIELDS as SIGNAL_FIELDS
from tocsin.processors.signals.model import Signal
from tocsin.processors.triage import Folded, fold
from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.schemas.signal_wire import decode_signal
from tocsin.sinks.duckdb_schema import (
    EVENT_COLUMNS,
    EVIDENCE_COLUMNS,
    REPORT_COLUMNS,
    UPDATE_COLUMNS,
)
from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.sinks.report_rows import report_rows, signal_row
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.headers import DELIVERY_HEADER, PROVENANCE_HEADER, header, mark_of
from tocsin.streams.kafka.io import new_producer, stage_consumer, stop_quietly, wait_partitions
from tocsin.streams.kafka.registry import SchemaRegistry
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, Topics

log = logging.getLogger("tocsin.project")

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[Record]]


def _header(rec: Record, name: str) -> str | None:
    for k, v in rec.headers or ():
        if k == name:
            return bytes(v).decode(errors="replace")
    return None


_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_MS_BOUND = 9 * 10**15  # a time in ms whose microseconds still fit a BIGINT (make_timestamptz)


def _bounded_int(value: Any, bound: int = _INT64) -> int:
    if type(value) is not int or not -bound <= value <= bound:
        raise ValueError(f"{value!r} is not an integer of the column's size")
    return value


def _typed(kind: Any, row: Any) -> Any:
    """One window row as the detector writes it, else ValueError/TypeError: a row that
    DuckDB would refuse must not reach the writer's transaction."""
    if not isinstance(row, list) or len(row) != len(kind._fields):
        raise ValueError(f"a {kind.__name__} row has {len(kind._fields)} fields")
    for name, value in zip(kind._fields, row, strict=True):
        if name.endswith("_ms"):
            _bounded_int(value)
        elif name in ("errors", "requests"):
            _bounded_int(value, _INT32)
        elif not isinstance(value, str):
            raise ValueError(f"{kind.__name__}.{name} must be a string")
    return kind(*row)


def _fits(row: Mapping[str, Any], columns: Sequence[tuple[str, str]],
          keys: tuple[str, ...], ms_bound: int = _INT64) -> None:
    """ValueError unless every column's value is one DuckDB takes for its type (None where
    the column is not part of the key): a row DuckDB would refuse must not reach the
    writer's transaction, where it would stop the projection."""
    for name, kind in columns:
        value = row.get(name)
        if value is None:
            if name in keys:
                raise ValueError(f"{name} is missing")
            continue
        if kind == "VARCHAR":
            ok = isinstance(value, str)
        elif kind in ("BIGINT", "INTEGER"):
            bound = _INT32 if kind == "INTEGER" else ms_bound if name.endswith("_ms") \
                else _INT64
            ok = type(value) is int and -bound <= value <= bound
        elif kind == "DOUBLE":
            ok = type(value) is float or (type(value) is int and abs(value) < 2**1000)
        elif kind == "VARCHAR[]":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:  # pragma: no cover - a column type this check does not know yet
            raise AssertionError(f"unchecked column type {kind}")
        if not ok:
            raise ValueError(f"{name} is not a {kind}")


def _int_header(rec: Record, name: str) -> int | None:
    value = _header(rec, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def letter_row(rec: Record) -> dict[str, Any]:
    """A dead_letters row of a record on the dead-letter topic. Letters from elsewhere
    (someone else's producer) lack our headers: they are kept, keyed by where they lie on
    the dead-letter topic itself."""
    source_offset = _int_header(rec, "tocsin.dlq.source_offset")
    ours = source_offset is not None and _header(rec, "tocsin.dlq.source_topic") is not None
    original = _int_header(rec, "tocsin.dlq.original_bytes")
    return {
        "source_topic": _header(rec, "tocsin.dlq.source_topic") if ours else rec.topic,
        "source_partition": (_int_header(rec, "tocsin.dlq.source_partition") or 0)
        if ours else rec.partition,
        "source_offset": source_offset if ours else rec.offset,
        "reason": _header(rec, "tocsin.dlq.reason") if ours
        else "written to the dead-letter topic by another producer",
        "size_bytes": original if original is not None else len(rec.value or b""),
        "kept_bytes": len(rec.value or b""),
        "sha256": _header(rec, "tocsin.dlq.sha256"),
        "truncated": _header(rec, "tocsin.dlq.truncated") == "true",
        "field": _header(rec, "tocsin.dlq.field"),
        "dlq_partition": rec.partition, "dlq_offset": rec.offset,
    }


# --------------------------------------------------------------------------- signals


def folded_row(folded: Folded) -> dict[str, Any]:
    """The ``signals`` row of a folded signal. ``occurrences`` is the folded total;
    ``latest_occurrences`` keeps the latest occurrence's own count, which the fold compares
    when it picks the latest occurrence (:func:`folded_of_row` gives the fold back)."""
    return {**signal_row(folded), "latest_occurrences": folded.signal.occurrences}


def _json_map(text: Any, name: str) -> dict[str, str]:
    value = orjson.loads(text) if text else {}
    if not isinstance(value, dict):
        raise ValueError(f"signals.{name} is not a JSON object")
    return value


def folded_of_row(row: Mapping[str, Any]) -> Folded:
    """The fold a ``signals`` row was written from (inverse of :func:`folded_row`). A row
    written before ``latest_occurrences`` existed counts its latest occurrence as 1."""
    fields = {k: row[k] for k in SIGNAL_FIELDS
              if k not in ("signal_id", "labels", "annotations", "occurrences")}
    latest = row.get("latest_occurrences")
    signal = Signal(**fields, labels=_json_map(row["labels"], "labels"),
                    annotations=_json_map(row["annotations"], "annotations"),
                    occurrences=int(latest) if latest is not None else 1)
    if signal.signal_id != row["signal_id"]:
        raise ValueError(f"signals row {row['signal_id']} rebuilds as {signal.signal_id}")
    return Folded(signal, int(row["occurrences"]), int(row["first_seen_ms"]),
                  int(row["last_seen_ms"]))


Occurrence: TypeAlias = tuple[Signal, str | None]  # a signal and its delivery id, if any


def fold_occurrences(held: Mapping[str, Folded], seen: set[tuple[str, str]],
                     occurrences: Sequence[Occurrence]
                     ) -> tuple[dict[str, Folded], list[tuple[str, str]], int]:
    """Fold occurrences, in order, onto the held folds: (the touched folds by id, the
    (delivery, signal id) pairs applied, how many were redeliveries). An occurrence whose
    (delivery, signal id) is in ``seen`` or earlier in ``occurrences`` counts once.

    Occurrences add (saturating), first/last seen are min/max, the latest occurrence is
    the greatest by a total key (:meth:`Folded.merge`): so the result is the same however
    the occurrences were split into batches and in whichever order they come."""
    seen = set(seen)
    touched: dict[str, Folded] = {}
    applied: list[tuple[str, str]] = []
    redelivered = 0
    for signal, delivery in occurrences:
        if delivery is not None:
            pair = (delivery, signal.signal_id)
            if pair in seen:
                redelivered += 1  # a retried request: applied once already
                continue
            seen.add(pair)
            applied.append(pair)
        sid = signal.signal_id
        touched[sid] = fold(touched.get(sid, held.get(sid)), signal)
    return touched, applied, redelivered


class SignalBatch:
    """One batch's signal occurrences in log order: what the sink folds onto the held rows
    inside the write transaction (a :class:`~tocsin.sinks.duckdb_sink.SignalFold`)."""

    def __init__(self, occurrences: Sequence[Occurrence] = ()) -> None:
        self.occurrences = list(occurrences)
        self.rows: list[dict[str, Any]] = []  # the rows the fold produced
        self.redelivered = 0

    def __bool__(self) -> bool:
        return bool(self.occurrences)

    def signal_ids(self) -> Sequence[str]:
        return sorted({s.signal_id for s, _ in self.occurrences})

    def deliveries(self) -> Sequence[tuple[str, str]]:
        return sorted({(d, s.signal_id) for s, d in self.occurrences if d is not None})

    def fold(self, held: Mapping[str, Mapping[str, Any]], seen: set[tuple[str, str]]
             ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        folds = {sid: folded_of_row(row) for sid, row in held.items()}
        touched, applied, self.redelivered = fold_occurrences(folds, seen, self.occurrences)
        self.rows = [folded_row(touched[sid]) for sid in sorted(touched)]
        return self.rows, applied


def _delivery(rec: Record) -> str | None:
    raw = header(rec.headers, DELIVERY_HEADER)
    return raw.decode(errors="replace") if raw is not None else None


# --------------------------------------------------------------------------- reports


def provenance_of_header(raw: bytes | None) -> dict[str, list[Any]]:
    """The ``tocsin.provenance`` header: cited record key -> [topic, partition, offset].
    A version without one (published before the header existed) cites nothing."""
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"its {PROVENANCE_HEADER} header is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(
            isinstance(v, list) and len(v) == 3 and isinstance(v[0], str)
            and type(v[1]) is int and type(v[2]) is int and 0 <= v[1] <= _INT32
            and 0 <= v[2] <= _INT64 for v in value.values()):
        raise ValueError(f"its {PROVENANCE_HEADER} header is not an object of "
                         "[topic, partition, offset]")
    return value


def report_of_record(rec: Record) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``triage_reports`` row and ``evidence`` rows of a record of the reports topic;
    ValueError, with the reason, for anything that is not a sealed report version."""
    try:
        report = orjson.loads(rec.value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(report, dict):
        raise ValueError("a report is a JSON object")
    try:
        sealed = verify(report)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a triage report: {type(exc).__name__} {exc}") from exc
    if not sealed:
        raise ValueError("its report_hash or evidence_fingerprint does not match its content")
    said = _header(rec, "tocsin.report_hash")
    if said is not None and said != report.get("report_hash"):
        raise ValueError("its tocsin.report_hash header is not the report's hash")
    provenance = provenance_of_header(header(rec.headers, PROVENANCE_HEADER))
    try:
        version, evidence = report_rows(report, provenance)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a triage report: {type(exc).__name__} {exc}") from exc
    _fits(version, REPORT_COLUMNS, ("incident_id", "report_hash"))
    for row in evidence:
        _fits(row, EVIDENCE_COLUMNS, ("incident_id", "report_hash", "kind", "id"))
    return version, evidence


# --------------------------------------------------------------------------- a batch


@dataclass
class Rows:
    """One batch read into rows, and the records it could not read."""

    events: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # news (ADR 0018)
    families: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    signals: SignalBatch = field(default_factory=SignalBatch)
    reports: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    rejected: list[tuple[Record, str, str | None]] = field(default_factory=list)
    marks: int = 0

    def count(self) -> int:
        """Rows this batch writes (signals once folded)."""
        return len(self.events) + len(self.updates) + len(self.families) + len(self.steps) + \
            len(self.letters) + len(self.signals.rows) + len(self.reports) + \
            len(self.evidence)


def read_batch(batch: Batch, topics: Topics, lookup: Any = None) -> Rows:
    """A consumed batch as rows, in a deterministic order (by topic, partition, offset).
    Whatever a topic should not carry is in ``rejected`` with the reason and the field."""
    out = Rows()
    reported: set[tuple[str, str]] = set()
    for tp, records in sorted(batch.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
        if not records:
            continue
        out.positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        for rec in records:
            if tp.topic == topics.dlq:
                out.letters.append(letter_row(rec))
                continue
            if not rec.value and mark_of(rec.headers) is not None:
                out.marks += 1  # a stage's progress mark: no data
                continue
            try:
                if tp.topic == topics.incidents:
                    event = decode_incident(rec.value or b"", lookup)
                    if event.get("kind") == "updated":
                        _fits(event, UPDATE_COLUMNS, ("incident_id", "seq", "news_signature"),
                              _MS_BOUND)
                        out.updates.append(event)
                        continue
                    _fits(event, EVENT_COLUMNS, ("incident_id", "seq"), _MS_BOUND)
                    out.events.append(event)
                elif tp.topic == topics.windows:
                    bucket_ms, fams, stps = _window_rows(rec)
                    out.families.extend({**w._asdict(), "bucket_ms": bucket_ms} for w in fams)
                    out.steps.extend({**w._asdict(), "bucket_ms": bucket_ms} for w in stps)
                elif tp.topic == topics.signals:
                    out.signals.occurrences.append((decode_signal(rec.value or b""),
                                                    _delivery(rec)))
                elif tp.topic == topics.reports:
                    version, evidence = report_of_record(rec)
                    key = (version["incident_id"], version["report_hash"])
                    if key not in reported:  # a version published twice: one row
                        reported.add(key)
                        out.reports.append(version)
                        out.evidence.extend(evidence)
            except (SchemaError, KeyError, TypeError, ValueError) as exc:
                what = {topics.incidents: "an incident event", topics.windows:
                        "a window record", topics.signals: "a signal",
                        topics.reports: "a report version"}.get(tp.topic, "a record")
                out.rejected.append((rec, f"not {what}: {exc}",
                                     exc.field if isinstance(exc, SchemaError) else None))
    return out


def write_rows(sink: DuckDBSink, rows: Rows, *, positions: bool) -> None:
    """One batch's rows in one transaction, with its input positions when ``positions``
    (``tocsin replay --db`` writes none: its records were never on a topic)."""
    sink.write(incident_events=rows.events, incident_updates=rows.updates,
               family_windows=rows.families, step_windows=rows.steps,
               dead_letters=rows.letters,
               signal_fold=rows.signals if rows.signals else None,
               reports=rows.reports, evidence=rows.evidence,
               positions=rows.positions if positions else None)


def _window_rows(rec: Record) -> tuple[int, list[Any], list[Any]]:
    """A window record's rows; ValueError/KeyError/TypeError for any other bytes."""
    try:
        value = orjson.loads(rec.value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from exc
    return (_bounded_int(value["bucket_ms"]),
            [_typed(FamilyWindow, row) for row in value["families"]],
            [_typed(StepWindow, row) for row in value["steps"]])


# --------------------------------------------------------------------------- the consumer


class Projection:
    """Stage E of ADR 0015: the one writer of a DuckDB file."""

    def __init__(self, settings: Settings, bootstrap: str, sink: DuckDBSink,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.sink = sink
        self.metrics = metrics
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()
        self.running = asyncio.Event()  # assigned, positions restored, reading
        self.next_pos: dict[TopicPartition, int] = {}
        self.registry = SchemaRegistry(settings.schema_registry_url) \
            if settings.schema_registry_url else None
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters: DeadLetterSender | None = None
        # Told what each batch wrote, after its commit: the operator actions' desk
        self.on_written: Callable[[Sequence[Mapping[str, Any]],
                                   Sequence[Mapping[str, Any]]], None] | None = None
        # The report versions each batch wrote (the live page's feed)
        self.on_reports: Callable[[Sequence[Mapping[str, Any]]], None] | None = None

    @property
    def topics(self) -> tuple[str, ...]:
        """What the projection consumes: summaries, never wide events or spans."""
        t = self.settings.topics
        return (t.incidents, t.windows, t.dlq, t.signals, t.reports)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self.consumer = stage_consumer(self.bootstrap, self.settings.fetch_max_bytes,
                                       max_poll_records=20_000)
        self.producer = new_producer(self.bootstrap)
        await self.consumer.start()
        await self.producer.start()
        self.dead_letters = DeadLetterSender(self.producer, self.settings.topics.dlq)
        try:
            tps = [TopicPartition(t, p) for t in self.topics
                   for p in await wait_partitions(self.consumer, t, 20.0)]
            self.consumer.assign(tps)
            # Resume where DuckDB says; nothing is read from any log's start. A stored
            # position beyond a partition's end (a reset log) shows on the first fetches
            # (_check_resets): records from below it, or a high watermark under it.
            saved = await asyncio.to_thread(self.sink.positions)
            self.next_pos = {tp: saved.get((tp.topic, tp.partition), 0) for tp in tps}
            for tp in tps:
                offset = saved.get((tp.topic, tp.partition))
                if offset is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)
            self.running.set()
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100)
                await self._check_resets(tps, batch)
                if batch:
                    await self._project(batch)
                    for tp, records in batch.items():
                        if records:
                            self.next_pos[tp] = records[-1].offset + 1
                if not batch:
                    self.caught_up.set()
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def _project(self, batch: Batch) -> None:
        """Read a batch, dead-letter what is not ours (acknowledged first), then write its
        rows and positions in one transaction."""
        for tp, records in batch.items():
            self.metrics.stages[f"projection_consumed:{tp.topic}"] += len(records)
        lookup = self.registry.lookup if self.registry else None
        rows = await asyncio.to_thread(read_batch, batch, self.settings.topics, lookup)
        for rec, reason, where in rows.rejected:
            log.warning("%s:%s:%s dead-lettered: %s", rec.topic, rec.partition, rec.offset,
                        reason)
            await self._dead_letter(rec, reason, where)
        await asyncio.to_thread(self._write, rows)
        if self.on_written is not None and rows.count():
            self.on_written(rows.events, rows.letters)
        if self.on_reports is not None and rows.reports:
            self.on_reports(rows.reports)
        self.metrics.stages["projection_marks_skipped"] += rows.marks
        self.metrics.stages["projection_signals_redelivered"] += rows.signals.redelivered
        self.metrics.rows_projected += rows.count()

    def _write(self, rows: Rows) -> None:
        write_rows(self.sink, rows, positions=True)

    async def _check_resets(self, tps: list[TopicPartition], batch: Batch) -> None:
        """A partition whose log now ends (or restarted) below our position: new epoch.
        Judged on every fetch, the first after the start included, so a log reset while
        the projection was down is found without reading it."""
        assert self.consumer is not None
        for tp in tps:
            pos = self.next_pos.get(tp, 0)
            records = batch.get(tp)
            if records and records[0].offset < pos:
                # The client already went back to the log's start: read on from there.
                await self._new_epoch(tp, pos, self.consumer.highwater(tp) or 0)
                self.next_pos[tp] = records[0].offset
                continue
            high = self.consumer.highwater(tp)
            if high is not None and high < pos:
                await self._new_epoch(tp, pos, high)
                self.next_pos[tp] = 0
                await self.consumer.seek_to_beginning(tp)

    async def _new_epoch(self, tp: TopicPartition, stale: int, high: int) -> None:
        self.metrics.log_resets[f"{tp.topic}:{tp.partition}"] += 1
        log.error("RESET LOG: %s partition %s ends at %s, below the stored position %s "
                  "(broker restarted empty, topic recreated or retention ran): reading the "
                  "new log from its start as a new epoch; history is kept",
                  tp.topic, tp.partition, high, stale)
        await asyncio.to_thread(self.sink.write, positions={(tp.topic, tp.partition): 0},
                                log_epochs=[(tp.topic, tp.partition, stale, high)])

    async def _dead_letter(self, rec: Record, reason: str, where: str | None = None) -> None:
        assert self.dead_letters is not None
        self.metrics.dead_letters += 1
        await self.dead_letters.send(of_record(rec, reason, where,
                                               self.settings.dlq_max_value_bytes))
