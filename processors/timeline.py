"""The incident timeline (ADR 0019): the family's numbers bucket by bucket, from a buffer
before the incident's onset to a window after its resolution.

Each point is one detection bucket (``bucket_ms``): the family's ``errors``, its step's
``requests``, the ``error_rate`` (errors / requests; null without requests) and the
``p50_ms`` and ``p95_ms`` of the step's ``duration_ms`` (null without durations).

Durations are counted in a :func:`duration_bin` histogram: 16 linear bins per power of
two, so a quantile read from it is within 1/32 (3.1%) of a value in the same bin. The bin
of a duration is computed from its exact binary exponent and mantissa (``math.frexp``),
never from a logarithm, so every platform bins every value alike. Quantiles are nearest
rank (the smallest value with at least q of the count at or below it), read as the bin's
midpoint.

A timeline keeps at most ``max_points`` points: the first half from its start, the newest
half at its end. When an incident lasts longer, the points in between are left out of the
series (``truncated``, and ``omitted`` says how many) but still counted in the summary, so
the peaks and means are those of the whole incident. Only points whose bucket can no longer
change are left out (the kept end spans more than the detector's lateness horizon).

Everything here is a function of the buckets it is given: no clock, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUB = 16  # linear bins per power of two
ZERO_BIN = -(1 << 30)  # zero, negative and NaN durations
TOP_BIN = 1 << 30  # durations of HUGE_MS or more
HUGE_MS = 1e12
SERIES = ("errors", "requests", "error_rate", "p50_ms", "p95_ms")


def duration_bin(duration_ms: float) -> int:
    """The histogram bin of one duration (the detector inlines this on its hot path)."""
    if 0.0 < duration_ms < HUGE_MS:
        mantissa, exponent = math.frexp(duration_ms)  # mantissa in [0.5, 1)
        return exponent * SUB + int(mantissa * 2 * SUB) - SUB
    return TOP_BIN if duration_ms >= HUGE_MS else ZERO_BIN


def bin_value(b: int) -> float:
    """The midpoint of bin ``b``: the value a quantile falling in it is read as."""
    if b == ZERO_BIN:
        return 0.0
    if b == TOP_BIN:
        return HUGE_MS
    exponent, j = divmod(b, SUB)
    return math.ldexp((SUB + j + 0.5) / (2 * SUB), exponent)


def quantile(hist: Mapping[int, int], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of a histogram, rounded to the microsecond."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return round(bin_value(b), 3)
    raise AssertionError("unreachable: the ranks add up to the total")


def merge_hist(into: dict[int, int], other: Mapping[int, int]) -> None:
    for b, n in other.items():
        into[b] = into.get(b, 0) + n


@dataclass(frozen=True, slots=True)
class TimelineConfig:
    """How much a timeline covers, in event time (ADR 0019)."""

    before_ms: int = 300_000
    after_ms: int = 600_000
    max_points: int = 360


Point = list[Any]  # [errors, requests, p50_ms | None, p95_ms | None]


def _values(index: int, point: Point | None, bucket_ms: int) -> dict[str, Any]:
    errors, requests, p50, p95 = point if point is not None else (0, 0, None, None)
    return {
        "t_ms": index * bucket_ms,
        "errors": errors,
        "requests": requests,
        "error_rate": round(errors / requests, 6) if requests else None,
        "p50_ms": p50,
        "p95_ms": p95,
    }


@dataclass(slots=True)
class Stat:
    """One series' running figures over the points it was given."""

    n: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    high_at_ms: int | None = None

    def add(self, t_ms: int, value: float | None) -> None:
        if value is None:
            return
        self.n += 1
        self.total += value
        if self.low is None or value < self.low:
            self.low = value
        if self.high is None or value > self.high:
            self.high, self.high_at_ms = value, t_ms

    def merged(self, other: Stat) -> Stat:
        out = Stat(self.n + other.n, self.total + other.total, self.low, self.high,
                   self.high_at_ms)
        if other.low is not None and (out.low is None or other.low < out.low):
            out.low = other.low
        if other.high is not None and (
                out.high is None or other.high > out.high or
                (other.high == out.high and (other.high_at_ms or 0) < (out.high_at_ms or 0))):
            out.high, out.high_at_ms = other.high, other.high_at_ms  # the first at the max
        return out

    def to_list(self) -> list[Any]:
        return [self.n, self.total, self.low, self.high, self.high_at_ms]


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(math.fsum(present) / len(present), 6) if present else None


@dataclass(slots=True)
class Timeline:
    """One incident's timeline while it is being drawn: its kept points by bucket index,
    and the running figures of the points left out."""

    first: int  # bucket index of the first point (the buffer before onset)
    onset_ms: int  # what "before" is measured against
    config: TimelineConfig
    bucket_ms: int
    last: int = -1  # the newest bucket index covered so far (first - 1: none)
    end: int | None = None  # the last point's bucket index, once the incident resolved
    resolved_ms: int | None = None
    points: dict[int, Point] = field(default_factory=dict)
    omitted: int = 0
    left_out: dict[str, Stat] = field(default_factory=dict)

    @classmethod
    def start(cls, onset_ms: int, config: TimelineConfig, bucket_ms: int) -> Timeline:
        first = (onset_ms - config.before_ms) // bucket_ms
        return cls(first, onset_ms, config, bucket_ms, last=first - 1)

    # ------------------------------------------------------------------ drawing

    @property
    def head(self) -> int:
        return self.config.max_points // 2

    def _open(self, index: int) -> bool:
        """Whether a bucket's point can still be put: covered, and not left out."""
        if index < self.first or index > self.last:
            return False
        return index < self.first + self.head or \
            index > self.first + self.head - 1 + self.omitted

    def put_errors(self, index: int, errors: int) -> None:
        """The family's (absolute) error count of a bucket."""
        if self._open(index):
            point = self.points.get(index)
            if point is None:
                self.points[index] = [errors, 0, None, None]
            else:
                point[0] = errors

    def put_step(self, index: int, requests: int, durations: Mapping[int, int]) -> None:
        """The step's (absolute) request count and duration histogram of a bucket (the
        histogram changes only with the count: an unchanged count is not read again)."""
        if self._open(index):
            point = self.points.get(index)
            if point is not None and point[1] == requests:
                return
            p50, p95 = quantile(durations, 0.5), quantile(durations, 0.95)
            if point is None:
                self.points[index] = [0, requests, p50, p95]
            else:
                point[1:] = [requests, p50, p95]

    def advance(self, index: int) -> None:
        """Cover the buckets up to ``index`` (never past the end). Put their points, then
        :meth:`settle`."""
        if self.end is not None:
            index = min(index, self.end)
        self.last = max(self.last, index)

    def settle(self) -> None:
        """Over ``max_points``, the points after the kept start that fell out of the kept
        end are left out of the series and summed up (they can no longer change)."""
        drop_from = self.first + self.head + self.omitted
        drop_to = self.last - (self.config.max_points - self.head)  # inclusive
        for i in range(drop_from, drop_to + 1):
            values = _values(i, self.points.pop(i, None), self.bucket_ms)
            for name in SERIES:
                self.left_out.setdefault(name, Stat()).add(values["t_ms"], values[name])
            self.omitted += 1

    def resolve(self, resolved_ms: int) -> None:
        self.resolved_ms = resolved_ms
        b = self.bucket_ms
        self.end = max(self.last, resolved_ms // b, (resolved_ms + self.config.after_ms - 1) // b)

    def reopen(self) -> None:
        self.resolved_ms = None
        self.end = None

    @property
    def due_ms(self) -> int | None:
        """When the last point's bucket is over: the timeline is complete."""
        return None if self.end is None else (self.end + 1) * self.bucket_ms

    # ------------------------------------------------------------------ reading

    def view(self, complete: bool = False) -> dict[str, Any]:
        """The timeline as it goes on the wire and into the report."""
        b = self.bucket_ms
        self.settle()
        head_end = min(self.first + self.head, self.last + 1)
        tail_start = max(head_end, self.first + self.head + self.omitted)
        kept = [*range(self.first, head_end), *range(tail_start, self.last + 1)]
        points = [_values(i, self.points.get(i), b) for i in kept]
        return {
            "bucket_ms": b,
            "from_ms": self.first * b,
            "to_ms": (self.last + 1) * b,
            "onset_ms": self.onset_ms,
            "resolved_ms": self.resolved_ms,
            "complete": complete,
            "truncated": self.omitted > 0,
            "omitted": self.omitted,
            "points": points,
            "summary": self._summary(points),
        }

    def _summary(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        b = self.bucket_ms
        before = [p for p in points if p["t_ms"] + b <= self.onset_ms]
        resolved = self.resolved_ms
        after = [] if resolved is None else [p for p in points if p["t_ms"] >= resolved]
        if not after:  # open, or just resolved: the latest stretch as long as the buffer
            after = points[-max(1, len(before)):]
        out = {}
        for name in SERIES:
            stat = Stat()
            for p in points:
                stat.add(p["t_ms"], p[name])
            stat = stat.merged(self.left_out.get(name, Stat()))
            start = _mean(p[name] for p in before)
            end = _mean(p[name] for p in after)
            out[name] = {
                "min": None if stat.low is None else float(stat.low),
                "max": None if stat.high is None else float(stat.high),
                "max_at_ms": stat.high_at_ms,
                "mean": round(stat.total / stat.n, 6) if stat.n else None,
                "start": start,
                "end": end,
                "change": None if start is None or end is None else round(end - start, 6),
            }
        return out

    # ------------------------------------------------------------------ state

    def to_list(self) -> list[Any]:
        return [self.first, self.onset_ms, self.last, self.end, self.resolved_ms,
                sorted([i, *p] for i, p in self.points.items()), self.omitted,
                sorted([k, *s.to_list()] for k, s in self.left_out.items())]

    @classmethod
    def from_list(cls, raw: list[Any], config: TimelineConfig, bucket_ms: int) -> Timeline:
        first, onset_ms, last, end, resolved_ms, points, omitted, left_out = raw
        return cls(first, onset_ms, config, bucket_ms, last, end, resolved_ms,
                   {int(i): list(p) for i, *p in points}, omitted,
                   {k: Stat(*s) for k, *s in left_out})
