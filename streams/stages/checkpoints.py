"""Checkpoint-with-position: each stage partition's state and the next position of its
inputs, written together as one record of a changelog-backed Faust table (ADR 0004).

Every worker holds every record of the table (a ``GlobalTable``), so whoever is assigned a
partition next resumes from its latest checkpoint. Keys name the stage and the partition
(``events:3``, ``traces:3``, ``triage:3``); the table's name carries the state layout's
version, so a worker never misreads state written under another layout or settings.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import faust
import orjson

MAX_SHARE = 0.025  # of a stage's time spent in checkpoints, at most


def checkpoint_due(now_s: float, started_s: float, cost_s: float, interval_s: float,
                   max_share: float = MAX_SHARE) -> bool:
    """Whether the next checkpoint is due: ``interval_s`` after the last one started
    (``started_s``, a monotonic reading like ``now_s``), and never so soon that
    checkpoints take more than ``max_share`` of the time — the last one took ``cost_s``,
    so a state that takes 100 ms to write is written every 4 s, not every second. The
    restart bound grows with the state then, the throughput stays."""
    return now_s - started_s >= max(interval_s, cost_s / max_share)


class CheckpointStore(Protocol):
    """Durable per-partition state: (snapshot, next input offset), atomically."""

    async def load(self, partition: int) -> tuple[dict[str, Any], int] | None: ...

    async def save(self, partition: int, snapshot: dict[str, Any], next_offset: int
                   ) -> None: ...


class TableCheckpoints:
    """A :class:`CheckpointStore` over a Faust GlobalTable, one key per stage partition,
    the value zlib-compressed JSON."""

    def __init__(self, app: faust.App, table: Any, stage: str = "events") -> None:
        self.app = app
        self.table = table
        self.stage = stage

    async def load(self, partition: int) -> tuple[dict[str, Any], int] | None:
        raw = self.table.get(f"{self.stage}:{partition}")
        if raw is None:
            return None
        value = orjson.loads(zlib.decompress(raw))
        return value["snapshot"], int(value["next_offset"])

    async def save(self, partition: int, snapshot: dict[str, Any], next_offset: int) -> None:
        body = orjson.dumps({"snapshot": snapshot, "next_offset": next_offset})
        self.table[f"{self.stage}:{partition}"] = zlib.compress(body, 1)
        await self.app.producer.flush()
