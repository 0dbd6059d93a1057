"""The normalized Signal, the record every provider's payload becomes (ADR 0007).

A Signal is evidence, never a trigger: it correlates to incidents, an alert alone never
opens one. Its identity is ``signal_id`` = ``sig_`` + 16 hex of sha256(source | dedup key),
so every notification of the same provider-side thing (Alertmanager's repeat, a
PagerDuty acknowledge, a Kubernetes event's recurrence) is the same signal, and the folding
that counts occurrences can happen downstream without looking inside the payload.

``to_dict()`` gives exactly the fields of ``schemas/avro/signal.v1.avsc``
(``tocsin.signal.v1.Signal``), in its order, and every Signal can be written as one: its
integers are held to the schema's ``int`` and ``long`` ranges when it is made
(:data:`INT_RANGES`), so a payload with an exit code of 2**31 is an :class:`IntakeError`
naming the field, not a signal that fails on its way to the topic.
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

AVRO_INT = (-(1 << 31), (1 << 31) - 1)
AVRO_LONG = (-(1 << 63), (1 << 63) - 1)
INT_RANGES: dict[str, tuple[int, int]] = {
    "event_time_ms": AVRO_LONG, "starts_at_ms": AVRO_LONG, "ends_at_ms": AVRO_LONG,
    "exit_code": AVRO_INT, "restart_count": AVRO_INT, "occurrences": AVRO_INT,
}
"""The integer fields of signal.v1 and the range of their Avro type (int or long)."""


class IntakeError(ValueError):
    """A payload Tocsin cannot read. The message is written for the sender (an HTTP 400/422
    body): it names the provider, the field when one failed, and what was expected."""

    def __init__(self, message: str, field: str | None = None,
                 provider: str | None = None) -> None:
        self.problem = message
        self.field = field
        self.provider = provider
        where = f"{field}: " if field else ""
        who = f"{provider} payload: " if provider else ""
        super().__init__(f"{who}{where}{message}")

    def of(self, provider: str) -> IntakeError:
        """This error said of ``provider``'s payload (itself when it already names one)."""
        if self.provider is not None:
            return self
        return IntakeError(self.problem, self.field, provider)


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
        for name, (low, high) in INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high)
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


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """An integer field within its Avro type's range; None passes (the optional ones)."""
    if value is None and name not in ("event_time_ms", "occurrences"):
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise IntakeError(f"must be an integer, got {type(value).__name__}", field=name)
    if not low <= value <= high:
        kind = "int" if high < 1 << 32 else "long"
        raise IntakeError(f"{value} does not fit signal.v1's {kind} "
                          f"({low} to {high})", field=name)


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
