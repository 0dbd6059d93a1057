"""The least-mark merge releases the same order for any interleaving of its sources'
writes, with any release points and across snapshot/restore; idle and stalled sources
stop holding the others back."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.processors.source_merge import SourceMerge, progress_watermark

Write = tuple[str, int, int]  # source, time, seq


def sources_strategy() -> st.SearchStrategy[dict[str, list[int]]]:
    """Up to four sources, each a non-decreasing run of event times."""
    times = st.lists(st.integers(0, 50), max_size=12).map(sorted)
    return st.dictionaries(st.sampled_from(["s0", "s1", "s2", "s3"]), times, min_size=1)


def interleave(sources: dict[str, list[int]], seed: int) -> list[Write]:
    """The sources' writes, each source in its own order, interleaved by ``seed``."""
    queues = {s: [(s, t, i) for i, t in enumerate(ts)] for s, ts in sources.items()}
    rng = random.Random(seed)
    out: list[Write] = []
    while any(queues.values()):
        s = rng.choice(sorted(k for k, q in queues.items() if q))
        out.append(queues[s].pop(0))
    return out


def run(writes: list[Write], sources: list[str], seed: int) -> list[Write]:
    """Feed the writes, releasing (and sometimes snapshotting) at random points, then
    mark every source idle and release the rest."""
    rng = random.Random(seed)
    merge = SourceMerge()
    merge.expect(set(sources))
    out: list[Write] = []
    for source, t, seq in writes:
        merge.add(source, t, seq, [source, t, seq])
        if rng.random() < 0.3:
            out += [tuple(x) for x in merge.release()]  # type: ignore[misc]
        if rng.random() < 0.2:
            merge = SourceMerge.restore(merge.snapshot())
    for source in sources:
        merge.set_idle(source)
    out += [tuple(x) for x in merge.release()]  # type: ignore[misc]
    assert len(merge) == 0
    return out


@settings(max_examples=300, deadline=None)
@given(sources_strategy(), st.integers(0, 10**6), st.integers(0, 10**6),
       st.integers(0, 10**6), st.integers(0, 10**6))
def test_any_interleaving_and_release_points_give_one_order(
        sources: dict[str, list[int]], a: int, b: int, c: int, d: int) -> None:
    names = sorted(sources)
    one = run(interleave(sources, a), names, b)
    other = run(interleave(sources, c), names, d)
    expected = sorted((s, t, i) for s, ts in sources.items() for i, t in enumerate(ts))
    assert one == other == sorted(expected, key=lambda w: (w[1], w[0], w[2]))


def test_a_record_waits_for_every_live_source_to_pass_its_time() -> None:
    merge = SourceMerge()
    merge.add("s1", 100, 0, "a")
    merge.mark("s0", 50)
    assert merge.release() == []  # s0 may still write something at 50..100
    merge.mark("s0", 100)
    assert merge.release() == []  # s0 may still write at 100, sorting before s1's
    merge.mark("s0", 101)
    assert merge.release() == ["a"]
    merge.add("s0", 90, 1, "late")  # behind its own mark: it takes the mark's time
    assert merge.release() == []  # s1 (at 100) may still write before 101
    merge.mark("s1", 102)
    assert merge.release() == ["late"]


def test_an_idle_source_holds_nothing_back_until_it_writes_again() -> None:
    merge = SourceMerge()
    merge.mark("s1", 10)
    merge.add("s0", 100, 0, "a")
    merge.set_idle("s1")
    assert merge.release() == ["a"]  # s0's own later records sort after it
    merge.add("s1", 120, 0, "b")  # live again: s0 (at 100) now holds b back
    assert merge.release() == []
    merge.add("s0", 130, 1, "c")
    assert merge.release() == ["b"]


def test_a_slow_source_holds_back_until_the_held_records_outgrow_the_cap() -> None:
    merge = SourceMerge(max_held=2)
    merge.mark("slow", 0)
    merge.add("fast", 500, 0, "a")
    merge.add("fast", 10**9, 1, "b")  # far ahead in event time: still held
    assert merge.release() == []
    merge.add("fast", 2 * 10**9, 2, "c")
    assert merge.release() == ["a"] and merge.forced == 1  # memory, not time, decides
    merge.mark("slow", 3 * 10**9)
    assert merge.release() == ["b", "c"]


def test_an_expected_source_that_said_nothing_holds_everything_back() -> None:
    merge = SourceMerge()
    merge.expect({"s0", "s1"})
    merge.add("s0", 100, 0, "a")
    merge.mark("s0", 200)
    assert merge.release() == []
    merge.set_idle("s1")  # caught up upstream with nothing to write
    assert merge.release() == ["a"]


def test_nothing_is_released_before_any_mark() -> None:
    merge = SourceMerge()
    merge.expect({"s0"})
    assert merge.release() == [] and merge.live_marks() is None


def test_the_progress_watermark() -> None:
    assert progress_watermark({}, set(), set()) is None
    # Sources not named yet: records of one source only, maybe; another may be behind it
    assert progress_watermark({"a": 5, "b": 7}, set(), set()) is None
    ab = {"a", "b"}
    assert progress_watermark({"a": 5, "b": 7}, set(), ab) == 5
    assert progress_watermark({"a": 5, "b": 7}, {"a"}, ab) == 7
    assert progress_watermark({"a": 5, "b": 7}, {"a", "b"}, ab) == 7
    assert progress_watermark({"a": 5}, set(), {"a", "c"}) is None
    assert progress_watermark({"a": 5}, {"c"}, {"a", "c"}) == 5
