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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
EARLIEST = -(1 << 62)  # the time of a record without spans (a dead letter): first out


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
