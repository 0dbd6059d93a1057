"""The detector as a pure function of its input: lifecycle rules, ids, bounds, and the
determinism properties the streaming layer relies on (restart, interleaving, eviction)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import IncidentEvent, incident_id

T0 = 1_793_610_000_000
MIN = 60_000
PAY = Family("prod", "checkout", "payment.charge", "PMT_502")

# (t_ms, service, step, family or None)
Ev = tuple[int, str, str, Family | None]


def healthy(service: str, start: int, minutes: int, step: str = "GET /", every_ms: int = 1000
            ) -> list[Ev]:
    return [(t, service, step, None) for t in range(start, start + minutes * MIN, every_ms)]


def errors(family: Family, start: int, n: int, every_ms: int = 1000) -> list[Ev]:
    return [(start + k * every_ms, family.service, family.step, family) for k in range(n)]


def run(events: Iterable[Ev], cfg: DetectorConfig | None = None,
        detector: PartitionDetector | None = None) -> list[IncidentEvent]:
    det = detector or PartitionDetector(cfg or DetectorConfig())
    out: list[IncidentEvent] = []
    for t, service, step, fam in events:
        out += det.observe(t, "prod", service, step, fam)
    return out


def merged(*streams: Sequence[Ev]) -> list[Ev]:
    return sorted((e for s in streams for e in s), key=lambda e: (e[0], e[1], e[2]))


def spike_scenario() -> list[Ev]:
    base = healthy("checkout", T0, 60, step="payment.charge")
    spike = errors(PAY, T0 + 40 * MIN + 500, 30)
    return merged(base, spike)


def test_opens_at_the_crossing_error_not_at_window_close() -> None:
    out = run(spike_scenario())
    opened = out[0]
    assert opened.kind == "opened" and opened.seq == 1
    assert opened.at_ms == opened.onset_ms == T0 + 40 * MIN + 500 + 4_000  # the 5th error
    assert (opened.window_count, opened.baseline, opened.lift) == (5, 0.0, None)
    assert opened.family == "checkout:payment.charge:PMT_502"
    assert opened.incident_id == incident_id(PAY, opened.onset_ms)


def test_the_failing_downstream_travels_with_the_incident() -> None:
    det = PartitionDetector(DetectorConfig())
    out = []
    for k in range(12):
        out += det.observe(T0 + k * 1000, "prod", "checkout", "payment.charge", PAY, "payment",
                           f"trace{k:02d}")
    assert out[0].kind == "opened" and out[0].downstream == "payment"
    # The opening errors' traces are the samples, then later ones up to eight, log order.
    assert out[0].sample_trace_ids == tuple(f"trace{k:02d}" for k in range(5))
    assert det.families[PAY].incident.sample_traces == [f"trace{k:02d}" for k in range(8)]
    snap = json.loads(json.dumps(det.snapshot()))
    restored = PartitionDetector.restore(DetectorConfig(), snap)
    assert restored.snapshot() == det.snapshot()


def test_recovers_when_the_window_no_longer_qualifies_and_resolves_after_quiet_time() -> None:
    out = run(spike_scenario())
    assert [e.kind for e in out] == ["opened", "recovering", "resolved"]
    last_error = T0 + 40 * MIN + 500 + 29_000
    recovering, resolved = out[1], out[2]
    # The trailing 10-minute window drains below the re-arm level (2.5 errors) at a 30 s
    # boundary ...
    assert recovering.at_ms % 30_000 == 0
    assert last_error + 9 * MIN < recovering.at_ms <= last_error + 10 * MIN + 30_000
    assert recovering.window_count <= 2
    # ... and stays below it for RESOLVE_AFTER (2 min), the quiet stretch.
    assert resolved.at_ms == recovering.at_ms + 2 * MIN
    assert resolved.peak_count == 30 and resolved.error_count == 30
    assert [e.seq for e in out] == [1, 2, 3]


# The lifecycle's own rules, without the flapping damper (tested in test_flapping.py)
NO_HYSTERESIS = {"min_active_ms": 0, "rearm_ratio": 1.0}


def test_resolve_waits_resolve_after_below_the_re_arm_level() -> None:
    """The quiet stretch starts when the window falls below the re-arm level (here, with
    REARM 1, below MIN_COUNT: the last errors leave the 1-minute window at 41:00), and a
    boundary back above it restarts it."""
    cfg = DetectorConfig(window_ms=60_000, resolve_after_ms=5 * MIN, **NO_HYSTERESIS)
    events = merged(healthy("checkout", T0, 60), errors(PAY, T0 + 40 * MIN, 10))
    out = run(events, cfg)
    assert [e.kind for e in out] == ["opened", "recovering", "resolved", "timeline"]
    assert out[1].at_ms == T0 + 41 * MIN
    assert out[2].at_ms == out[1].at_ms + 5 * MIN
    # The timeline is complete 10 minutes (the window after resolution) later (ADR 0019)
    assert out[3].at_ms == out[2].at_ms + 10 * MIN and out[3].seq == 4
    assert out[3].timeline is not None and out[3].timeline["complete"]
    # Three errors while recovering (not enough to reopen, enough to hold above the
    # re-arm level of a 0.5 share): the stretch restarts at the last boundary whose
    # window still holds them (43:30), so it resolves 5 minutes after that.
    held = run(merged(events, errors(PAY, T0 + 43 * MIN, 3)),
               DetectorConfig(window_ms=60_000, resolve_after_ms=5 * MIN, min_active_ms=0))
    assert [e.kind for e in held] == ["opened", "recovering", "resolved", "timeline"]
    assert held[2].at_ms == T0 + 43 * MIN + 30_000 + 5 * MIN


def test_reopens_from_recovering_and_keeps_the_id() -> None:
    cfg = DetectorConfig(window_ms=60_000, resolve_after_ms=5 * MIN, **NO_HYSTERESIS)
    events = merged(healthy("checkout", T0, 60), errors(PAY, T0 + 40 * MIN, 10),
                    errors(PAY, T0 + 43 * MIN, 10))
    out = run(events, cfg)
    assert [e.kind for e in out] == ["opened", "recovering", "reopened", "recovering",
                                     "resolved", "timeline"]
    assert len({e.incident_id for e in out}) == 1
    assert [e.seq for e in out] == [1, 2, 3, 4, 5, 6]


def test_a_family_that_spikes_again_after_resolving_gets_a_new_id() -> None:
    cfg = DetectorConfig(window_ms=60_000, baseline_windows=0, resolve_after_ms=MIN,
                         **NO_HYSTERESIS)
    events = merged(healthy("checkout", T0, 30), errors(PAY, T0 + 5 * MIN, 6),
                    errors(PAY, T0 + 9 * MIN, 6))
    out = run(events, cfg)
    opened = [e for e in out if e.kind == "opened"]
    assert len(opened) == 2
    assert opened[0].incident_id != opened[1].incident_id
    # Within the reference's 5-minute id bucket: its ids would have collided.
    assert opened[1].onset_ms - opened[0].onset_ms < 5 * MIN


def test_steady_errors_at_baseline_never_open() -> None:
    # One error every 150 s for two hours: four in any 10-minute window, never five.
    fam = Family("prod", "api", "GET /", "E500")
    events = merged(healthy("api", T0, 120),
                    [(t, "api", "GET /", fam) for t in range(T0 + 7_000, T0 + 120 * MIN, 150_000)])
    assert run(events) == []


def test_low_traffic_three_errors_out_of_four_requests_open_nothing() -> None:
    fam = Family("prod", "tiny", "GET /", "E500")
    events = [(T0 + k * 1000, "tiny", "GET /", fam if k < 3 else None) for k in range(4)]
    assert run(events) == []


def test_late_events_count_within_reach_and_are_dropped_beyond() -> None:
    det = PartitionDetector(DetectorConfig())
    run(healthy("checkout", T0, 60), detector=det)
    fam = Family("prod", "checkout", "GET /", "LATE")
    det.observe(T0 + 59 * MIN, "prod", "checkout", "GET /", fam)     # in time
    det.observe(T0 + 25 * MIN, "prod", "checkout", "GET /", fam)     # late, within 40 min
    det.observe(T0 + 5 * MIN, "prod", "checkout", "GET /", fam)      # beyond reach
    assert sum(det.families[fam].buckets.values()) == 2
    assert det.counters.late_dropped >= 1


def test_family_cap_counts_the_overflow_and_keeps_going() -> None:
    det = PartitionDetector(DetectorConfig(max_families=3))
    for k in range(10):
        det.observe(T0 + k, "prod", "api", "GET /", Family("prod", "api", "GET /", f"E{k}"))
    assert len(det.families) == 3
    assert det.counters.families_overflowed == 7


def test_idle_families_are_evicted_by_event_time() -> None:
    det = PartitionDetector(DetectorConfig())
    fam = Family("prod", "api", "GET /", "E1")
    det.observe(T0, "prod", "api", "GET /", fam)
    run(healthy("api", T0 + 1000, 41), detector=det)
    det.evict_idle()
    assert fam not in det.families and det.counters.families_evicted == 1


def test_a_silent_service_is_moved_by_the_partition_watermark_after_the_grace() -> None:
    cfg = DetectorConfig(idle_grace_ms=5 * MIN)
    events = merged(healthy("checkout", T0, 40), errors(PAY, T0 + 40 * MIN, 10),
                    healthy("search", T0, 70))  # checkout goes silent after its errors
    out = run(events, cfg)
    # The watermark moves it on until its timeline completes, too (ADR 0019)
    assert [e.kind for e in out] == ["opened", "recovering", "resolved", "timeline"]


def test_snapshot_survives_json() -> None:
    det = PartitionDetector(DetectorConfig())
    run(spike_scenario()[:3000], detector=det)
    snap = json.loads(json.dumps(det.snapshot()))
    assert PartitionDetector.restore(DetectorConfig(), snap).snapshot() == det.snapshot()


def test_snapshot_from_other_settings_is_refused() -> None:
    snap = PartitionDetector(DetectorConfig()).snapshot()
    try:
        PartitionDetector.restore(DetectorConfig(min_count=9), snap)
    except ValueError as exc:
        assert "settings" in str(exc)
    else:
        raise AssertionError("restore under other settings must fail")


SCENARIO = merged(healthy("checkout", T0, 70, step="payment.charge"),
                  errors(PAY, T0 + 40 * MIN, 40, every_ms=700),
                  healthy("search", T0, 70, every_ms=1300),
                  errors(Family("prod", "search", "GET /", "S1"), T0 + 45 * MIN, 20))
EXPECTED = run(SCENARIO)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(SCENARIO)), max_size=4))
def test_restart_at_any_point_gives_the_same_output(cuts: list[int]) -> None:
    """Checkpoint, throw the detector away, restore, go on: same events, byte for byte."""
    cfg = DetectorConfig()
    det = PartitionDetector(cfg)
    out: list[IncidentEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(SCENARIO)]:
        out += run(SCENARIO[start:cut], detector=det)
        det.drain_windows()
        det = PartitionDetector.restore(cfg, json.loads(json.dumps(det.snapshot())))
        start = cut
    assert out == EXPECTED


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, len(SCENARIO)), max_size=6))
def test_eviction_at_any_point_is_invisible(points: list[int]) -> None:
    det = PartitionDetector(DetectorConfig())
    out: list[IncidentEvent] = []
    start = 0
    for p in [*sorted(points), len(SCENARIO)]:
        out += run(SCENARIO[start:p], detector=det)
        det.evict_idle()
        start = p
    assert out == EXPECTED


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32))
def test_any_interleaving_of_services_gives_the_same_incidents(seed: int) -> None:
    """How services share a partition (1 or 6 partitions, any producer timing) changes the
    interleaving, never a service's own order; the incidents are the same."""
    per_service: dict[str, list[Ev]] = {}
    for e in SCENARIO:
        per_service.setdefault(e[1], []).append(e)
    rnd = random.Random(seed)
    queues = [list(reversed(v)) for v in per_service.values()]
    mixed: list[Ev] = []
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        mixed.append(q.pop())
    cfg = DetectorConfig(idle_grace_ms=10**9)
    assert sorted(run(mixed, cfg), key=lambda e: e.event_id) == \
        sorted(run(SCENARIO, cfg), key=lambda e: e.event_id)


def test_window_counts_drain_as_absolute_values() -> None:
    det = PartitionDetector(DetectorConfig())
    run(errors(PAY, T0, 3), detector=det)
    fams, steps = det.drain_windows()
    assert [(w.bucket_start_ms, w.errors) for w in fams] == [(T0 // 30_000 * 30_000, 3)]
    assert steps[0].requests == 3 and steps[0].errors == 3
    run(errors(PAY, T0 + 3000, 1), detector=det)
    fams, _ = det.drain_windows()
    assert fams[0].errors == 4, "absolute, so a replayed upsert converges"
    assert det.drain_windows() == ([], [])


def test_a_new_service_version_registers_a_deploy_but_not_the_first_or_a_rolling_mix() -> None:
    det = PartitionDetector(DetectorConfig())
    assert det.version_seen(T0, "prod", "checkout", "1.4.2") is None  # first seen
    assert det.version_seen(T0 + 1, "prod", "checkout", "1.4.2") is None
    changed = det.version_seen(T0 + 2, "prod", "checkout", "1.5.0")
    assert changed is not None and (changed.version, changed.previous, changed.t_ms) == \
        ("1.5.0", "1.4.2", T0 + 2)
    # A rolling deploy: old and new instances interleave; nothing more is registered.
    for k in range(10):
        version = "1.4.2" if k % 2 else "1.5.0"
        assert det.version_seen(T0 + 3 + k, "prod", "checkout", version) is None
    assert det.version_seen(T0 + 20, "staging", "checkout", "1.5.0") is None  # other env
    snap = json.loads(json.dumps(det.snapshot()))
    restored = PartitionDetector.restore(DetectorConfig(), snap)
    assert restored.version_seen(T0 + 30, "prod", "checkout", "1.6.0") is not None


def test_events_translated_again_after_a_crash_are_dropped_by_position() -> None:
    det = PartitionDetector(DetectorConfig())
    src = "otlp_spans:3"
    assert det.accept_source(src, (10, 0)) and det.accept_source(src, (10, 1))
    assert det.accept_source(src, (11, 0))
    assert det.accept_source("otlp_spans:4", (2, 0))  # another span partition
    # The batch from offset 10 is translated again: all of it was already counted ...
    assert not det.accept_source(src, (10, 0)) and not det.accept_source(src, (11, 0))
    # ... and what follows is new.
    assert det.accept_source(src, (12, 0))
    assert det.counters.duplicates_dropped == 2
    restored = PartitionDetector.restore(DetectorConfig(),
                                         json.loads(json.dumps(det.snapshot())))
    assert not restored.accept_source(src, (12, 0))
