"""One deterministic order for span records read from many partitions (ADR 0011).

The spans of one service arrive on every partition of ``otlp_spans``; the events they
become are republished keyed by service, and the detector decides on each service's events
in the order it reads them (ADR 0002). If that order followed the fetches, the same log
could open an incident at a different error, with a different onset and id, from one run
to the next. So records are merged: each partition in its own log order, and across
partitions the head with the smallest (record time, partition) goes first, but only once
every partition that may still hold an earlier record has a head. Given the same log, the
merged order is the same whatever the fetch sizes and their interleaving (property-tested).

Which empty partition may still hold an earlier record is the caller's knowledge (it has
the fetch high watermarks and the wall clock): ``holds_back(partition)`` answers it. A
partition that is caught up and quiet should stop holding the others back after a short
idle time; only then can timing decide an order, and only for records produced live.
:func:`holds_back` is that rule, with the clock passed in; :func:`merge_time` is a
record's place in the order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tocsin.processors.otlp.decode import Decoded, OtlpError

Item = TypeVar("Item")
EARLIEST = -(1 << 62)  # the time of a record without spans (a dead letter): first out
MAX_AHEAD_MS = 3_600_000  # a record's merge time is at most this far past its timestamp
STALL_S = 10.0  # a partition behind its high watermark that sends nothing for this long


def merge_time(read: Decoded | OtlpError, timestamp_ms: int) -> int | None:
    """A span record's merge time: the latest end among its spans (exporters send spans as
    they end), but never more than :data:`MAX_AHEAD_MS` after the record's own Kafka
    ``timestamp_ms`` (not capped when it is 0 or less: no timestamp), so one span from a
    clock far ahead cannot keep its partition behind every other one; None for a record
    without spans (unreadable, or empty)."""
    if isinstance(read, OtlpError) or not read.spans:
        return None
    latest = max(span.end_ms for span in read.spans)
    if timestamp_ms > 0:
        latest = min(latest, timestamp_ms + MAX_AHEAD_MS)
    return latest


def holds_back(now_s: float, heard_s: float, next_offset: int, highwater: int | None,
               idle_ms: int, stall_s: float = STALL_S) -> bool:
    """Whether an assigned partition with nothing buffered may still hold a record earlier
    than the other partitions' heads (ADR 0011). ``now_s`` and ``heard_s`` (when the
    partition last gave records, was assigned or resumed) are readings of one monotonic
    clock, in seconds; ``next_offset`` is the next offset to fetch and ``highwater`` the
    partition's high watermark as last fetched (None: not known yet).

    Behind its high watermark (or not known): it holds back until it has been quiet for
    ``stall_s`` (a stalled fetch must not stop the merge for ever). Caught up: it holds
    back while it has been quiet for less than ``idle_ms``, so a record produced just now
    on it still goes out in order."""
    quiet_s = now_s - heard_s
    if highwater is None or next_offset < highwater:
        return quiet_s < stall_s
    return quiet_s * 1000 < idle_ms


@dataclass(frozen=True, slots=True)
class Entry(Generic[Item]):
    partition: int
    offset: int
    time_ms: int
    item: Item


class PartitionMerge(Generic[Item]):
    """Buffers per partition; :meth:`release` yields entries in the merged order."""

    def __init__(self, partitions: Iterable[int] = ()) -> None:
        self.buffers: dict[int, deque[Entry[Item]]] = {p: deque() for p in partitions}

    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions to merge; buffers of partitions no longer assigned are dropped
        (their records are read again by whoever owns them now)."""
        wanted = set(partitions)
        self.buffers = {p: self.buffers.get(p) or deque() for p in sorted(wanted)}

    def add(self, partition: int, offset: int, time_ms: int | None, item: Item) -> None:
        self.buffers.setdefault(partition, deque()).append(
            Entry(partition, offset, EARLIEST if time_ms is None else time_ms, item))

    def buffered(self, partition: int) -> int:
        return len(self.buffers.get(partition, ()))

    def release(self, holds_back: Callable[[int], bool]) -> list[Entry[Item]]:
        """Every entry that can go out now, in the merged order."""
        out: list[Entry[Item]] = []
        buffers = self.buffers
        while True:
            head: Entry[Item] | None = None
            for partition, buffer in buffers.items():
                if not buffer:
                    if holds_back(partition):
                        return out
                    continue
                candidate = buffer[0]
                if head is None or (candidate.time_ms, partition) < (head.time_ms,
                                                                      head.partition):
                    head = candidate
            if head is None:
                return out
            out.append(buffers[head.partition].popleft())
