"""The DuckDB projection: incidents, window counts and dead letters, from their topics.

The topics are the source of truth (BRIEF.md invariant 5). This consumer assigns itself
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
from tocsin.streams.kafka_io import _wait_partitions, new_producer, read_to_end, stop_quietly
from tocsin.streams.metrics import Metrics
from tocsin.streams.registry import SchemaRegistry
from tocsin.streams.settings import Settings
from tocsin.streams.triage_io import TriageLoop, decode_signal, report_rows, signal_row

log = logging.getLogger("tocsin.project")


def _header(rec: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for k, v in rec.headers or ():
        if k == name:
            return bytes(v).decode(errors="replace")
    return None


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
        self.registry = SchemaRegistry(settings.schema_registry_url) \
            if settings.schema_registry_url else None
        self.producer: AIOKafkaProducer | None = None
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
        try:
            tps = [TopicPartition(t, p)
                   for t in (topics.incidents, topics.windows, topics.dlq, topics.signals,
                             topics.spans)
                   for p in await _wait_partitions(self.consumer, t, 20.0)]
            self.consumer.assign(tps)
            saved = self.sink.positions()
            await self._restore_triage(saved)
            for tp in tps:
                offset = saved.get((tp.topic, tp.partition))
                if offset is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100)
                if batch:
                    reports = await self._publish_reports(batch)
                    await asyncio.to_thread(self._write, batch, reports)
                if not batch:
                    self.caught_up.set()
        finally:
            await stop_quietly(self.consumer, self.producer)

    async def _restore_triage(self, saved: dict[tuple[str, int], int]) -> None:
        """Rebuild the triage fold from what DuckDB already reflects (ADR 0009)."""
        topics = self.settings.topics
        applied = []
        for topic in (topics.incidents, topics.signals, topics.spans):
            for rec in await read_to_end(self.bootstrap, topic):
                if rec.offset < saved.get((topic, rec.partition), 0):
                    applied.append(rec)
        self.triage.restore(applied, await read_to_end(self.bootstrap, topics.reports))

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
               reports: list[dict[str, Any]]) -> None:
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
                    value = orjson.loads(rec.value or b"{}")
                    bucket_ms = value["bucket_ms"]
                    families.extend({**dict(zip(FamilyWindow._fields, row, strict=True)),
                                     "bucket_ms": bucket_ms} for row in value["families"])
                    steps.extend({**dict(zip(StepWindow._fields, row, strict=True)),
                                  "bucket_ms": bucket_ms} for row in value["steps"])
                else:
                    letters.append({
                        "source_topic": _header(rec, "tocsin.dlq.source_topic"),
                        "source_partition": int(_header(rec, "tocsin.dlq.source_partition")
                                                or -1),
                        "source_offset": int(_header(rec, "tocsin.dlq.source_offset") or -1),
                        "reason": _header(rec, "tocsin.dlq.reason"),
                        "size_bytes": len(rec.value or b""),
                        "dlq_partition": rec.partition, "dlq_offset": rec.offset,
                    })
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
