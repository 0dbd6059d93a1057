"""Spike rules, one table (ADR 0002): MIN_COUNT, MIN_LIFT against the median baseline,
the zero-baseline case and the optional MIN_RATE floor."""

from __future__ import annotations

import pytest

from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import FamilyState
from tocsin.processors.family import Family

FAM = Family("prod", "svc", "op", "E")


def window(count: int, priors: tuple[int, int, int], cfg: DetectorConfig) -> FamilyState:
    """Counts put in the first bucket of the current and of each prior window."""
    bpw = cfg.buckets_per_window
    fs = FamilyState(FAM)
    fs.buckets[0] = count
    for n, c in enumerate(priors, 1):
        fs.buckets[-bpw * n] = c
    return fs


@pytest.mark.parametrize(
    ("count", "priors", "settings", "opens"),
    [
        (4, (0, 0, 0), {}, False),                     # below MIN_COUNT
        (5, (0, 0, 0), {}, True),                      # zero baseline: MIN_COUNT alone
        (5, (2, 0, 0), {}, True),                      # median 0: one odd window ignored
        (5, (2, 2, 0), {}, False),                     # median 2: lift 2.5 < 3
        (6, (2, 2, 0), {}, True),                      # lift 3.0 exactly opens
        (30, (10, 11, 9), {}, True),
        (29, (10, 11, 9), {}, False),
        (5, (0, 0, 0), {"min_count": 6}, False),
        (10, (4, 4, 4), {"min_lift": 2.5}, True),
        (5, (0, 0, 0), {"min_rate_per_min": 1.0}, False),   # 0.5 errors/min in 10 min
        (10, (0, 0, 0), {"min_rate_per_min": 1.0}, True),   # 1.0 errors/min
        (5, (9, 9, 9), {"baseline_windows": 0}, True),      # no baseline configured
    ],
)
def test_spike_rule(count: int, priors: tuple[int, int, int], settings: dict[str, float],
                    opens: bool) -> None:
    cfg = DetectorConfig(**settings)  # type: ignore[arg-type]
    detector = PartitionDetector(cfg)
    qualifies, counted, _ = detector.evaluate(window(count, priors, cfg), 0)
    assert counted == count
    assert qualifies is opens


def test_window_must_be_whole_buckets() -> None:
    with pytest.raises(ValueError, match="whole number"):
        DetectorConfig(bucket_ms=7_000, window_ms=600_000)
