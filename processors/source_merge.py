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
holds nothing back until it writes again. A source that is merely slow (its writer was
killed and its partition is being reassigned) holds the others back, however far they
run ahead in event time: releasing past it would make the order depend on how long the
reassignment took. What bounds that wait is memory: past ``max_held`` held records the
oldest go out anyway, counted in ``forced`` — the one residual timing dependence besides
the idle rule, and both decide only for sources that have stopped.

Pure: no clock, no I/O. The state (held records, marks) has a JSON-able snapshot.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

MAX_HELD = 500_000  # records held for a slow source before the oldest go out anyway


def progress_watermark(marks: dict[str, int], idle: set[str], expected: set[str]
                       ) -> int | None:
    """The event time every source has surely passed: the least mark of the sources that
    are not idle (the newest mark when all are idle); None before the sources are named
    (``expected`` empty: the marks heard so far may come from some sources only, and a
    watermark taken from them would make the others' earlier records late), while an
    expected source has said nothing, or before any mark."""
    if not expected or any(s not in marks and s not in idle for s in expected):
        return None
    live = [m for s, m in marks.items() if s not in idle]
    if live:
        return min(live)
    return max(marks.values()) if marks else None


@dataclass
class SourceMerge:
    """Held records of several sources, released in (time, source, sequence) order once
    no live source can precede them. ``item`` must be JSON-able for :meth:`snapshot`."""

    max_held: int = MAX_HELD
    marks: dict[str, int] = field(default_factory=dict)
    idle: set[str] = field(default_factory=set)
    expected: set[str] = field(default_factory=set)
    forced: int = 0  # records released past a slow source (over max_held)
    _held: list[tuple[int, str, int, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, source: str, time_ms: int, seq: int, item: Any) -> None:
        """A record of ``source`` at ``time_ms``; ``seq`` orders a source's records (its
        position: unique per source). A record behind its source's mark takes the mark's
        time, so each source is in order; the record marks its source too."""
        time_ms = max(time_ms, self.marks.get(source, time_ms))
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
        return {s: m for s, m in self.marks.items() if s not in self.idle}

    def release(self) -> list[Any]:
        """The held items no live source can still precede, in order (and the oldest
        beyond ``max_held``)."""
        live = self.live_marks()
        held = self._held
        out: list[Any] = []
        if live is not None:
            lowest = min(live.values(), default=1 << 62)
            while held:
                t, source, _, item = held[0]
                if t >= lowest and any(m < t or (m == t and y < source)
                                       for y, m in live.items() if y != source):
                    break
                heapq.heappop(held)
                out.append(item)
        while len(held) > self.max_held:
            out.append(heapq.heappop(held)[3])
            self.forced += 1
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"marks": dict(sorted(self.marks.items())), "idle": sorted(self.idle),
                "expected": sorted(self.expected), "forced": self.forced,
                "held": [list(h) for h in sorted(self._held)]}

    @classmethod
    def restore(cls, snap: dict[str, Any], max_held: int = MAX_HELD) -> SourceMerge:
        merge = cls(max_held, {str(k): int(v) for k, v in snap["marks"].items()},
                    set(snap["idle"]), set(snap["expected"]), int(snap["forced"]))
        merge._held = [(int(t), str(s), int(q), item) for t, s, q, item in snap["held"]]
        heapq.heapify(merge._held)
        return merge
