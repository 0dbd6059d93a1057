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
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tocsin.processors.detector import FamilyWindow, StepWindow
from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.kafka_io import _wait_partitions, stop_quietly
from tocsin.streams.metrics import Metrics
from tocsin.streams.registry import SchemaRegistry
from tocsin.streams.settings import Settings

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

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        topics = self.settings.topics
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50,
            max_poll_records=20_000, fetch_max_bytes=self.settings.fetch_max_bytes)
        await self.consumer.start()
        try:
            tps = [TopicPartition(t, p)
                   for t in (topics.incidents, topics.windows, topics.dlq)
                   for p in await _wait_partitions(self.consumer, t, 20.0)]
            self.consumer.assign(tps)
            saved = self.sink.positions()
            for tp in tps:
                offset = saved.get((tp.topic, tp.partition))
                if offset is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=100)
                if batch:
                    await asyncio.to_thread(self._write, batch)
                if not batch:
                    self.caught_up.set()
        finally:
            await stop_quietly(self.consumer)

    def _write(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        topics = self.settings.topics
        events: list[dict[str, Any]] = []
        families: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        letters: list[dict[str, Any]] = []
        positions: dict[tuple[str, int], int] = {}
        for tp, records in batch.items():
            for rec in records:
                if tp.topic == topics.incidents:
                    try:
                        events.append(decode_incident(
                            rec.value or b"", self.registry.lookup if self.registry else None))
                    except SchemaError as exc:
                        log.error("undecodable incident event at %s:%s: %s",
                                  tp, rec.offset, exc)
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
        self.sink.write(incident_events=events, family_windows=families, step_windows=steps,
                        dead_letters=letters, positions=positions)
        self.metrics.rows_projected += len(events) + len(families) + len(steps) + len(letters)
