"""Event-time bucket arithmetic: tumbling buckets, trailing windows and the median baseline.

A family's errors are counted in tumbling buckets of ``bucket_ms``. The *window* at bucket
index ``k`` is the ``window_ms / bucket_ms`` buckets ending at ``k`` (inclusive); the
*baseline* is the median of the ``baseline_windows`` windows of the same length that
precede it, back to back. A bucket absent from the map counts 0.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from statistics import median
from typing import Any


def bucket_index(t_ms: int, bucket_ms: int) -> int:
    """Index of the tumbling bucket holding ``t_ms`` (floor division, so negatives work)."""
    return t_ms // bucket_ms


def window_sum(buckets: Mapping[int, int], last_index: int, width: int) -> int:
    """Sum of the ``width`` buckets ending at ``last_index`` inclusive."""
    first = last_index - width + 1
    if len(buckets) <= width:
        return sum(v for i, v in buckets.items() if first <= i <= last_index)
    return sum(buckets.get(i, 0) for i in range(first, last_index + 1))


def prior_window_sums(
    buckets: Mapping[int, int], last_index: int, width: int, count: int
) -> list[int]:
    """The sums of the ``count`` windows of ``width`` buckets before the current window,
    newest first."""
    return [window_sum(buckets, last_index - width * n, width) for n in range(1, count + 1)]


def baseline(buckets: Mapping[int, int], last_index: int, width: int, count: int) -> float:
    """Median of the prior windows: one odd window neither hides nor fakes a spike."""
    if count <= 0:
        return 0.0
    return float(median(prior_window_sums(buckets, last_index, width, count)))


def trim(buckets: MutableMapping[int, Any], keep_from_index: int) -> None:
    """Drop buckets older than ``keep_from_index`` (in place)."""
    for i in [i for i in buckets if i < keep_from_index]:
        del buckets[i]
