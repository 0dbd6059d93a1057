"""Following a topic from its beginning in the background, noting each record's arrival
time: what the latency and burst phases both measure against."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tocsin.streams.kafka.io import stop_quietly, wait_partitions

OnRecord = Callable[[ConsumerRecord[bytes, bytes], float], None]


class TopicTail:
    """Calls ``on_record(record, perf_counter at arrival)`` for every record of a topic."""

    def __init__(self, bootstrap: str, topic: str, on_record: OnRecord) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_record = on_record
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=10)
        await self._consumer.start()
        parts = await wait_partitions(self._consumer, self.topic, 20.0)
        tps = [TopicPartition(self.topic, p) for p in parts]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batch.values():
                for rec in records:
                    self.on_record(rec, now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await stop_quietly(self._consumer)
