"""The span intake's read positions across a rebalance, without a broker (a fake
consumer): a partition assigned with records already fetched is not a log reset; a
partition whose records go back below the read position is one (ADR 0014)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from tocsin.streams.stages.spans import SpanIntake
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings


class FakeConsumer:
    def __init__(self, tp: TopicPartition, position: int, high: int) -> None:
        self.tp, self._position, self.high = tp, position, high
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def position(self, tp: TopicPartition) -> int:
        return self._position

    def highwater(self, tp: TopicPartition) -> int:
        return self.high

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def records(tp: TopicPartition, first: int, count: int) -> list[Any]:
    return [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, b"x", None, 0, 1, [])
            for o in range(first, first + count)]


def intake_with(consumer: FakeConsumer) -> SpanIntake:
    intake = SpanIntake(Settings(), "localhost:0", Metrics())
    intake.consumer = consumer  # type: ignore[assignment]
    return intake


def test_records_fetched_with_an_assignment_are_not_a_log_reset() -> None:
    tp = TopicPartition(Settings().topics.spans, 5)
    # The batch brought offsets 0-322 of the newly assigned partition: the consumer's
    # position is already past them.
    consumer = FakeConsumer(tp, position=323, high=323)
    intake = intake_with(consumer)
    intake.assigned([tp])
    batch = {tp: records(tp, 0, 323)}
    asyncio.run(intake._track_assignment(batch))
    intake._check_resets(batch)
    assert dict(intake.metrics.log_resets) == {}
    assert intake._next[5] == 0 and consumer.seeks == []


def test_a_partition_assigned_without_records_reads_from_the_consumers_position() -> None:
    tp = TopicPartition(Settings().topics.spans, 2)
    intake = intake_with(FakeConsumer(tp, position=40, high=90))
    intake.assigned([tp])
    asyncio.run(intake._track_assignment({}))
    assert intake._next[2] == 40


def test_records_below_the_read_position_are_a_log_reset() -> None:
    tp = TopicPartition(Settings().topics.spans, 1)
    intake = intake_with(FakeConsumer(tp, position=500, high=500))
    intake.assigned([tp])
    asyncio.run(intake._track_assignment({}))
    batch = {tp: records(tp, 0, 10)}  # the log starts again below 500
    asyncio.run(intake._track_assignment(batch))
    intake._check_resets(batch)
    assert dict(intake.metrics.log_resets) == {f"{tp.topic}:1": 1}
    assert intake._next[1] == 0
