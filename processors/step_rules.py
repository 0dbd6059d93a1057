"""The per-step detections of a rules file (ADR 0022): the error rate and the latency
quantile of one (env, service, step) over a window of the detector's step cells.

A step's cells are the detector's ``steps[key]``: ``[requests, errors, generation, hist]``
by bucket index, ``hist`` a :func:`~tocsin.processors.timeline.duration_bin` histogram of
``duration_ms``. As for the spike rule (ADR 0002, :mod:`tocsin.processors.windows`), the
*window* at bucket ``index`` is the ``width`` buckets ending at ``index`` inclusive, and
the *baseline* is the median over the ``baseline_windows`` windows of the same width right
before it, back to back. A bucket absent from the cells counted nothing. A count has a
value in every window (0 when empty); a rate or a quantile has none in a window without
requests or durations, so such a prior window is left out of the median, and with none
left the baseline is None.

**Error rate** (``service:step:ERROR_RATE``): ``rate = errors / requests`` over the window.

    qualifies:  requests >= min_requests  and  rate >= threshold

At least the threshold, as MIN_COUNT is "at least" (so ``threshold = 1`` can fire: every
request failed). The rate is compared as the division gives it (IEEE, the same on every
platform); the reading reports it rounded to 6 digits, as the timeline does.

**Latency** (``service:step:LATENCY``): the window's bucket histograms summed bin by bin
and read at the rule's ``quantile`` (nearest rank, the bin's midpoint rounded to the
microsecond: :func:`~tocsin.processors.timeline.quantile`, within 1/32 of the exact
quantile). ``n`` is the number of durations in the window (requests without one are not
in it), ``base`` the median of the prior windows' quantiles.

    qualifies:  n >= min_requests  and  (value > threshold_ms
                                         or (base > 0 and value > lift x base))

**Hysteresis** (REARM, ``rearm_ratio`` in (0, 1]). An active incident recovers, and a
family whose incident resolved re-arms, only once its window no longer *holds*: it is below
the re-arm level, each open level moved towards its floor by ``1 - REARM`` of the way
(ADR 0002's lift ``1 + REARM x (MIN_LIFT - 1)`` is exactly that, with the baseline as floor):

    error rate:  holds = requests >= REARM x min_requests  and  rate >= REARM x threshold
    latency:     holds = n >= REARM x min_requests  and
                         (value > threshold_ms - (1 - REARM) x (threshold_ms - floor)
                          or (base > 0 and value > (lift - (1 - REARM) x (lift - 1)) x base))
                 floor = min(base, threshold_ms), or 0 without a baseline

The error rate's floor is 0, as the count's is. The latency threshold's floor is the step's
usual quantile, so a step whose latency is back to usual recovers even when its usual
quantile is above REARM x threshold_ms (as ADR 0002 made the lift level relative so a
family that always has errors can recover). Every level falls as REARM falls and as the
floor falls; at ``REARM = 1`` each is the open level to the bit (the ``1 - REARM`` term is
0.0), so ``holds == qualifies``.

Pure: functions of the cells they are given; no clock, no randomness, nothing changed.
The cost is O(buckets x bins) per call, called per bucket boundary and rule, not per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import median
from typing import Any

from tocsin.processors.rules import ErrorRateRule, LatencyRule
from tocsin.processors.timeline import merge_hist, quantile

Cells = Mapping[int, list[Any]]  # bucket index -> [requests, errors, generation, hist]

RATE_DIGITS = 6  # as the timeline's error_rate and means
NO_HYSTERESIS = 1.0


@dataclass(frozen=True, slots=True)
class StepReading:
    """A step's window as one rule reads it."""

    requests: int  # requests in the window
    errors: int  # failing requests in the window
    value: float | None  # the error rate, or the quantile in ms; None without requests
    # (error rate) or durations (latency)
    baseline: float | None  # the median of the prior windows' values; None when none had one
    qualifies: bool  # the rule's open condition holds


# ---------------------------------------------------------------------- windows


def _window_cells(cells: Cells, index: int, width: int) -> list[list[Any]]:
    """The cells of the ``width`` buckets ending at ``index`` (as ``window_sum`` reads)."""
    first = index - width + 1
    if len(cells) <= width:
        return [c for i, c in cells.items() if first <= i <= index]
    return [c for i in range(first, index + 1) if (c := cells.get(i)) is not None]


def _counts(cells: Cells, index: int, width: int) -> tuple[int, int]:
    """(requests, errors) of the window ending at ``index``."""
    requests = errors = 0
    for cell in _window_cells(cells, index, width):
        requests += cell[0]
        errors += cell[1]
    return requests, errors


def _durations(cells: Cells, index: int, width: int) -> dict[int, int]:
    """The window's histograms summed bin by bin (a new dict: the cells are not changed)."""
    merged: dict[int, int] = {}
    for cell in _window_cells(cells, index, width):
        merge_hist(merged, cell[3])
    return merged


def _prior_ends(index: int, width: int, count: int) -> range:
    """The last bucket of each of the ``count`` windows before the current one, newest
    first (``windows.prior_window_sums``'s windows)."""
    return range(index - width, index - width * count - 1, -width)


def _median(values: list[float]) -> float | None:
    return round(float(median(values)), RATE_DIGITS) if values else None


# ---------------------------------------------------------------------- error rate


def _rate(cells: Cells, index: int, width: int) -> float | None:
    requests, errors = _counts(cells, index, width)
    return errors / requests if requests else None


def error_rate_baseline(cells: Cells, index: int, width: int, baseline_windows: int,
                        min_requests: int = 1) -> float | None:
    """The median error rate of the prior windows with at least ``min_requests``
    requests; None without any."""
    rates = []
    for end in _prior_ends(index, width, baseline_windows):
        requests, errors = _counts(cells, end, width)
        if requests and requests >= min_requests:
            rates.append(errors / requests)
    return _median(rates)


def _rate_over(rule: ErrorRateRule, requests: int, errors: int, share: float) -> bool:
    """The open condition at ``share = 1``, the re-arm level at ``share = REARM``."""
    if requests == 0 or requests < share * rule.min_requests:
        return False
    return errors / requests >= share * rule.threshold


def error_rate_reading(cells: Cells, index: int, width: int, rule: ErrorRateRule,
                       baseline_windows: int) -> StepReading:
    """The error rate of the window ending at bucket ``index`` and whether it opens."""
    requests, errors = _counts(cells, index, width)
    rate = round(errors / requests, RATE_DIGITS) if requests else None
    return StepReading(requests, errors, rate,
                       error_rate_baseline(cells, index, width, baseline_windows,
                                           rule.min_requests),
                       _rate_over(rule, requests, errors, NO_HYSTERESIS))


def error_rate_holds(cells: Cells, index: int, width: int, rule: ErrorRateRule,
                     rearm_ratio: float) -> bool:
    """Whether the window is still at or above the re-arm level: ``rearm_ratio`` x
    ``min_requests`` requests and ``rearm_ratio`` x ``threshold`` of them failing."""
    requests, errors = _counts(cells, index, width)
    return _rate_over(rule, requests, errors, rearm_ratio)


# ---------------------------------------------------------------------- latency


Memo = dict[tuple[int, int, float], tuple[int, float | None]]
"""(window end, width, quantile) -> (durations, quantile) of windows that can no longer
change: a cache the caller keeps per step (results never depend on it)."""


def window_quantile(cells: Cells, end: int, width: int, q: float, memo: Memo | None = None,
                    stable_until: int = -(1 << 62)) -> tuple[int, float | None]:
    """(durations, ``q`` quantile) of the window ending at ``end``; remembered in ``memo``
    when ``end <= stable_until`` (its buckets are past the lateness horizon)."""
    keep = memo is not None and end <= stable_until
    if keep:
        assert memo is not None
        hit = memo.get((end, width, q))
        if hit is not None:
            return hit
    hist = _durations(cells, end, width)
    found = (sum(hist.values()), quantile(hist, q))
    if keep:
        assert memo is not None
        memo[(end, width, q)] = found
    return found


def latency_baseline(cells: Cells, index: int, width: int, q: float, baseline_windows: int,
                     min_samples: int = 1, memo: Memo | None = None,
                     stable_until: int = -(1 << 62)) -> float | None:
    """The median ``q`` quantile of the prior windows with at least ``min_samples``
    durations (a window the rule could not read itself is no baseline either); None
    without any."""
    found = [window_quantile(cells, end, width, q, memo, stable_until)
             for end in _prior_ends(index, width, baseline_windows)]
    return _median([v for n, v in found if v is not None and n >= min_samples])


def _latency_over(rule: LatencyRule, samples: int, value: float | None,
                  base: float | None, share: float) -> bool:
    """The open condition at ``share = 1``, the re-arm level at ``share = REARM`` (each
    level written ``open - (1 - share) x (open - floor)``, so share 1 is the open level)."""
    if value is None or samples < share * rule.min_requests:
        return False
    slack = 1.0 - share
    threshold_ms = rule.threshold_ms
    if threshold_ms is not None:
        floor = 0.0 if base is None else min(base, threshold_ms)
        if value > threshold_ms - slack * (threshold_ms - floor):
            return True
    lift = rule.lift
    if lift is not None and base is not None and base > 0:
        return value > (lift - slack * (lift - 1.0)) * base
    return False


def _latency_window(cells: Cells, index: int, width: int, rule: LatencyRule,
                    baseline_windows: int, memo: Memo | None, stable_until: int
                    ) -> tuple[int, int, int, float | None, float | None]:
    """(requests, errors, durations, quantile, baseline) of the window ending at ``index``."""
    requests, errors = _counts(cells, index, width)
    samples, value = window_quantile(cells, index, width, rule.quantile, memo, stable_until)
    base = latency_baseline(cells, index, width, rule.quantile, baseline_windows,
                            rule.min_requests, memo, stable_until)
    return requests, errors, samples, value, base


def latency_reading(cells: Cells, index: int, width: int, rule: LatencyRule,
                    baseline_windows: int, memo: Memo | None = None,
                    stable_until: int = -(1 << 62)) -> StepReading:
    """The rule's quantile of the window ending at bucket ``index`` and whether it opens
    (``memo``, ``stable_until``: :func:`window_quantile`'s cache)."""
    requests, errors, samples, value, base = _latency_window(
        cells, index, width, rule, baseline_windows, memo, stable_until)
    return StepReading(requests, errors, value, base,
                       _latency_over(rule, samples, value, base, NO_HYSTERESIS))


def latency_holds(cells: Cells, index: int, width: int, rule: LatencyRule,
                  baseline_windows: int, rearm_ratio: float, memo: Memo | None = None,
                  stable_until: int = -(1 << 62)) -> bool:
    """Whether the window's quantile is still above a re-arm level (module docstring)."""
    _, _, samples, value, base = _latency_window(cells, index, width, rule,
                                                 baseline_windows, memo, stable_until)
    return _latency_over(rule, samples, value, base, rearm_ratio)
