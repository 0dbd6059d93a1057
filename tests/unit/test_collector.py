"""The worker's cycle collection on a timer: which collection is due when, with a fake
clock, and the loop that follows it with a fake sleep."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tocsin.streams.worker.collector import (
    FULL,
    YOUNG,
    CollectionSchedule,
    collect_on_schedule,
    stop_automatic_collection,
)


def test_young_every_interval_and_full_every_longer_one() -> None:
    schedule = CollectionSchedule(100.0, young_every_s=5, full_every_s=20)
    due = {t: schedule.due(100.0 + t) for t in range(0, 41)}
    assert [t for t, g in due.items() if g == YOUNG] == [5, 10, 15, 25, 30, 35]
    assert [t for t, g in due.items() if g == FULL] == [20, 40]


def test_a_late_tick_collects_once_not_for_every_interval_missed() -> None:
    schedule = CollectionSchedule(0.0, young_every_s=5, full_every_s=60)
    assert schedule.due(4.9) is None
    assert schedule.due(17.0) == YOUNG  # three intervals late: one collection
    assert schedule.due(21.0) is None  # and the next one 5 s after it
    assert schedule.due(22.0) == YOUNG
    assert schedule.due(61.0) == FULL
    assert schedule.due(65.0) is None  # a full collection is a young one too


@pytest.mark.parametrize(("young", "full"), [(0, 10), (-1, 10), (20, 10)])
def test_nonsense_intervals_are_refused(young: float, full: float) -> None:
    with pytest.raises(ValueError, match="young_every_s"):
        CollectionSchedule(0.0, young, full)


def test_the_loop_collects_what_the_schedule_says_on_each_tick() -> None:
    now = [0.0]
    collected: list[int] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 25:
            raise asyncio.CancelledError

    def collect(generation: int) -> int:
        collected.append(generation)
        return 0

    schedule = CollectionSchedule(0.0, young_every_s=5, full_every_s=20)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(collect_on_schedule(schedule, clock=lambda: now[0], sleep=sleep,
                                        collect=collect, tick_s=1.0))
    assert collected == [YOUNG, YOUNG, YOUNG, FULL]  # at 5, 10, 15 and 20 s


def test_stopping_automatic_collection_freezes_what_exists_and_disables_it() -> None:
    was_enabled = gc.isenabled()
    try:
        stop_automatic_collection()
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
