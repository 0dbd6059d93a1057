"""No flapping (ADR 0002, hysteresis): a family hovering around its threshold is one
incident, not an open/resolve storm — a minimum active time, a re-arm threshold below the
open threshold, recovery after a quiet stretch. Pure, on fake event times."""

from __future__ import annotations

import pytest

from tests.unit.test_detector import MIN, PAY, T0, Ev, errors, healthy, merged, run
from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.lifecycle import IncidentEvent

OFF = {"min_active_ms": 0, "rearm_ratio": 1.0}
# Only MIN_COUNT decides (no baseline): the plainest threshold to hover around.
COUNT_ONLY = {"baseline_windows": 0}


def hovering(hours: int = 3) -> list[Ev]:
    """Two errors every 4 minutes: the 10-minute window holds 4 to 6 of them, crossing
    MIN_COUNT (5) up and down all the time, with 4-minute gaps longer than
    RESOLVE_AFTER (2 minutes) between the pairs. Then an hour of quiet."""
    pairs = [e for k in range(hours * 15)
             for e in errors(PAY, T0 + 10 * MIN + k * 4 * MIN, 2)]
    return merged(healthy("checkout", T0, 60 * (hours + 2), step="payment.charge"), pairs)


def opened(out: list[IncidentEvent]) -> list[IncidentEvent]:
    return [e for e in out if e.kind == "opened"]


def test_a_family_hovering_at_its_threshold_is_one_incident_not_a_storm() -> None:
    storm = run(hovering(), DetectorConfig(**COUNT_ONLY, **OFF))  # type: ignore[arg-type]
    assert len(opened(storm)) >= 10  # what the damper is for
    calm = run(hovering(), DetectorConfig(**COUNT_ONLY))  # type: ignore[arg-type]
    assert len(opened(calm)) == 1
    assert [e.kind for e in calm] == ["opened", "recovering", "resolved", "timeline"]
    # It recovers only once the pairs stop and the window falls to the re-arm level.
    last_pair = T0 + 10 * MIN + 44 * 4 * MIN + 1_000
    assert calm[1].at_ms > last_pair and calm[1].window_count <= 2


def test_an_incident_stays_active_for_min_active_before_it_recovers() -> None:
    """A 1-minute window drains a minute after a short burst; MIN_ACTIVE (5 min) holds it
    active until then, counted from the opening."""
    events = merged(healthy("checkout", T0, 30, step="payment.charge"),
                    errors(PAY, T0 + 10 * MIN, 6))
    cfg = DetectorConfig(window_ms=MIN, **COUNT_ONLY)  # type: ignore[arg-type]
    out = run(events, cfg)
    assert [e.kind for e in out] == ["opened", "recovering", "resolved", "timeline"]
    assert out[1].at_ms - out[0].at_ms >= cfg.min_active_ms
    assert out[1].at_ms - out[0].at_ms < cfg.min_active_ms + cfg.bucket_ms
    quick = run(events, DetectorConfig(window_ms=MIN, **COUNT_ONLY, **OFF))  # type: ignore[arg-type]
    assert quick[1].at_ms - quick[0].at_ms < 2 * MIN


def test_a_resolved_family_re_arms_only_below_the_re_arm_threshold() -> None:
    """After a person resolves, errors that keep the window above REARM x MIN_COUNT open
    nothing; once it falls below, the next spike opens a new incident."""
    from tocsin.processors.actions import Command

    det = PartitionDetector(DetectorConfig(**COUNT_ONLY))  # type: ignore[arg-type]
    out = run(merged(healthy("checkout", T0, 12, step="payment.charge"),
                     errors(PAY, T0 + 10 * MIN, 6)), detector=det)
    first = opened(out)[0]
    resolved = det.act(Command("act_1", first.incident_id, "resolve", "ana",
                               T0 + 11 * MIN, "checkout", "prod"))
    assert not isinstance(resolved, type(None)) and det.families[PAY].armed is False
    # 3 errors a minute later: the window (6 + 3) still holds above 2.5: nothing opens.
    out = run(merged(healthy("checkout", T0 + 12 * MIN, 10, step="payment.charge"),
                     errors(PAY, T0 + 12 * MIN, 3)), detector=det)
    assert opened(out) == [] and det.families[PAY].armed is False
    # 20 quiet minutes: the window drains; the next error re-arms, the 5th opens anew.
    out = run(merged(healthy("checkout", T0 + 22 * MIN, 20, step="payment.charge"),
                     errors(PAY, T0 + 35 * MIN, 6)), detector=det)
    assert len(opened(out)) == 1 and opened(out)[0].incident_id != first.incident_id


def test_hysteresis_is_relative_to_the_baseline_for_busy_families() -> None:
    """A family with 2 errors a minute never has a quiet minute, let alone RESOLVE_AFTER.
    It opens when it starts (no baseline yet); once its baseline is known it recovers and
    resolves while the errors go on; a jump to 80 in 10 minutes opens a new incident,
    which resolves back at the baseline: the lift's re-arm level is 1 + 0.5 x (3 - 1) = 2
    x the baseline, not an absolute count the family never gets below."""
    background = [e for m in range(0, 120, 1) for e in errors(PAY, T0 + m * MIN, 2, 100)]
    spike = errors(PAY, T0 + 70 * MIN + 500, 60, 1000)
    out = run(merged(healthy("checkout", T0, 150, step="payment.charge"), background, spike))
    assert [e.kind for e in out] == ["opened", "recovering", "resolved", "timeline"] * 2
    second = out[4:]
    assert T0 + 70 * MIN < second[0].at_ms < T0 + 71 * MIN
    assert second[2].at_ms < T0 + 110 * MIN  # while the background errors go on
    assert second[1].window_count < 2 * second[1].baseline


@pytest.mark.parametrize(("share", "count", "holds"), [
    (0.5, 3, True), (0.5, 2, False), (1.0, 5, True), (1.0, 4, False), (0.2, 1, True),
    (0.2, 0, False)])
def test_the_re_arm_level_is_a_share_of_min_count(share: float, count: int, holds: bool
                                                  ) -> None:
    det = PartitionDetector(DetectorConfig(rearm_ratio=share, **COUNT_ONLY))  # type: ignore[arg-type]
    run(errors(PAY, T0, count) if count else [(T0, "checkout", "x", None)], detector=det)
    fs = det.families.get(PAY)
    assert (fs is not None and det.holds(fs, T0 // det.config.bucket_ms)) is holds


def test_settings_out_of_range_are_refused() -> None:
    for bad in ({"rearm_ratio": 0}, {"rearm_ratio": 1.5}, {"min_active_ms": -1}):
        with pytest.raises(ValueError):
            DetectorConfig(**bad)  # type: ignore[arg-type]
