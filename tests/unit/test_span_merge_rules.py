"""The span merge's rules as pure functions (processors/otlp/merge.py): when an empty
partition holds the merge back, read against a fake clock (no sleeps), and a record's merge
time with its cap."""

from __future__ import annotations

import pytest

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.otlp import OtlpError, decode_batch
from tocsin.processors.otlp.merge import (
    MAX_AHEAD_MS,
    STALL_S,
    PartitionMerge,
    holds_back,
    merge_time,
)

IDLE_MS = 2_000


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_a_caught_up_partition_holds_back_until_it_was_quiet_for_idle_ms() -> None:
    clock = FakeClock()
    heard = clock.now  # its last records came in now; it is at its high watermark
    assert holds_back(clock.now, heard, 10, 10, IDLE_MS)
    clock.advance(1.999)
    assert holds_back(clock.now, heard, 10, 10, IDLE_MS)
    clock.advance(0.001)  # exactly idle_ms quiet: no longer
    assert not holds_back(clock.now, heard, 10, 10, IDLE_MS)
    clock.advance(3_600)
    assert not holds_back(clock.now, heard, 10, 10, IDLE_MS)


@pytest.mark.parametrize("highwater", [None, 11, 1_000])
def test_a_partition_behind_or_unknown_holds_back_until_it_stalls(highwater: int | None
                                                                  ) -> None:
    clock = FakeClock()
    heard = clock.now
    clock.advance(IDLE_MS / 1000 * 3)  # quiet far beyond idle_ms: irrelevant when behind
    assert holds_back(clock.now, heard, 10, highwater, IDLE_MS)
    clock.advance(STALL_S - IDLE_MS / 1000 * 3 - 0.001)
    assert holds_back(clock.now, heard, 10, highwater, IDLE_MS)
    clock.advance(0.001)  # quiet for exactly stall_s: a stalled fetch stops holding back
    assert not holds_back(clock.now, heard, 10, highwater, IDLE_MS)
    assert holds_back(clock.now, heard, 10, highwater, IDLE_MS, stall_s=STALL_S + 1)


def test_never_heard_of_counts_from_the_clock_origin() -> None:
    """The intake's default for a partition it has no time for is 0.0: quiet since the
    clock's origin, so it holds back only if the clock itself is that young."""
    assert not holds_back(FakeClock(100.0).now, 0.0, 0, 0, IDLE_MS)
    assert holds_back(1.5, 0.0, 0, 0, IDLE_MS)
    assert holds_back(9.0, 0.0, 0, 5, IDLE_MS)


def test_the_merge_waits_for_a_quiet_partition_on_the_fake_clock() -> None:
    """A record on partition 0 waits while caught-up partition 1 may still get an earlier
    one; partition 1 then stays quiet and, idle_ms later, the record goes out. A record that
    arrives on partition 1 in time goes first (earlier merge time)."""
    clock = FakeClock()
    heard = {0: clock.now, 1: clock.now}
    ends = {0: 5, 1: 5}  # next offset == high watermark: both caught up

    def rule(partition: int) -> bool:
        return holds_back(clock.now, heard[partition], ends[partition], ends[partition],
                          IDLE_MS)

    merge: PartitionMerge[str] = PartitionMerge([0, 1])
    merge.add(0, 5, 2_000, "late on 0")
    clock.advance(0.5)
    assert merge.release(rule) == []
    merge.add(1, 5, 1_000, "earlier on 1")
    heard[1] = clock.now
    out = merge.release(rule)  # 1 now has a head; 0 has one too
    assert [e.item for e in out] == ["earlier on 1"]
    # Partition 1 is empty again and was heard just now: "late on 0" waits idle_ms.
    merge_items = [e.item for e in merge.release(rule)]
    assert merge_items == []
    clock.advance(IDLE_MS / 1000)
    assert [e.item for e in merge.release(rule)] == ["late on 0"]


def test_merge_time_is_the_latest_span_end_capped_an_hour_past_the_timestamp() -> None:
    decoded = decode_batch(proto(workload(3, (), 1_793_610_000 * 10**9)))
    latest = max(s.end_ms for s in decoded.spans)
    assert merge_time(decoded, latest) == latest
    assert merge_time(decoded, latest + 5) == latest
    assert merge_time(decoded, 0) == latest  # no timestamp: not capped
    assert merge_time(decoded, -1) == latest
    early = latest - MAX_AHEAD_MS - 1
    assert merge_time(decoded, early) == early + MAX_AHEAD_MS
    assert merge_time(decode_batch(b""), latest) is None  # no spans
    assert merge_time(OtlpError("garbage"), latest) is None
