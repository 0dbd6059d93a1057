"""What a partition's detector holds and gives out, as plain data: a family's state, the
counters of what it dropped, the window rows it publishes and the deploys it registers
(the rules that use them are in :mod:`tocsin.processors.detector`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tocsin.processors.config import DetectorConfig
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import OpenIncident


@dataclass(frozen=True, slots=True)
class VersionChanged:
    """A service's version changed on incoming events: a deploy, registered (ADR 0007)."""

    service: str
    env: str
    version: str
    previous: str
    t_ms: int


@dataclass(slots=True)
class FamilyState:
    family: Family
    buckets: dict[int, int] = field(default_factory=dict)
    last_error_ms: int = 0
    incident: OpenIncident | None = None
    downstream: str | None = None  # of the latest error, in log order
    traces: list[str] = field(default_factory=list)  # latest error trace ids, log order
    # False after a person resolved the family's incident while its window still
    # qualified: no new incident opens until the window stops qualifying (ADR 0016).
    armed: bool = True
    # The settings that apply to this family (the rules file's, ADR 0022); not state:
    # set again from the rules when a checkpoint is restored.
    config: DetectorConfig | None = None
    # A per-step rule's family (ERROR_RATE, LATENCY): its rule; None for error families
    step_rule: Any = None


@dataclass(slots=True)
class Counters:
    """What the detector had to drop or forget, for metrics; never silent."""

    late_dropped: int = 0
    families_overflowed: int = 0
    families_evicted: int = 0
    duplicates_dropped: int = 0
    actions_repeated: int = 0  # an applied action's command read again: applied once
    closed_forgotten: int = 0  # resolved incidents past CLOSED_KEPT_MS or MAX_CLOSED

    def as_dict(self) -> dict[str, int]:
        return {
            "late_dropped": self.late_dropped,
            "families_overflowed": self.families_overflowed,
            "families_evicted": self.families_evicted,
            "duplicates_dropped": self.duplicates_dropped,
            "actions_repeated": self.actions_repeated,
            "closed_forgotten": self.closed_forgotten,
        }


class FamilyWindow(NamedTuple):
    """Absolute error count of one family in one bucket (an upsert, idempotent)."""

    env: str
    family: str
    service: str
    step: str
    error_code: str
    bucket_start_ms: int
    errors: int


class StepWindow(NamedTuple):
    """Absolute request and error counts of one (env, service, step) in one bucket."""

    env: str
    service: str
    step: str
    bucket_start_ms: int
    requests: int
    errors: int
