"""The shape every single-input partitioned stage shares (detection, trace assembly): a
consumer in the stage's group, one pure state per assigned partition, and the
checkpoint-with-position pattern of ADR 0004 — sends acknowledged, then the state and the
next input offset saved as one changelog-table record, then the offset committed
(informative: the checkpoint holds the truth).

Rebalance callbacks run in the group coordinator's task, beside the main loop. An
assignment only prepares runs; the main loop installs them between two fetches, so a
batch fetched before a run's seek never reaches it. A revocation takes the same lock as
the main loop's apply-and-checkpoint step, so a checkpoint never races another one and a
revoked run is never saved after its next owner loaded it.

A checkpoint beyond its partition's end means the log restarted (a broker restarted
empty, a topic recreated): the stage reads the new log from its start as a new epoch,
keeping its state (ADR 0014).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from tocsin.streams.kafka.io import commit_quietly, stage_consumer, stop_quietly
from tocsin.streams.stages.checkpoints import CheckpointStore, checkpoint_due
from tocsin.streams.stages.handoff import HandOff
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass
class StageRun:
    """One partition's position: the next offset to apply, the one last checkpointed, and
    the sends made since (futures of ``producer.send``, awaited before the checkpoint)."""

    next_offset: int
    checkpointed_offset: int
    pending: list[Awaitable[Any]] = field(default_factory=list)


RunT = TypeVar("RunT", bound=StageRun)


class PartitionedStage(ConsumerRebalanceListener, Generic[RunT]):  # type: ignore[misc]
    """Subclasses say what their state is (:meth:`restore_run`, :meth:`state_of`), how a
    batch changes it (:meth:`process`, synchronous) and what goes out before a checkpoint
    (:meth:`before_checkpoint`)."""

    group: str  # the consumer group's suffix: ``<app>-<group>``
    log: logging.Logger
    handoff_metric = "handoff"  # the metrics' name for what :attr:`handoff` spared

    def __init__(self, settings: Settings, bootstrap: str, store: CheckpointStore,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.metrics = metrics
        self.runs: dict[int, RunT] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_checkpoint = time.monotonic()
        self._checkpoint_cost = 0.0  # seconds the last checkpoint took
        self._assigned: dict[int, RunT] = {}
        self._lock = asyncio.Lock()
        # What this process's span intake already decoded for the partitions held here
        # (ADR 0015); its counts go to the metrics as <handoff_metric>_handed_off/_decoded.
        self.handoff: HandOff | None = None

    # ------------------------------------------------------------------ subclass hooks

    @property
    def topic(self) -> str:
        raise NotImplementedError

    def new_producer(self) -> AIOKafkaProducer:
        raise NotImplementedError

    async def before_start(self) -> None:
        """Work before the consumer joins its group (schema registration...)."""

    async def before_assign(self) -> None:
        """Work before assigned partitions are restored."""

    async def after_restore(self) -> None:
        """Work after assigned partitions are restored, before any of them runs."""

    def restore_run(self, saved: tuple[dict[str, Any], int] | None) -> RunT:
        raise NotImplementedError

    def process(self, run: RunT, records: list[Record]) -> None:
        raise NotImplementedError

    def before_checkpoint(self, partition: int, run: RunT) -> None:
        """Sends that belong to this checkpoint (appended to ``run.pending``)."""

    async def before_saves(self) -> None:
        """Once per checkpoint, after the sends of every saved partition are acknowledged
        and before their states are saved."""

    def state_of(self, run: RunT) -> dict[str, Any]:
        raise NotImplementedError

    def installed(self, partition: int) -> None:
        """A partition is held here from now on (restored, about to be read)."""

    def released(self, partition: int) -> None:
        """A partition is no longer held here (revoked, its last checkpoint written)."""

    def checkpointed(self, partition: int, run: RunT) -> None:
        """Metrics after a partition's checkpoint."""

    # ------------------------------------------------------------------ main loop

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        await self.before_start()
        self.producer = self.new_producer()
        self.consumer = stage_consumer(
            self.bootstrap, s.fetch_max_bytes, group=f"{s.app_id}-{self.group}",
            session_timeout_ms=s.session_timeout_ms, max_poll_records=s.max_poll_records,
            max_partition_fetch_bytes=s.fetch_max_bytes)
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=self)
        try:
            while not self._stopping.is_set():
                if self._assigned:
                    self._install()
                batch = await self.consumer.getmany(timeout_ms=100)
                async with self._lock:
                    self._check_resets(batch)
                    for tp, records in batch.items():
                        run = self.runs.get(tp.partition)
                        if run is not None:
                            self.process(run, records)
                    due = checkpoint_due(time.monotonic(), self._last_checkpoint,
                                         self._checkpoint_cost, s.checkpoint_interval_ms / 1000)
                    offsets = await self._checkpoint(sorted(self.runs)) if due else {}
                await self._commit(offsets)
            await self.checkpoint()
        finally:
            await stop_quietly(self.consumer, self.producer)

    # ------------------------------------------------------------------ rebalance

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                self._assigned.pop(tp.partition, None)
            parts = sorted(tp.partition for tp in revoked if tp.partition in self.runs)
            if parts:
                await self._commit(await self._checkpoint(parts))
            for p in parts:
                del self.runs[p]
                if self.handoff is not None:
                    self.handoff.release(p)
                self.released(p)
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        await self.before_assign()
        fresh: dict[int, RunT] = {}
        for tp in sorted(assigned, key=lambda t: t.partition):
            fresh[tp.partition] = self.restore_run(await self.store.load(tp.partition))
            self.consumer.seek(tp, fresh[tp.partition].next_offset)
        await self.after_restore()
        self._assigned.update(fresh)  # the main loop installs them between two fetches
        if not fresh:
            self.ready.set()

    def _install(self) -> None:
        assert self.consumer is not None
        fresh, self._assigned = self._assigned, {}
        for p, run in sorted(fresh.items()):
            self.runs[p] = run
            if self.handoff is not None:
                self.handoff.partitions.add(p)
            self.installed(p)
            self.consumer.seek(TopicPartition(self.topic, p), run.next_offset)
            self.log.info("%s partition %s resumes at offset %s", self.group, p,
                          run.next_offset)
        self.ready.set()

    def _check_resets(self, batch: dict[TopicPartition, list[Record]]) -> None:
        assert self.consumer is not None
        topic = self.topic
        for partition, run in self.runs.items():
            tp = TopicPartition(topic, partition)
            records = batch.get(tp)
            high = self.consumer.highwater(tp)
            if records and records[0].offset < run.next_offset:
                start = records[0].offset  # the client already went back to the start
            elif high is not None and high < run.next_offset:
                start = 0
                self.consumer.seek(tp, 0)
            else:
                continue
            self.metrics.log_resets[f"{topic}:{partition}"] += 1
            self.log.error("RESET LOG: %s partition %s ends at %s, below the checkpointed "
                           "offset %s: reading the new log from offset %s as a new epoch",
                           topic, partition, high, run.next_offset, start)
            run.next_offset = run.checkpointed_offset = start

    # ------------------------------------------------------------------ checkpoint

    async def checkpoint(self) -> None:
        """Every run's checkpoint now (the main loop does this on its interval)."""
        async with self._lock:
            offsets = await self._checkpoint(sorted(self.runs))
        await self._commit(offsets)

    async def _checkpoint(self, parts: list[int]) -> dict[TopicPartition, int]:
        """For each partition with news: its sends acknowledged, then state + next offset
        in one record. The offsets to commit."""
        started = self._last_checkpoint = time.monotonic()
        saved = [p for p in parts if self.runs[p].next_offset != self.runs[p].checkpointed_offset
                 or self.runs[p].pending]
        for p in saved:
            run = self.runs[p]
            self.before_checkpoint(p, run)
            pending, run.pending = run.pending, []
            if pending:
                sent = await asyncio.gather(*pending)
                await asyncio.gather(*sent)
        if saved:
            await self.before_saves()
        for p in saved:
            run = self.runs[p]
            await self.store.save(p, self.state_of(run), run.next_offset)
            run.checkpointed_offset = run.next_offset
            self.checkpointed(p, run)
            if self.handoff is not None:  # records read without decoding, or not
                self.metrics.stages[f"{self.handoff_metric}_handed_off"] = self.handoff.taken
                self.metrics.stages[f"{self.handoff_metric}_decoded"] = self.handoff.missed
        self._checkpoint_cost = time.monotonic() - started
        return {TopicPartition(self.topic, p): self.runs[p].checkpointed_offset for p in parts
                if self.runs[p].checkpointed_offset > 0}

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        await commit_quietly(self.consumer, offsets, self.log)
