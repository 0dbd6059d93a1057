"""The incident timeline (ADR 0019): the duration histogram, the series and its summary, the
cap, and the detector drawing it from the same buckets it decides on, in event time."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.timeline import (
    ZERO_BIN,
    Timeline,
    TimelineConfig,
    bin_value,
    duration_bin,
    quantile,
)

T0 = 1_800_000_000_000  # a multiple of every bucket used here
MIN = 60_000
B = 30_000
PAY = Family("prod", "checkout", "payment.charge", "PMT_502")


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def hist_of(values: list[float]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for v in values:
        b = duration_bin(v)
        hist[b] = hist.get(b, 0) + 1
    return hist


# ------------------------------------------------------------------ the histogram


@given(st.lists(st.floats(min_value=0.001, max_value=1e9), min_size=1, max_size=300),
       st.sampled_from([0.5, 0.95, 0.99]))
def test_a_quantile_is_within_a_bin_of_the_exact_one(values: list[float], q: float) -> None:
    got = quantile(hist_of(values), q)
    want = exact_quantile(values, q)
    assert got is not None
    assert abs(got - want) <= want / 32 + 0.001  # the bin's half width, and the rounding


def test_bins_grow_with_the_duration_and_every_odd_value_has_one() -> None:
    values = [1e-9, 0.001, 0.5, 0.999, 1.0, 1.07, 2.0, 3.0, 120.0, 128.0, 60_000.0, 1e11]
    bins = [duration_bin(v) for v in values]
    assert bins == sorted(bins) and len(set(bins)) == len(bins)
    for v in values:
        assert abs(bin_value(duration_bin(v)) - v) <= v / 32
    for odd in (0.0, -5.0, float("nan")):
        assert duration_bin(odd) == ZERO_BIN and bin_value(ZERO_BIN) == 0.0
    assert duration_bin(float("inf")) > duration_bin(1e11)
    assert quantile({}, 0.5) is None
    assert quantile(hist_of([0.0, 0.0, 100.0]), 0.5) == 0.0


def test_the_bin_of_a_value_is_exact_not_a_logarithm() -> None:
    """Powers of two start a bin, and the value just below falls in the bin before: the
    edges are exact on every platform (frexp, never log)."""
    for exponent in range(-10, 40):
        edge = math.ldexp(1.0, exponent)
        assert duration_bin(edge) == duration_bin(math.nextafter(edge, 0)) + 1


# ------------------------------------------------------------------ the series


def drawn(onset_ms: int = T0 + 10 * MIN, **config: int) -> Timeline:
    return Timeline.start(onset_ms, TimelineConfig(**config), B)


def test_points_are_dense_and_the_summary_compares_before_with_after() -> None:
    t = drawn()
    first = (T0 + 5 * MIN) // B
    assert t.first == first
    t.advance(first + 30)
    for i in range(first, first + 31):
        spiking = first + 10 <= i < first + 20
        t.put_errors(i, 20 if spiking else 1) if i % 2 == 0 or spiking else None
        t.put_step(i, 100, hist_of([900.0 if spiking else 100.0] * 10))
    t.resolve(T0 + 15 * MIN)
    assert t.due_ms == T0 + 25 * MIN  # resolved at 15:00, and the 10 minutes after
    t.advance(first + 99)  # never past its end
    view = t.view()
    assert len(view["points"]) == 40 and view["from_ms"] == T0 + 5 * MIN
    assert [p["t_ms"] for p in view["points"]] == [(first + k) * B for k in range(40)]
    assert view["points"][-1]["error_rate"] is None, "no requests: no rate"
    assert view["points"][1]["errors"] == 0, "a bucket without errors is a zero, not a gap"
    rate = view["summary"]["error_rate"]
    assert rate["max"] == 0.2 and rate["max_at_ms"] == (first + 10) * B
    assert rate["start"] == 0.005 and rate["end"] == pytest.approx(0.005, abs=0.0005)
    p95 = view["summary"]["p95_ms"]
    assert p95["start"] == pytest.approx(100, rel=1 / 32)
    assert p95["max"] == pytest.approx(900, rel=1 / 32)
    assert (view["complete"], view["truncated"], view["omitted"]) == (False, False, 0)


def test_a_long_incident_keeps_its_start_and_end_and_sums_up_the_middle() -> None:
    t = drawn(max_points=100)
    first = t.first
    for i in range(first, first + 300):
        t.advance(i)
        # the peak falls in the middle, and is matched once at the end
        t.put_errors(i, 500 if i in (first + 150, first + 290) else 3)
        t.put_step(i, 1000, {})
        t.settle()
        assert len(t.points) <= 100
    view = t.view()
    points = view["points"]
    assert len(points) == 100 and view["truncated"] and view["omitted"] == 200
    assert points[49]["t_ms"] == (first + 49) * B and points[50]["t_ms"] == (first + 250) * B
    errors = view["summary"]["errors"]
    assert errors["max"] == 500.0 and errors["max_at_ms"] == (first + 150) * B
    assert errors["mean"] == round((298 * 3 + 1000) / 300, 6)
    assert view["summary"]["p95_ms"]["max"] is None


def test_a_timeline_reads_back_from_its_snapshot() -> None:
    t = drawn(max_points=20)
    for i in range(t.first, t.first + 50):
        t.advance(i)
        t.put_errors(i, i % 7)
        t.put_step(i, 10 + i % 3, hist_of([float(i % 50) + 1]))
        t.settle()
    again = Timeline.from_list(t.to_list(), t.config, B)
    assert again.view() == t.view() and again.to_list() == t.to_list()


def test_a_cap_too_small_for_the_buffers_and_lateness_is_refused() -> None:
    with pytest.raises(ValueError, match="timeline_max_points"):
        DetectorConfig(timeline_max_points=160)  # 80 = the 80 buckets of lateness
    assert DetectorConfig(timeline_max_points=162).timeline.max_points == 162


# ------------------------------------------------------------------ drawn by the detector


def traffic(start_ms: int, minutes: int, spike: tuple[int, int] | None = None,
            seed: int = 7) -> list[tuple[int, bool, float]]:
    """10 requests a second for ``minutes``: 0.02% errors, 40% in the spike's minutes;
    durations around 100 ms, around 800 ms while spiking."""
    rng = random.Random(seed)
    out = []
    for k in range(minutes * 600):
        t = start_ms + k * 100
        hot = spike is not None and spike[0] <= (t - start_ms) // MIN < spike[1]
        failed = rng.random() < (0.4 if hot else 0.0002)
        out.append((t, failed, round(rng.uniform(600, 1000) if hot else
                                     rng.uniform(50, 150), 3)))
    return out


def run(events: list[tuple[int, bool, float]], det: PartitionDetector,
        evict_every: int = 0) -> list[IncidentEvent]:
    out: list[IncidentEvent] = []
    for n, (t, failed, duration) in enumerate(events):
        out += det.observe(t, "prod", "checkout", "payment.charge", PAY if failed else None,
                           duration_ms=duration)
        if evict_every and n % evict_every == 0:
            det.evict_idle()
    return out


def test_the_detector_draws_what_the_events_were() -> None:
    events = traffic(T0, 60, spike=(20, 30))
    out = run(events, PartitionDetector(DetectorConfig()))
    assert [e.kind for e in out] == ["opened", "recovering", "resolved", "timeline"]
    opened, *_, final = out
    assert opened.timeline is not None and final.timeline is not None
    # At opening: the buffer before onset, up to the bucket of the onset.
    first = opened.timeline["points"][0]
    assert first["t_ms"] == (opened.onset_ms - 5 * MIN) // B * B
    assert opened.timeline["to_ms"] > opened.onset_ms and not opened.timeline["complete"]
    # Complete: from 5 min before onset to 10 min after resolution, every bucket as
    # counted from the events themselves.
    view = final.timeline
    assert view["complete"] and view["resolved_ms"] == out[2].at_ms
    assert view["to_ms"] == out[2].at_ms + 10 * MIN == final.at_ms
    for point in view["points"]:
        inside = [e for e in events if point["t_ms"] <= e[0] < point["t_ms"] + B]
        assert point["requests"] == len(inside)
        assert point["errors"] == sum(1 for e in inside if e[1])
        assert point["p95_ms"] == (pytest.approx(
            exact_quantile([e[2] for e in inside], 0.95), rel=1 / 32) if inside else None)
    rate = view["summary"]["error_rate"]
    assert rate["start"] < 0.01 and rate["max"] > 0.3 and rate["end"] < 0.01
    assert view["summary"]["p95_ms"]["max"] > 5 * view["summary"]["p95_ms"]["start"]


def test_when_the_detector_trims_its_buckets_changes_nothing() -> None:
    """The worker trims on a timer (evict_idle at its checkpoints): the timeline keeps the
    buckets before they go, so the events out are the same however often it runs."""
    events = traffic(T0, 90, spike=(20, 45))
    never = run(events, PartitionDetector(DetectorConfig()))
    often = run(events, PartitionDetector(DetectorConfig()), evict_every=997)
    assert often == never and never[-1].kind == "timeline"


def test_a_restored_detector_finishes_the_same_timeline() -> None:
    events = traffic(T0, 70, spike=(20, 35))
    whole = run(events, PartitionDetector(DetectorConfig()))
    det = PartitionDetector(DetectorConfig())
    cut = len(events) // 2
    head = run(events[:cut], det)
    restored = PartitionDetector.restore(DetectorConfig(), det.snapshot())
    assert restored.timelines.drawn.keys() == det.timelines.drawn.keys() != set()
    assert head + run(events[cut:], restored) == whole


def test_a_long_incident_is_truncated_on_the_wire_with_its_summary_whole() -> None:
    # Without a baseline the spike stays an incident for as long as it lasts (100 min).
    cfg = DetectorConfig(timeline_max_points=100, baseline_windows=0)
    events = traffic(T0, 150, spike=(20, 120))
    out = run(events, PartitionDetector(cfg))
    final = out[-1]
    assert final.kind == "timeline" and final.timeline is not None
    view = final.timeline
    assert len(view["points"]) == 100 and view["truncated"] and view["omitted"] > 100
    span = (view["to_ms"] - view["from_ms"]) // B
    assert span == 100 + view["omitted"]
    assert view["summary"]["requests"]["mean"] == pytest.approx(300, rel=0.01)


def test_a_person_reopening_a_completed_timeline_starts_a_new_one() -> None:
    from tocsin.processors.actions import Command

    det = PartitionDetector(DetectorConfig())
    events = traffic(T0, 60, spike=(20, 30))
    out = run(events, det)
    incident = out[0].incident_id
    assert incident not in det.timelines.drawn
    reopen_at = events[-1][0]
    reopened = det.act(Command(
        action_id="act_0000000000000001", incident_id=incident, env="prod",
        service="checkout", action="reopen", actor="ana", at_ms=reopen_at))
    assert isinstance(reopened, list) and reopened[0].kind == "reopened"
    view: dict[str, Any] | None = reopened[0].timeline
    assert view is not None and view["onset_ms"] == reopen_at
    assert view["from_ms"] == (reopen_at - 5 * MIN) // B * B
