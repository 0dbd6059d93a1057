"""The normalized Signal, the record every provider's payload becomes (ADR 0007).

A Signal is evidence, never a trigger: it correlates to incidents, an alert alone never
opens one. Its identity is ``signal_id`` = ``sig_`` + 16 hex of sha256(source | dedup key),
so every notification of the same provider-side thing (Alertmanager's repeat, a
PagerDuty acknowledge, a Kubernetes event's recurrence) is the same signal, and the folding
that counts occurrences can happen downstream without looking inside the payload.

``to_dict()`` gives exactly the fields of ``schemas/avro/signal.v1.avsc``
(``tocsin.signal.v1.Signal``), in its order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

SignalType = Literal["alert", "runtime", "deploy", "dependency"]
State = Literal["firing", "resolved", "acknowledged"]
Severity = Literal["critical", "warning", "info"]
RuntimeSubtype = Literal[
    "oom_killed", "crashloop", "readiness_fail", "liveness_fail", "panic",
    "uncaught_exception", "unhandled_rejection",
]

SIGNAL_TYPES: tuple[str, ...] = get_args(SignalType)
STATES: tuple[str, ...] = get_args(State)
SEVERITIES: tuple[str, ...] = get_args(Severity)
RUNTIME_SUBTYPES: tuple[str, ...] = get_args(RuntimeSubtype)
SOURCES = ("alertmanager", "grafana", "pagerduty", "sentry", "kubernetes", "ci", "native")


class IntakeError(ValueError):
    """A payload Tocsin cannot read. The message is written for the sender (an HTTP 400/422
    body): it names the provider, the field when one failed, and what was expected."""

    def __init__(self, message: str, field: str | None = None,
                 provider: str | None = None) -> None:
        self.field = field
        self.provider = provider
        where = f"{field}: " if field else ""
        who = f"{provider} payload: " if provider else ""
        super().__init__(f"{who}{where}{message}")


def signal_id(source: str, dedup_key: str) -> str:
    """``sig_`` + the first 16 hex digits of sha256(source | dedup key)."""
    return "sig_" + hashlib.sha256(f"{source}|{dedup_key}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One normalized signal. ``signal_id`` is computed, never passed; maps are stored with
    sorted keys so that the Avro bytes of equal signals are equal."""

    signal_id: str = field(init=False)
    dedup_key: str
    type: SignalType
    state: State
    source: str
    service: str | None = None
    env: str | None = None
    severity: Severity
    title: str
    reason: str | None = None
    description: str | None = None
    event_time_ms: int
    starts_at_ms: int | None = None
    ends_at_ms: int | None = None
    fingerprint: str | None = None
    provider_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    incident_id: str | None = None
    trace_id: str | None = None
    error_code: str | None = None
    downstream: str | None = None
    runtime_subtype: RuntimeSubtype | None = None
    pod: str | None = None
    container: str | None = None
    node: str | None = None
    exit_code: int | None = None
    restart_count: int | None = None
    version: str | None = None
    commit: str | None = None
    pr_url: str | None = None
    author: str | None = None
    occurrences: int = 1

    def __post_init__(self) -> None:
        _check(self.type in SIGNAL_TYPES, "type", self.type)
        _check(self.state in STATES, "state", self.state)
        _check(self.severity in SEVERITIES, "severity", self.severity)
        _check(self.source in SOURCES, "source", self.source)
        _check(self.runtime_subtype is None or self.runtime_subtype in RUNTIME_SUBTYPES,
               "runtime_subtype", self.runtime_subtype)
        _check(bool(self.dedup_key), "dedup_key", self.dedup_key)
        _check(self.occurrences >= 1, "occurrences", self.occurrences)
        object.__setattr__(self, "signal_id", signal_id(self.source, self.dedup_key))
        object.__setattr__(self, "labels", dict(sorted(self.labels.items())))
        object.__setattr__(self, "annotations", dict(sorted(self.annotations.items())))

    def to_dict(self) -> dict[str, Any]:
        """The Avro record ``tocsin.signal.v1.Signal``, field for field (maps copied)."""
        out: dict[str, Any] = {}
        for f in FIELDS:
            value = getattr(self, f)
            out[f] = dict(value) if isinstance(value, dict) else value
        return out


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ValueError(f"Signal.{name}: invalid value {value!r}")


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Signal))


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What one payload gave: its signals in payload order, and what it did not give.

    ``skipped`` says, for each part of the payload that is not a signal, why (a normal
    Kubernetes event, a PagerDuty ping); ``truncated`` counts the alerts the sender itself
    dropped (Alertmanager's ``truncatedAlerts``), which no parser can recover. Both belong in
    the intake's answer and metrics, so that nothing is dropped silently.
    """

    provider: str
    signals: tuple[Signal, ...]
    skipped: tuple[str, ...] = ()
    truncated: int = 0
