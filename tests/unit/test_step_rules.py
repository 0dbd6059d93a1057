"""The per-step detections (ADR 0022): the error rate and the latency quantile over the
detector's step cells, their baselines, and their re-arm levels (ADR 0002's hysteresis)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_timeline import hist_of
from tocsin.processors.rules import ErrorRateRule, LatencyRule
from tocsin.processors.step_rules import (
    StepReading,
    error_rate_holds,
    error_rate_reading,
    latency_holds,
    latency_reading,
)
from tocsin.processors.timeline import bin_value, duration_bin, quantile

W = 4  # buckets per window
NOW = 40  # the current bucket: its window is buckets 37..40, the prior ones 33..36, ...


def rate_rule(threshold: float, min_requests: int = 20) -> ErrorRateRule:
    return ErrorRateRule(1, 1, "checkout", None, None, min_requests, None,
                         threshold=threshold)


def latency_rule(threshold_ms: float | None = None, lift: float | None = None,
                 min_requests: int = 20, q: float = 0.95) -> LatencyRule:
    return LatencyRule(1, 1, "checkout", None, None, min_requests, None,
                       threshold_ms=threshold_ms, lift=lift, quantile=q)


def cell(requests: int, errors: int = 0, durations: list[float] | None = None) -> list[Any]:
    return [requests, errors, 0, hist_of(durations or [])]


def timed(n: int, duration_ms: float) -> list[Any]:
    """A bucket of ``n`` requests, all ok, each taking ``duration_ms``."""
    return cell(n, 0, [duration_ms] * n)


def read_as(duration_ms: float) -> float:
    """What a quantile falling on this duration reads as (its bin's midpoint)."""
    return round(bin_value(duration_bin(duration_ms)), 3)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


# ------------------------------------------------------------------ error rate


@pytest.mark.parametrize(("requests", "errors", "min_requests", "threshold", "qualifies"), [
    (100, 5, 20, 0.05, True),  # at the threshold: >=
    (100, 4, 20, 0.05, False),  # below it
    (100, 6, 20, 0.05, True),  # above it
    (20, 20, 20, 1.0, True),  # threshold 1: every request failed
    (20, 19, 20, 1.0, False),
    (19, 19, 20, 0.05, False),  # one request short of min_requests
    (20, 1, 20, 0.05, True),  # exactly min_requests, exactly the threshold
    (1000, 49, 20, 0.05, False),  # 0.049
    (3, 1, 1, 0.3, True),  # 1/3 >= 0.3
])
def test_the_error_rate_opens_at_or_above_its_threshold_with_enough_requests(
        requests: int, errors: int, min_requests: int, threshold: float,
        qualifies: bool) -> None:
    cells = {NOW - 1: cell(requests - requests // 2, errors - errors // 2),
             NOW: cell(requests // 2, errors // 2)}
    got = error_rate_reading(cells, NOW, W, rate_rule(threshold, min_requests), 3)
    assert (got.requests, got.errors) == (requests, errors)
    assert got.value == round(errors / requests, 6)
    assert got.qualifies is qualifies


def test_a_window_without_requests_has_no_rate_and_does_not_open() -> None:
    got = error_rate_reading({}, NOW, W, rate_rule(0.05, 1), 3)
    assert got == StepReading(0, 0, None, None, False)


def test_the_rate_is_reported_rounded_to_six_digits() -> None:
    got = error_rate_reading({NOW: cell(3, 1)}, NOW, W, rate_rule(0.3, 1), 0)
    assert got.value == 0.333333


@pytest.mark.parametrize("far", [0, 10])  # sparse cells, and more cells than the window
def test_only_the_windows_buckets_count_and_missing_ones_count_nothing(far: int) -> None:
    cells = {NOW - W: cell(50, 50), NOW - 3: cell(10, 1), NOW: cell(10, 2),
             NOW + 1: cell(50, 50)}
    cells.update({NOW - 100 - i: cell(7, 7) for i in range(far)})
    got = error_rate_reading(cells, NOW, W, rate_rule(0.5, 1), 0)
    assert (got.requests, got.errors, got.value, got.baseline) == (20, 3, 0.15, None)


def test_the_rate_baseline_is_the_median_of_the_prior_windows_with_requests() -> None:
    cells = {
        NOW: cell(100, 50),
        NOW - 4: cell(100, 1),  # the window before: 0.01
        NOW - 9: cell(50, 1), NOW - 11: cell(50, 1),  # the one before that: 0.02 (two buckets)
        NOW - 12: cell(20, 18),  # the third: 0.9
    }
    assert error_rate_reading(cells, NOW, W, rate_rule(0.05), 3).baseline == 0.02
    cells[NOW - 12] = cell(19, 18)  # fewer requests than the rule reads: no baseline either
    assert error_rate_reading(cells, NOW, W, rate_rule(0.05), 3).baseline == 0.015
    del cells[NOW - 12]  # a window without requests has no rate: left out of the median
    assert error_rate_reading(cells, NOW, W, rate_rule(0.05), 3).baseline == 0.015
    assert error_rate_reading(cells, NOW, W, rate_rule(0.05), 1).baseline == 0.01
    assert error_rate_reading(cells, NOW, W, rate_rule(0.05), 0).baseline is None
    assert error_rate_reading({NOW: cell(9, 9)}, NOW, W, rate_rule(0.05), 3).baseline is None


def test_the_rate_rearms_below_half_its_threshold_and_half_its_requests() -> None:
    rule = rate_rule(0.05, 20)

    def holds(requests: int, errors: int, rearm: float) -> bool:
        return error_rate_holds({NOW: cell(requests, errors)}, NOW, W, rule, rearm)

    assert holds(100, 3, 0.5)  # 0.03 >= 0.025: still at the re-arm level
    assert holds(1000, 25, 0.5)  # at it exactly
    assert not holds(1000, 24, 0.5)  # below it
    assert holds(10, 10, 0.5)  # 10 >= 0.5 x 20 requests
    assert not holds(9, 9, 0.5)
    assert not holds(0, 0, 0.5)
    assert not holds(100, 3, 1.0)  # no hysteresis: below the threshold is below


# ------------------------------------------------------------------ latency


def test_the_quantile_opens_above_threshold_ms_and_not_at_it() -> None:
    cells = {NOW - 1: timed(10, 100.0), NOW: timed(10, 100.0)}
    value = read_as(100.0)
    assert value == 102.0
    got = latency_reading(cells, NOW, W, latency_rule(threshold_ms=101.0), 3)
    assert (got.requests, got.errors, got.value, got.baseline, got.qualifies) == (
        20, 0, 102.0, None, True)
    assert not latency_reading(cells, NOW, W, latency_rule(threshold_ms=value), 3).qualifies


def test_the_quantile_is_read_from_the_merged_buckets_at_the_rules_quantile() -> None:
    cells = {NOW - 3: timed(90, 10.0), NOW: timed(10, 1000.0)}
    assert latency_reading(cells, NOW, W, latency_rule(500.0, q=0.5), 0).value == read_as(10.0)
    assert latency_reading(cells, NOW, W, latency_rule(500.0, q=0.9), 0).value == read_as(10.0)
    assert latency_reading(cells, NOW, W, latency_rule(500.0, q=0.91), 0).value == read_as(
        1000.0)


def test_only_requests_with_a_duration_count_towards_min_requests() -> None:
    cells = {NOW: [25, 0, 0, hist_of([900.0] * 19)]}  # 25 requests, 19 durations
    got = latency_reading(cells, NOW, W, latency_rule(threshold_ms=500.0), 3)
    assert (got.requests, got.value, got.qualifies) == (25, read_as(900.0), False)
    cells[NOW][3] = hist_of([900.0] * 20)
    assert latency_reading(cells, NOW, W, latency_rule(threshold_ms=500.0), 3).qualifies


def test_a_window_without_durations_has_no_quantile_and_does_not_open() -> None:
    got = latency_reading({NOW: cell(50, 5)}, NOW, W, latency_rule(threshold_ms=1.0), 3)
    assert got == StepReading(50, 5, None, None, False)


def usual_then(now_ms: float) -> dict[int, list[Any]]:
    """Three prior windows at 100 ms (one bucket each, one an outlier) and one at now_ms."""
    return {NOW - 5: timed(20, 100.0), NOW - 10: timed(20, 5000.0), NOW - 13: timed(20, 100.0),
            NOW: timed(20, now_ms)}


def test_the_lift_is_measured_against_the_median_of_the_prior_windows_quantiles() -> None:
    now = read_as(300.0)  # 296.0 > 2 x 102.0, < 3 x 102.0
    got = latency_reading(usual_then(300.0), NOW, W, latency_rule(lift=2.0), 3)
    assert (got.value, got.baseline, got.qualifies) == (now, 102.0, True)
    assert not latency_reading(usual_then(300.0), NOW, W, latency_rule(lift=3.0), 3).qualifies
    # the outlier window alone is the baseline
    lone = latency_reading(usual_then(300.0), NOW, W, latency_rule(lift=2.0), 2)
    assert (lone.baseline, lone.qualifies) == (round((102.0 + read_as(5000.0)) / 2, 6), False)
    # either condition opens it
    assert latency_reading(usual_then(300.0), NOW, W,
                           latency_rule(threshold_ms=250.0, lift=3.0), 3).qualifies


def test_prior_windows_without_durations_are_left_out_of_the_baseline() -> None:
    cells = {NOW - 5: cell(20, 20), NOW - 9: timed(20, 100.0), NOW: timed(20, 300.0)}
    got = latency_reading(cells, NOW, W, latency_rule(lift=2.0), 3)
    assert (got.baseline, got.qualifies) == (102.0, True)
    alone = {NOW: timed(20, 300.0)}
    got = latency_reading(alone, NOW, W, latency_rule(lift=2.0), 3)
    assert (got.baseline, got.qualifies) == (None, False)  # no baseline: the lift cannot open
    assert latency_reading(alone, NOW, W, latency_rule(lift=2.0), 0).baseline is None


def test_a_zero_baseline_does_not_open_the_lift() -> None:
    cells = {NOW - 4: timed(20, 0.0), NOW: timed(20, 300.0)}
    got = latency_reading(cells, NOW, W, latency_rule(lift=2.0), 1)
    assert (got.baseline, got.qualifies) == (0.0, False)


def test_latency_rearms_between_its_usual_quantile_and_its_threshold() -> None:
    # baseline 102: the threshold's re-arm level is 800 - 0.5 x (800 - 102) = 451
    rule = latency_rule(threshold_ms=800.0)
    assert latency_holds(usual_then(500.0), NOW, W, rule, 3, 0.5)  # 504 > 451
    assert not latency_holds(usual_then(440.0), NOW, W, rule, 3, 0.5)  # 440 < 451
    assert not latency_holds(usual_then(500.0), NOW, W, rule, 3, 1.0)
    # without a baseline the floor is 0: the level is 400
    alone = {NOW: timed(20, 420.0)}
    assert latency_holds(alone, NOW, W, rule, 3, 0.5)
    assert not latency_holds({NOW: timed(20, 380.0)}, NOW, W, rule, 3, 0.5)
    # a baseline above the threshold: the level is the threshold
    high = {NOW - 4: timed(20, 2000.0), NOW: timed(20, 810.0)}
    assert latency_holds(high, NOW, W, rule, 1, 0.5) is latency_reading(
        high, NOW, W, rule, 1).qualifies
    # half min_requests still holds; fewer does not
    assert latency_holds({NOW: timed(10, 900.0)}, NOW, W, rule, 3, 0.5)
    assert not latency_holds({NOW: timed(9, 900.0)}, NOW, W, rule, 3, 0.5)


def test_the_lift_rearms_at_one_plus_rearm_times_the_lift_above_one() -> None:
    rule = latency_rule(lift=3.0)  # re-arm lift 1 + 0.5 x 2 = 2: 204 ms over 102
    assert not latency_reading(usual_then(250.0), NOW, W, rule, 3).qualifies  # 252 < 306
    assert latency_holds(usual_then(250.0), NOW, W, rule, 3, 0.5)  # 252 > 204
    assert not latency_holds(usual_then(190.0), NOW, W, rule, 3, 0.5)  # 188 < 204
    assert not latency_holds(usual_then(250.0), NOW, W, rule, 3, 1.0)


def test_the_cells_are_not_changed() -> None:
    cells = usual_then(300.0)
    before = copy.deepcopy(cells)
    latency_reading(cells, NOW, W, latency_rule(threshold_ms=1.0, lift=2.0), 3)
    latency_holds(cells, NOW, W, latency_rule(threshold_ms=1.0, lift=2.0), 3, 0.5)
    error_rate_reading(cells, NOW, W, rate_rule(0.5), 3)
    assert cells == before


# ------------------------------------------------------------------ properties

durations = st.one_of(st.just(0.0), st.floats(min_value=0.001, max_value=1e7))


@st.composite
def step_cells(draw: st.DrawFn) -> dict[int, list[Any]]:
    cells: dict[int, list[Any]] = {}
    for index in draw(st.lists(st.integers(NOW - 4 * W, NOW + 1), max_size=12, unique=True)):
        values = draw(st.lists(durations, max_size=15))
        requests = len(values) + draw(st.integers(0, 3))
        cells[index] = cell(requests, draw(st.integers(0, requests)), values)
    return cells


@given(st.lists(st.tuples(st.integers(NOW - W + 1, NOW),
                          st.floats(min_value=0.001, max_value=1e9)), min_size=1, max_size=200),
       st.sampled_from([0.01, 0.5, 0.9, 0.95, 0.99]))
def test_the_windows_quantile_is_within_a_bin_of_the_exact_one(
        timed_at: list[tuple[int, float]], q: float) -> None:
    cells: dict[int, list[Any]] = {}
    for index, duration_ms in timed_at:
        found = cells.setdefault(index, cell(0))
        found[0] += 1
        found[3][duration_bin(duration_ms)] = found[3].get(duration_bin(duration_ms), 0) + 1
    got = latency_reading(cells, NOW, W, latency_rule(threshold_ms=1.0, q=q), 0).value
    want = exact_quantile([d for _, d in timed_at], q)
    assert got is not None
    assert abs(got - want) <= want / 32 + 0.001  # the bin's half width, and the rounding


@given(step_cells(), st.sampled_from([0.01, 0.05, 0.1, 0.3, 1 / 3, 0.7, 1.0]),
       st.integers(1, 30), st.sampled_from([0.1, 0.3, 0.5, 0.9]))
def test_the_rate_holds_exactly_when_it_qualifies_at_rearm_one_and_more_below(
        cells: dict[int, list[Any]], threshold: float, min_requests: int,
        rearm: float) -> None:
    rule = rate_rule(threshold, min_requests)
    qualifies = error_rate_reading(cells, NOW, W, rule, 3).qualifies
    assert error_rate_holds(cells, NOW, W, rule, 1.0) is qualifies
    if qualifies:
        assert error_rate_holds(cells, NOW, W, rule, rearm)


@given(step_cells(), st.sampled_from([None, 0.7, 1.1, 102.0, 250.0, 1e6]),
       st.sampled_from([None, 1.1, 1.3, 2.0, 7.5]), st.integers(1, 30),
       st.sampled_from([0.01, 0.5, 0.95]), st.sampled_from([0.1, 0.3, 0.5, 0.9]))
def test_latency_holds_exactly_when_it_qualifies_at_rearm_one_and_more_below(
        cells: dict[int, list[Any]], threshold_ms: float | None, lift: float | None,
        min_requests: int, q: float, rearm: float) -> None:
    rule = latency_rule(threshold_ms, lift, min_requests, q)
    qualifies = latency_reading(cells, NOW, W, rule, 3).qualifies
    assert latency_holds(cells, NOW, W, rule, 3, 1.0) is qualifies
    if qualifies:
        assert latency_holds(cells, NOW, W, rule, 3, rearm)
    if latency_holds(cells, NOW, W, rule, 3, rearm):
        assert latency_holds(cells, NOW, W, rule, 3, rearm / 2)  # lower REARM, lower level


@given(step_cells(), st.integers(0, 4))
def test_cells_outside_the_window_and_its_baseline_change_nothing(
        cells: dict[int, list[Any]], baseline_windows: int) -> None:
    rule = latency_rule(threshold_ms=100.0, lift=2.0, min_requests=1)
    wider = {**cells, **{NOW - 100 - i: timed(5, 9e5) for i in range(2 * W)}, NOW + 3: cell(9)}
    assert latency_reading(wider, NOW, W, rule, baseline_windows) == latency_reading(
        cells, NOW, W, rule, baseline_windows)
    assert error_rate_reading(wider, NOW, W, rate_rule(0.1, 1), baseline_windows) == \
        error_rate_reading(cells, NOW, W, rate_rule(0.1, 1), baseline_windows)


def test_a_quantile_read_here_is_the_timelines() -> None:
    values = [3.0, 7.5, 120.0, 121.0, 5000.0]
    cells = {NOW - i: timed(1, v) for i, v in enumerate(values)}
    got = latency_reading(cells, NOW, len(values), latency_rule(1.0, q=0.5), 0).value
    assert got == quantile(hist_of(values), 0.5)
