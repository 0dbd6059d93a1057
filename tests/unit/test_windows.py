"""Window and baseline arithmetic, checked against brute force with hypothesis."""

from __future__ import annotations

from statistics import median

from hypothesis import given
from hypothesis import strategies as st

from tocsin.processors.windows import baseline, bucket_index, trim, window_sum

buckets_st = st.dictionaries(st.integers(-200, 200), st.integers(0, 50), max_size=80)


@given(st.integers(-10**13, 10**13), st.integers(1, 10**6))
def test_bucket_index_is_floor_division(t_ms: int, bucket_ms: int) -> None:
    index = bucket_index(t_ms, bucket_ms)
    assert index * bucket_ms <= t_ms < (index + 1) * bucket_ms


@given(buckets_st, st.integers(-250, 250), st.integers(1, 40))
def test_window_sum_matches_brute_force(buckets: dict[int, int], last: int, width: int) -> None:
    expected = sum(n for i, n in buckets.items() if last - width < i <= last)
    assert window_sum(buckets, last, width) == expected


@given(buckets_st, st.integers(-250, 250), st.integers(1, 30), st.integers(0, 5))
def test_baseline_is_median_of_prior_windows(buckets: dict[int, int], last: int, width: int,
                                             count: int) -> None:
    priors = [sum(buckets.get(i, 0) for i in range(last - width * (n + 1) + 1,
                                                      last - width * n + 1))
              for n in range(1, count + 1)]
    expected = float(median(priors)) if priors else 0.0
    assert baseline(buckets, last, width, count) == expected


@given(buckets_st, st.integers(-250, 250))
def test_trim_keeps_exactly_the_recent_buckets(buckets: dict[int, int], keep_from: int) -> None:
    before = dict(buckets)
    trim(buckets, keep_from)
    assert buckets == {i: n for i, n in before.items() if i >= keep_from}


def test_one_odd_window_neither_hides_nor_fakes_a_spike() -> None:
    # Prior windows of width 1: 0, 100, 0 -> the median ignores the odd 100.
    assert baseline({-1: 0, -2: 100, -3: 0}, 0, 1, 3) == 0.0
    assert baseline({-1: 4, -2: 0, -3: 5}, 0, 1, 3) == 4.0
