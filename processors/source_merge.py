"""The least-mark merge: one order for records that reach a partition from several
upstream sources, whatever the timing of their writers (ADR 0015).

A *source* is an upstream partition (never a worker), so the set of sources depends on
partition counts, not on how many processes write. Each source writes its records in its
own order and *marks* its progress: "every later record of mine is at or after time t".
Released records go out in (time, source, sequence) order, a function of what the
sources wrote, not of how their writes interleaved: a record at t of source X goes once
no other live source can still write one that sorts before it (its mark is past t, or
at t with a name after X's); X's own later records sort after it by their sequence.

The sources are known up front (:meth:`SourceMerge.expect`: every partition of the
upstream topic): one that has said nothing yet holds everything back, as it may still
write the earliest record. A source that says it is *idle* (caught up and quiet upstream)
holds nothing back until it writes again, and one whose mark lags the newest by more than
``grace_ms`` of event time stops holding the others back (a stalled writer must not stop
the partition for ever). Those two rules are the residual timing dependences: they decide
only for sources that have stopped.

Pure: no clock, no I/O. The state (held records, marks) has a JSON-able snapshot.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

GRACE_MS = 5 * 60_000  # a source this far behind the newest mark no longer holds back


def least_live_mark(marks: dict[str, int], grace_ms: int = GRACE_MS) -> int | None:
    """The event time every source still sending has surely reached: the least of the
    marks within ``grace_ms`` of the newest; None before any mark."""
    if not marks:
        return None
    newest = max(marks.values())
    return min(m for m in marks.values() if m >= newest - grace_ms)


@dataclass
class SourceMerge:
    """Held records of several sources, released in (time, source, sequence) order once
    the least live mark has passed them. ``item`` must be JSON-able for :meth:`snapshot`."""

    grace_ms: int = GRACE_MS
    marks: dict[str, int] = field(default_factory=dict)
    idle: set[str] = field(default_factory=set)
    expected: set[str] = field(default_factory=set)
    _held: list[tuple[int, str, int, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, source: str, time_ms: int, seq: int, item: Any) -> None:
        """A record of ``source`` at ``time_ms``; ``seq`` orders a source's records of
        the same time (its position). A record also marks its source."""
        heapq.heappush(self._held, (time_ms, source, seq, item))
        self.mark(source, time_ms)

    def mark(self, source: str, time_ms: int) -> None:
        """``source`` has written everything before ``time_ms``; it is live again."""
        self.idle.discard(source)
        if time_ms > self.marks.get(source, -(1 << 62)):
            self.marks[source] = time_ms

    def expect(self, sources: set[str]) -> None:
        """The sources there are (more may still appear by writing)."""
        self.expected |= sources

    def set_idle(self, source: str) -> None:
        """``source`` is caught up and quiet upstream: it holds nothing back until it
        writes again."""
        self.idle.add(source)

    def live_marks(self) -> dict[str, int] | None:
        """The marks of the sources that hold records back; None: nothing may go yet
        (an expected source has said nothing)."""
        if any(s not in self.marks and s not in self.idle for s in self.expected):
            return None
        live = {s: m for s, m in self.marks.items() if s not in self.idle}
        if not live:
            return live
        newest = max(live.values())
        return {s: m for s, m in live.items() if m >= newest - self.grace_ms}

    def release(self) -> list[Any]:
        """The held items no live source can still precede, in order."""
        live = self.live_marks()
        out: list[Any] = []
        if live is None:
            return out
        lowest = min(live.values(), default=1 << 62)
        held = self._held
        while held:
            t, source, _, item = held[0]
            if t >= lowest and any(m < t or (m == t and y < source)
                                   for y, m in live.items() if y != source):
                break
            heapq.heappop(held)
            out.append(item)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"marks": dict(sorted(self.marks.items())), "idle": sorted(self.idle),
                "expected": sorted(self.expected),
                "held": [list(h) for h in sorted(self._held)], "grace_ms": self.grace_ms}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> SourceMerge:
        merge = cls(int(snap["grace_ms"]), {str(k): int(v) for k, v in snap["marks"].items()},
                    set(snap["idle"]), set(snap["expected"]))
        merge._held = [(int(t), str(s), int(q), item) for t, s, q, item in snap["held"]]
        heapq.heapify(merge._held)
        return merge
