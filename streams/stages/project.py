"""The DuckDB projection: incidents, window counts and dead letters, from their topics.

The topics are the source of truth. This consumer assigns itself
every partition of the output topics, resumes from the positions stored *in DuckDB*, and
writes each batch with its positions in one transaction, so the database is exactly the
fold of the topics whatever crashes in between (ADR 0004).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tocsin.processors.detector import FamilyWindow, StepWindow
from tocsin.processors.report import canonical_json
from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.io import new_producer, read_to_end, stop_quietly, wait_partitions
from tocsin.streams.kafka.registry import SchemaRegistry
from tocsin.streams.stages.triage import TriageLoop, decode_signal, report_rows, signal_row
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

log = logging.getLogger("tocsin.project")


def _header(rec: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for k, v in rec.headers or ():
        if k == name:
            return bytes(v).decode(errors="replace")
    return None


_INT32 = 2**31 - 1


def _bounded_int(value: Any, bound: int = 2**63 - 1) -> int:
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


def _int_header(rec: ConsumerRecord[bytes, bytes], name: str) -> int | None:
    value = _header(rec, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def letter_row(rec: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
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


class Projection:
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
        self.triage = TriageLoop(settings.topics.incidents, settings.topics.signals,
                                 settings.topics.spans)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        topics = self.settings.topics
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50,
            max_poll_records=20_000, fetch_max_bytes=self.settings.fetch_max_bytes)
        self.producer = new_producer(self.bootstrap)
        await self.consumer.start()
        await self.producer.start()
        self.dead_letters = DeadLetterSender(self.producer, topics.dlq)
        try:
            tps = [TopicPartition(t, p)
                   for t in (topics.incidents, topics.windows, topics.dlq, topics.signals,
                             topics.spans)
                   for p in await wait_partitions(self.consumer, t, 20.0)]
            self.consumer.assign(tps)
            saved = self.sink.positions()
            await self._restore_triage(saved)
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
                    windows = await self._read_windows(batch)
                    reports = await self._publish_reports(batch)
                    await asyncio.to_thread(self._write, batch, reports, windows)
                    for tp, records in batch.items():
                        self.next_pos[tp] = records[-1].offset + 1
                if not batch:
                    self.caught_up.set()
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def _restore_triage(self, saved: dict[tuple[str, int], int]) -> None:
        """Rebuild the triage fold from what DuckDB already reflects (ADR 0009). A stored
        position beyond its partition's end is a reset log: a new epoch (``saved`` is
        corrected in place, so nothing of the new log is taken as already applied)."""
        topics = self.settings.topics
        logs = {}
        for topic in (topics.incidents, topics.signals, topics.spans):
            ends: dict[int, int] = {}
            logs[topic] = await read_to_end(self.bootstrap, topic, ends=ends)
            for partition, end in sorted(ends.items()):
                stale = saved.get((topic, partition), 0)
                if stale > end:
                    await self._new_epoch(TopicPartition(topic, partition), stale, end)
                    saved[(topic, partition)] = 0
        applied = [rec for topic, records in logs.items() for rec in records
                   if rec.offset < saved.get((topic, rec.partition), 0)]
        published = await read_to_end(self.bootstrap, topics.reports)
        self.triage.restore(applied, published)
        await self._project_published(published)

    async def _project_published(self, published: list[ConsumerRecord[bytes, bytes]]
                                 ) -> None:
        """Report versions on the reports topic that DuckDB lacks: published just before a
        crash, before their batch's transaction. The replayed batch may batch differently
        and not compute them again, so they are written from the topic's own bytes."""
        held = await asyncio.to_thread(self.sink.report_keys)
        versions, evidence = [], []
        for rec in published:
            try:
                report = orjson.loads(rec.value or b"")
                key = (report["incident"]["id"], report["report_hash"])
                if key in held:
                    continue
                held.add(key)
                version, rows = report_rows(report, self.triage.provenance_of(report))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("report at %s:%s unreadable: %s", rec.partition, rec.offset, exc)
                continue
            versions.append(version)
            evidence += rows
        if versions:
            log.info("%d report versions from the reports topic written to DuckDB",
                     len(versions))
            await asyncio.to_thread(self.sink.write, reports=versions, evidence=evidence)

    async def _check_resets(self, tps: list[TopicPartition],
                            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                            ) -> None:
        """A partition whose log now ends (or restarted) below our position: new epoch."""
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

    async def _read_windows(
            self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[tuple[int, int], tuple[int, list[Any], list[Any]]]:
        """The window records' rows by (partition, offset); a record that is not one the
        detector wrote is dead-lettered instead (any bytes may reach any topic)."""
        parsed = {}
        for tp, records in batch.items():
            if tp.topic != self.settings.topics.windows:
                continue
            for rec in records:
                try:
                    value = orjson.loads(rec.value or b"")
                    rows = (_bounded_int(value["bucket_ms"]),
                            [_typed(FamilyWindow, row) for row in value["families"]],
                            [_typed(StepWindow, row) for row in value["steps"]])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    await self._dead_letter(rec, f"not a window record: {exc}")
                    continue
                parsed[(rec.partition, rec.offset)] = rows
        return parsed

    async def _dead_letter(self, rec: ConsumerRecord[bytes, bytes], reason: str) -> None:
        assert self.dead_letters is not None
        self.metrics.dead_letters += 1
        await self.dead_letters.send(of_record(rec, reason, None,
                                               self.settings.dlq_max_value_bytes))

    async def _publish_reports(
            self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> list[dict[str, Any]]:
        """Fold the batch's lifecycle events and signals; publish changed reports and wait
        for the broker before DuckDB records the batch as done."""
        topics = self.settings.topics
        assert self.producer is not None
        records = [rec for tp, recs in sorted(batch.items(), key=lambda kv: (
            kv[0].topic != topics.incidents, kv[0].topic, kv[0].partition))
            if tp.topic in (topics.incidents, topics.signals, topics.spans) for rec in recs]
        reports = self.triage.feed(records)
        self.metrics.signals_dropped = self.triage.triage.signals_dropped
        for rec, reason in self.triage.take_rejects():
            await self._dead_letter(rec, reason)
        futures = []
        for report in reports:
            key = (report["incident"]["id"], report["report_hash"])
            if key in self.triage.published:
                continue
            self.triage.published.add(key)
            futures.append(await self.producer.send(
                topics.reports, canonical_json(report), key=key[0].encode(),
                headers=[("tocsin.report_hash", key[1].encode())]))
            self.metrics.reports_published += 1
        for fut in futures:
            await fut
        return reports

    def _write(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
               reports: list[dict[str, Any]],
               windows: dict[tuple[int, int], tuple[int, list[Any], list[Any]]]) -> None:
        topics = self.settings.topics
        events: list[dict[str, Any]] = []
        families: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        letters: list[dict[str, Any]] = []
        signal_ids: set[str] = set()
        positions: dict[tuple[str, int], int] = {}
        for tp, records in batch.items():
            for rec in records:
                if tp.topic == topics.signals:
                    try:
                        signal_ids.add(decode_signal(rec.value or b"").signal_id)
                    except SchemaError:
                        continue
                elif tp.topic == topics.incidents:
                    try:
                        events.append(decode_incident(
                            rec.value or b"", self.registry.lookup if self.registry else None))
                    except SchemaError as exc:
                        log.error("undecodable incident event at %s:%s: %s",
                                  tp, rec.offset, exc)
                elif tp.topic == topics.spans:
                    continue  # folded by the triage (trace assembly); no rows of its own
                elif tp.topic == topics.windows:
                    if (rec.partition, rec.offset) not in windows:
                        continue  # dead-lettered
                    bucket_ms, fams, stps = windows[(rec.partition, rec.offset)]
                    families.extend({**w._asdict(), "bucket_ms": bucket_ms} for w in fams)
                    steps.extend({**w._asdict(), "bucket_ms": bucket_ms} for w in stps)
                else:
                    letters.append(letter_row(rec))
            positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        signals = [signal_row(self.triage.triage.signals[i]) for i in sorted(signal_ids)
                   if i in self.triage.triage.signals]
        versions, evidence = [], []
        for report in reports:
            version, rows = report_rows(report, self.triage.provenance_of(report))
            versions.append(version)
            evidence += rows
        self.sink.write(incident_events=events, family_windows=families, step_windows=steps,
                        dead_letters=letters, signals=signals, reports=versions,
                        evidence=evidence, positions=positions)
        self.metrics.rows_projected += len(events) + len(families) + len(steps) + \
            len(letters) + len(signals) + len(versions) + len(evidence)
