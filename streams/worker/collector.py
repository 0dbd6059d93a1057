"""The worker's cycle collection: on a timer, not on the allocation counter (ADR 0015).

CPython collects its young generation every N net allocations of container objects. A
worker's hot loops hold what they decoded for a moment (a span record's spans wait in the
intake's merge for the other partitions, a pack's events in detection's), so at every
automatic collection hundreds of thousands of those young, still-live objects are
traversed and promoted, and again at the next generation: 10-15% of the span path's CPU,
measured, for almost no garbage (a full collection after a bench run frees ~200 objects:
the hot paths free what they allocate by reference counting).

So the worker turns automatic collection off once started (after ``gc.freeze()`` of what
lives for the whole run) and collects on a schedule instead: the young generations every
``young_every_s``, everything every ``full_every_s``. Cyclic garbage, rare here, lives at
most that long; a young collection then traverses only what was allocated since the last
one and is still alive, a full one the whole heap (tens of milliseconds per million
objects, every two minutes by default).

The schedule is pure (:class:`CollectionSchedule`, clock readings as arguments); the loop
that follows it (:func:`collect_on_schedule`) takes its clock and its sleep as arguments.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

YOUNG_EVERY_S = 15.0
FULL_EVERY_S = 120.0
TICK_S = 1.0

YOUNG = 1  # gc.collect(1): generations 0 and 1
FULL = 2  # gc.collect(2): every generation


class CollectionSchedule:
    """Which collection is due at a monotonic clock reading: :data:`FULL` every
    ``full_every_s`` seconds, :data:`YOUNG` every ``young_every_s`` in between (a full
    collection counts as a young one too), None otherwise."""

    def __init__(self, now: float, young_every_s: float = YOUNG_EVERY_S,
                 full_every_s: float = FULL_EVERY_S) -> None:
        if not 0 < young_every_s <= full_every_s:
            raise ValueError("need 0 < young_every_s <= full_every_s")
        self.young_every_s = young_every_s
        self.full_every_s = full_every_s
        self._young_at = now
        self._full_at = now

    def due(self, now: float) -> int | None:
        if now - self._full_at >= self.full_every_s:
            self._full_at = self._young_at = now
            return FULL
        if now - self._young_at >= self.young_every_s:
            self._young_at = now
            return YOUNG
        return None


def stop_automatic_collection() -> None:
    """What exists now lives for the whole run: out of the collector's sight; and no
    collection on the allocation counter from here on (:func:`collect_on_schedule`
    collects instead)."""
    gc.collect()
    gc.freeze()
    gc.disable()


async def collect_on_schedule(schedule: CollectionSchedule,
                              clock: Callable[[], float] = time.monotonic,
                              sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                              collect: Callable[[int], int] = gc.collect,
                              tick_s: float = TICK_S) -> None:
    """Forever: every ``tick_s``, the collection ``schedule`` says is due, if any."""
    while True:
        await sleep(tick_s)
        generation = schedule.due(clock())
        if generation is not None:
            collect(generation)
