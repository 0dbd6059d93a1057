"""The detection path: wide events in, lifecycle events and window counts out.

A raw aiokafka consumer (one per worker, in the ``{app_id}-detect`` group) reads the events
topic in large batches; each record is decoded once and fed to the partition's pure
:class:`PartitionDetector`. Lifecycle events go out as soon as they happen. Every
``checkpoint_interval_ms`` the changed window counts are published, all sends are awaited,
and then the partition's detector state is written *together with* the input offset it
reflects, as one record of a changelog-backed Faust table (ADR 0004). A worker killed at
any instant resumes from its last checkpoint and replays; re-derived lifecycle events
whose ``(incident_id, seq)`` is already on the incidents topic are not sent twice.

Faust's per-record stream machinery costs ~180 µs a record on this machine (measured);
this loop costs a few µs, so Faust keeps the state (table, changelog, recovery) and the
HTTP surface, and the hot path stays a plain loop (ADR 0005).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import FamilyWindow, StepWindow, VersionChanged
from tocsin.processors.feed import deploy_signal
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.source_merge import SourceMerge
from tocsin.schemas.codec import (
    INCIDENT_EVENT,
    SchemaError,
    avro_schema,
    decode_incident,
    encode_incident,
)
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.io import read_to_end
from tocsin.streams.kafka.registry import confluent_frame
from tocsin.streams.stages.checkpoints import CheckpointStore
from tocsin.streams.stages.detect_loop import (
    DetectRecords,
    PartitionRun,
    deploy_record,
    event_decoders,
)
from tocsin.streams.stages.partitioned import PartitionedStage
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, rules_of

log = logging.getLogger("tocsin.detect")


WINDOW_ROWS_PER_RECORD = 5_000


def window_records(partition: int, fams: list[FamilyWindow], steps: list[StepWindow],
                   bucket_ms: int) -> list[tuple[bytes, bytes]]:
    """The changed bucket counts of one checkpoint, as absolute values, packed
    ``WINDOW_ROWS_PER_RECORD`` rows to a record (one record per row cost more than the
    detection itself). Keyed by input partition, so a partition's batches stay in order;
    a later batch's value for a bucket supersedes an earlier one's."""
    key = str(partition).encode()
    out = []
    for i in range(0, max(len(fams), len(steps)), WINDOW_ROWS_PER_RECORD):
        out.append((key, orjson.dumps({
            "v": 1, "bucket_ms": bucket_ms,
            "families": [tuple(w) for w in fams[i:i + WINDOW_ROWS_PER_RECORD]],
            "steps": [tuple(w) for w in steps[i:i + WINDOW_ROWS_PER_RECORD]]})))
    return out


class Detection(DetectRecords, PartitionedStage[PartitionRun]):
    """Owns the events consumer, the detectors of its partitions and their checkpoints."""

    group = "detect"
    handoff_metric = "span_events"  # span event records this process's intake decoded
    log = log

    def __init__(self, settings: Settings, bootstrap: str, store: CheckpointStore,
                 metrics: Metrics, on_event: Callable[[IncidentEvent], None] | None = None
                 ) -> None:
        super().__init__(settings, bootstrap, store, metrics)
        self.on_event = on_event
        # TOCSIN_EVENT_MAPPING (ADR 0013): JSON records are read through the mapping;
        # the span intake's translations are wide_event.v1 already.
        self.decode, self.decode_native, self.registry = event_decoders(settings)
        self.rules = rules_of(settings)  # ADR 0022
        self._incident_schema_id: int | None = None
        self.emitted: set[str] = set()
        # The incidents topic's ends at the last checkpoint: identities emitted before it
        # are never re-derived (replay starts after it), so a restore reads from there on.
        self._incident_ends: dict[int, int] = {}
        self._restored_from: dict[int, int] | None = None
        self.dead_letters: DeadLetterSender | None = None

    def held(self) -> int:
        """Span events held by the merges, waiting for their sources' progress."""
        return sum(len(run.merge) for run in self.runs.values())

    # ------------------------------------------------------------------ stage hooks

    @property
    def topic(self) -> str:
        return self.settings.topics.events

    async def before_start(self) -> None:
        s = self.settings
        if self.registry is not None and s.incident_encoding == "avro":
            self._incident_schema_id = await asyncio.to_thread(
                self.registry.register, f"{s.topics.incidents}-value",
                avro_schema(INCIDENT_EVENT))

    def new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=2,
            max_request_size=max(s.max_record_bytes * 2, 1 << 20), enable_idempotence=False)
        self.dead_letters = DeadLetterSender(producer, s.topics.dlq)
        return producer

    async def before_assign(self) -> None:
        self._restored_from = None  # gathered by restore_run from the checkpoints

    async def after_restore(self) -> None:
        """The lifecycle identities emitted since the oldest restored checkpoint, read
        back before any run starts, so a replay sends none of them twice."""
        await self._load_emitted(self._restored_from or {})

    def restore_run(self, saved: tuple[dict[str, Any], int] | None) -> PartitionRun:
        detector = self.settings.detector
        if saved is None:
            self._restored_from = {}  # no checkpoint: every identity on the topic
            return PartitionRun(0, 0, detector=PartitionDetector(detector, self.rules))
        snap, offset = saved
        ends = {int(k): int(v) for k, v in snap.get("incident_ends", {}).items()}
        if not ends:
            self._restored_from = {}
        elif self._restored_from is None:
            self._restored_from = ends
        elif self._restored_from:
            self._restored_from = {k: min(v, ends.get(k, 0))
                                   for k, v in self._restored_from.items()}
        if "merge" in snap:
            # Held items are lists of [event, source, offset, index]; a checkpoint written
            # before packs held one such list per item.
            for h in snap["merge"]["held"]:
                if h[3] and isinstance(h[3][0], dict):
                    h[3] = [h[3]]
        merge = SourceMerge.restore(snap["merge"]) if "merge" in snap else SourceMerge()
        return PartitionRun(offset, offset,
                            detector=PartitionDetector.restore(detector, snap, self.rules),
                            merge=merge)

    def before_checkpoint(self, partition: int, run: PartitionRun) -> None:
        """The changed window counts go out with the checkpoint."""
        assert self.producer is not None
        run.detector.evict_idle()
        fams, steps = run.detector.drain_windows()
        for key, value in window_records(partition, fams, steps,
                                         self.settings.detector.bucket_ms):
            run.pending.append(asyncio.ensure_future(
                self.producer.send(self.settings.topics.windows, value, key=key)))

    async def before_saves(self) -> None:
        assert self.consumer is not None
        topic = self.settings.topics.incidents
        parts = self.consumer.partitions_for_topic(topic) or set()
        if not parts:
            return
        try:
            ends = await self.consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        except Exception as exc:  # noqa: BLE001 - the previous ends stay a safe start
            log.warning("incidents topic ends unknown at checkpoint: %s", exc)
            return
        self._incident_ends = {tp.partition: end for tp, end in ends.items()}

    def state_of(self, run: PartitionRun) -> dict[str, Any]:
        snap = run.detector.snapshot()
        snap["merge"] = run.merge.snapshot()
        snap["incident_ends"] = {str(k): v for k, v in sorted(self._incident_ends.items())}
        return snap

    def checkpointed(self, partition: int, run: PartitionRun) -> None:
        self.metrics.checkpoints += 1
        self.metrics.counters[partition] = run.detector.counters.as_dict()

    async def _load_emitted(self, starts: dict[int, int]) -> None:
        """Identities on the incidents topic from ``starts`` (partition -> offset; the
        whole topic for partitions not named): a replay must not send them again."""
        records = await read_to_end(self.bootstrap, self.settings.topics.incidents,
                                    starts=starts)
        for rec in records:
            try:
                value = decode_incident(rec.value or b"",
                                        self.registry.lookup if self.registry else None)
                if value["kind"] != "updated":  # triage's news, not a change of ours
                    self.emitted.add(f"{value['incident_id']}:{value['seq']}")
            except (SchemaError, KeyError):
                continue

    def _emit(self, run: PartitionRun, change: IncidentEvent) -> None:
        assert self.producer is not None
        self.metrics.lifecycle[change.kind] += 1
        if change.event_id in self.emitted:
            self.metrics.duplicates_suppressed += 1
            return
        self.emitted.add(change.event_id)
        if self._incident_schema_id is not None:
            value = confluent_frame(self._incident_schema_id,
                                    avro_schema(INCIDENT_EVENT).encode_body(change.to_dict()))
        else:
            value = encode_incident(change.to_dict(), self.settings.incident_encoding)
        run.pending.append(asyncio.ensure_future(self.producer.send(
            self.settings.topics.incidents, value, key=change.incident_id.encode(),
            headers=[("tocsin.event_id", change.event_id.encode()),
                     ("tocsin.kind", change.kind.encode())])))
        if self.on_event is not None:
            self.on_event(change)

    def _register_deploy(self, run: PartitionRun, changed: VersionChanged) -> None:
        """A version change on the events registers a deploy signal (no CI needed)."""
        assert self.producer is not None
        signal = deploy_signal(changed)
        self.metrics.deploys_registered += 1
        value, headers = deploy_record(signal)
        run.pending.append(asyncio.ensure_future(self.producer.send(
            self.settings.topics.signals, value, key=changed.service.encode(),
            headers=headers)))

    def _dead_letter(self, run: PartitionRun, rec: ConsumerRecord[bytes, bytes], reason: str,
                     field_name: str | None = None) -> None:
        assert self.dead_letters is not None
        self.metrics.dead_letters += 1
        run.pending.append(asyncio.ensure_future(self.dead_letters.send(of_record(
            rec, reason, field_name, self.settings.dlq_max_value_bytes))))
