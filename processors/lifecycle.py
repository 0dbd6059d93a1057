"""Incident lifecycle: active -> recovering -> resolved, with reopen (ADR 0003), and the
response phase people move with their actions (ADR 0016).

Every change, the machine's and people's, is an :class:`IncidentEvent` with a
deterministic identity, ``(incident_id, seq)``, so a re-emission after a crash is
recognised downstream. Times are event times; an action's time is the one its command
recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tocsin.processors.family import Family

RULE = "spike.v1"
# The families of the rules file's per-step rules, and the rule each is read by (ADR 0022)
STEP_RULES = {"ERROR_RATE": "error_rate.v1", "LATENCY": "latency.v1"}
RUNTIME_STEP = "@runtime"  # the step of a [runtime] rule's family: service:@runtime:REASON
RUNTIME_RULE = "runtime.v1"

Kind = Literal["opened", "recovering", "reopened", "resolved", "acknowledged",
               "investigating", "mitigated", "annotated", "hypothesis", "timeline"]
Status = Literal["active", "recovering", "resolved"]
ACTIONS_KEPT = 32  # action ids an incident remembers, so a command read twice applies once


def incident_id(family: Family, onset_ms: int) -> str:
    """``inc_`` + 16 hex of sha256(env | service | step | code | onset in ms).

    The onset is the family's event time at opening, to the millisecond; a family opens its
    next incident only after the previous one resolved, at a strictly later time, so an id
    is never reused (the reference truncated to 5 minutes and could collide).
    """
    material = "|".join((*family, str(onset_ms)))
    return "inc_" + hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One lifecycle change, as published on the incidents topic."""

    incident_id: str
    seq: int
    kind: Kind
    status: Status
    env: str
    service: str
    step: str
    error_code: str
    family: str
    onset_ms: int
    at_ms: int
    window_count: int
    baseline: float
    lift: float | None
    peak_count: int
    error_count: int
    last_error_ms: int
    rule: str = RULE
    downstream: str | None = None
    sample_trace_ids: tuple[str, ...] = ()
    phase: str = "triggered"
    # An operator action's (None on the machine's changes): its identity, who, what
    action_id: str | None = None
    actor: str | None = None
    note: str | None = None
    title: str | None = None
    hypothesis_status: str | None = None
    # The incident timeline so far (ADR 0019), on the changes that move the lifecycle;
    # complete on the `timeline` event, once the window after resolution is over
    timeline: dict[str, Any] | None = None
    # The rules file the change was decided under (ADR 0022); None: the built-in settings
    rules_hash: str | None = None

    @property
    def event_id(self) -> str:
        return f"{self.incident_id}:{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        """The event as it goes on the wire (the news fields of ``updated`` events, which
        triage makes, empty: ADR 0018)."""
        out = asdict(self)
        out["sample_trace_ids"] = list(self.sample_trace_ids)
        out.update(added=[], removed=[], news_signature=None, news_cause=None,
                   report_hash=None)
        return out


@dataclass(slots=True)
class OpenIncident:
    """The mutable record of a family's open incident (active or recovering)."""

    incident_id: str
    onset_ms: int
    status: Status
    seq: int
    status_since_ms: int
    peak_count: int
    error_count: int
    downstream: str | None = None
    sample_traces: list[str] = field(default_factory=list)
    phase: str = "triggered"
    held: bool = False  # reopened by a person: only a person resolves it again
    actions: list[str] = field(default_factory=list)  # the last ACTIONS_KEPT applied
    # When it resolved: its family's last error, window count and baseline then (what a
    # later action on the resolved incident reports, whatever the family did since)
    closed_at: list[Any] | None = None

    def to_list(self) -> list[Any]:
        return [
            self.incident_id, self.onset_ms, self.status, self.seq,
            self.status_since_ms, self.peak_count, self.error_count, self.downstream,
            list(self.sample_traces), self.phase, self.held, list(self.actions),
            self.closed_at,
        ]

    @classmethod
    def from_list(cls, raw: list[Any]) -> OpenIncident:
        return cls(*raw)


def lift_of(count: int, base: float) -> float | None:
    """count / baseline; None when the baseline is zero (only MIN_COUNT applied)."""
    return round(count / base, 6) if base > 0 else None


def event(
    incident: OpenIncident,
    family: Family,
    kind: Kind,
    at_ms: int,
    window_count: int,
    base: float,
    last_error_ms: int,
    timeline: dict[str, Any] | None = None,
    **action: str | None,
) -> IncidentEvent:
    """Advance the incident's sequence and describe the change (``action``: an operator
    action's ``action_id``, ``actor``, ``note``, ``title``, ``hypothesis_status``)."""
    incident.seq += 1
    return IncidentEvent(
        incident_id=incident.incident_id,
        seq=incident.seq,
        kind=kind,
        status=incident.status,
        env=family.env,
        service=family.service,
        step=family.step,
        error_code=family.error_code,
        family=family.key,
        onset_ms=incident.onset_ms,
        at_ms=at_ms,
        window_count=window_count,
        baseline=base,
        lift=lift_of(window_count, base),
        peak_count=incident.peak_count,
        error_count=incident.error_count,
        last_error_ms=last_error_ms,
        downstream=incident.downstream,
        sample_trace_ids=tuple(incident.sample_traces),
        phase=incident.phase,
        timeline=timeline,
        rule=RUNTIME_RULE if family.step == RUNTIME_STEP
        else STEP_RULES.get(family.error_code, RULE),
        **action,
    )
