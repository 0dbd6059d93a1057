"""Detection settings: the reference defaults, all configurable, validated once."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tocsin.processors.timeline import TimelineConfig


class DetectorConfig(BaseModel):
    """Spike detection and lifecycle settings (ADR 0002, ADR 0003)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket_ms: int = Field(30_000, gt=0, description="evaluation step: tumbling bucket size")
    window_ms: int = Field(600_000, gt=0, description="W: trailing window counted")
    baseline_windows: int = Field(3, ge=0, description="prior windows in the median baseline")
    min_count: int = Field(5, ge=1, description="MIN_COUNT: errors in the window to open")
    min_lift: float = Field(3.0, ge=1.0, description="MIN_LIFT: count / baseline to open")
    min_rate_per_min: float | None = Field(
        None, ge=0, description="MIN_RATE: errors per minute floor (off by default)"
    )
    resolve_after_ms: int = Field(120_000, ge=0, description="RESOLVE_AFTER: quiet time")
    min_active_ms: int = Field(
        300_000, ge=0, description="MIN_ACTIVE: an incident stays active this long after it "
        "opened or reopened before it may recover")
    rearm_ratio: float = Field(
        0.5, gt=0, le=1, description="REARM: an active incident recovers, and a family "
        "whose incident resolved re-arms, only below this share of the open thresholds "
        "(MIN_COUNT, MIN_RATE; lift 1 + REARM x (MIN_LIFT - 1)); 1 = no hysteresis")
    idle_grace_ms: int = Field(
        300_000, ge=0, description="how far a silent service may lag its partition"
    )
    max_families: int = Field(20_000, ge=1, description="tracked families per partition")
    timeline_before_ms: int = Field(
        300_000, ge=0, description="the incident timeline starts this long before onset")
    timeline_after_ms: int = Field(
        600_000, ge=0, description="the incident timeline ends this long after resolution")
    timeline_max_points: int = Field(
        360, ge=2, description="points a timeline keeps; a longer incident's middle points "
        "are left out of the series (truncated) and still counted in its summary")

    @model_validator(mode="after")
    def _window_is_whole_buckets(self) -> DetectorConfig:
        if self.window_ms % self.bucket_ms:
            raise ValueError("window_ms must be a whole number of bucket_ms")
        head = self.timeline_max_points // 2
        tail = self.timeline_max_points - head
        if head <= self.timeline_before_ms // self.bucket_ms or tail <= max(
                self.retained_buckets, self.timeline_after_ms // self.bucket_ms):
            raise ValueError(
                "timeline_max_points must keep the buffer before onset in its first half, "
                "and the window after resolution and the lateness horizon (window x "
                "(baseline_windows + 1)) in its second half: raise it, or shorten those")
        return self

    @property
    def timeline(self) -> TimelineConfig:
        return TimelineConfig(self.timeline_before_ms, self.timeline_after_ms,
                              self.timeline_max_points)

    @property
    def buckets_per_window(self) -> int:
        return self.window_ms // self.bucket_ms

    @property
    def retained_buckets(self) -> int:
        """Buckets a family keeps: the window and the baseline windows before it."""
        return self.buckets_per_window * (self.baseline_windows + 1)

    @property
    def evict_after_ms(self) -> int:
        """A family with no open incident and no error for this long is forgotten."""
        return self.window_ms * (self.baseline_windows + 1)

    def fingerprint(self) -> str:
        """Short hash of the settings; state written under other settings is not reused."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
