"""Tocsin's own JSON form: the Signal's fields directly, validated, with defaults.

This is how ``dependency`` signals arrive, and how anything without a webhook of its own
(an SDK's panic handler, a load balancer's health check) reports. The fields are those of
``signal.v1`` (ADR 0007); unknown fields are refused, so a typo is a clear 422 rather than
a silently empty field. Only ``type`` is required, plus a time: ``event_time_ms`` or
``timestamp`` (RFC 3339 with an offset), else the intake's receive time.

Defaults: ``source`` native (another source is accepted, so that a normalized signal read
back from the topic re-enters unchanged); ``state`` firing; ``severity`` info for a deploy,
warning otherwise; ``title`` made from the type and what it names; ``starts_at_ms`` the
event time when absent (an explicit ``null`` stays null: a resolve read back from the topic
has no start of its own); ``dedup_key`` the ``fingerprint`` when given, else ``derived:`` +
16 hex of sha256 over type, service, env, reason, title, downstream, runtime subtype, pod,
container, version, commit and an explicit ``starts_at_ms`` (so re-sent copies fold). A
given ``signal_id`` must equal the one computed from source and dedup key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tocsin.processors.signals.fields import time_ms
from tocsin.processors.signals.labels import correlation
from tocsin.processors.signals.model import (
    SIGNAL_TYPES,
    IntakeError,
    IntakeResult,
    RuntimeSubtype,
    Severity,
    Signal,
    SignalType,
    State,
    signal_id,
)

NAME = "native"
SHAPE = ('a Tocsin native signal ("type": alert | runtime | deploy | dependency, with the '
         "signal.v1 fields)")

MAX_ERRORS = 5  # per answer: enough to fix a payload, short enough to read


def _text() -> Any:
    """An optional string that, when given, is not empty."""
    return Field(default=None, min_length=1)


class NativeSignal(BaseModel):
    """The native JSON form; every field of ``signal.v1`` but ``signal_id`` is optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: SignalType
    signal_id: str | None = None
    dedup_key: str | None = _text()
    state: State = "firing"
    source: str = NAME
    service: str | None = _text()
    env: str | None = _text()
    severity: Severity | None = None
    title: str | None = _text()
    reason: str | None = None
    description: str | None = None
    event_time_ms: int | None = Field(default=None, ge=0)
    timestamp: str | None = None
    starts_at_ms: int | None = Field(default=None, ge=0)
    ends_at_ms: int | None = Field(default=None, ge=0)
    fingerprint: str | None = _text()
    provider_url: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    incident_id: str | None = None
    trace_id: str | None = None
    error_code: str | None = None
    downstream: str | None = _text()
    runtime_subtype: RuntimeSubtype | None = None
    pod: str | None = None
    container: str | None = None
    node: str | None = None
    exit_code: int | None = None
    restart_count: int | None = Field(default=None, ge=0)
    version: str | None = None
    commit: str | None = None
    pr_url: str | None = None
    author: str | None = None
    occurrences: int = Field(default=1, ge=1)


def matches(payload: Mapping[str, Any]) -> bool:
    return payload.get("type") in SIGNAL_TYPES


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    if not isinstance(payload, Mapping):
        raise IntakeError("a native signal is a JSON object", provider=NAME)
    try:
        native = NativeSignal.model_validate(dict(payload))
    except ValidationError as exc:
        errors = exc.errors()
        more = f"; and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise IntakeError("; ".join(_describe(e) for e in errors[:MAX_ERRORS]) + more,
                          provider=NAME) from exc
    return IntakeResult(NAME, (to_signal(native, received_ms),))


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(payload)"
    return f"{where}: {error['msg']}"


def to_signal(n: NativeSignal, received_ms: int | None = None) -> Signal:
    event_ms = _event_time(n, received_ms)
    dedup = n.dedup_key or n.fingerprint or _derived_key(n)
    if n.signal_id is not None and n.signal_id != signal_id(n.source, dedup):
        raise IntakeError(f"does not match source {n.source!r} and dedup key {dedup!r}",
                          field="signal_id", provider=NAME)
    keys = correlation(n.labels, n.annotations)
    try:
        return Signal(
            dedup_key=dedup, type=n.type, state=n.state, source=n.source, service=n.service,
            env=n.env, severity=n.severity or ("info" if n.type == "deploy" else "warning"),
            title=n.title or _default_title(n), reason=n.reason, description=n.description,
            event_time_ms=event_ms,
            starts_at_ms=(n.starts_at_ms if n.starts_at_ms is not None
                          or "starts_at_ms" in n.model_fields_set else event_ms),
            ends_at_ms=n.ends_at_ms, fingerprint=n.fingerprint, provider_url=n.provider_url,
            labels=n.labels, annotations=n.annotations,
            incident_id=n.incident_id or keys.incident_id,
            trace_id=n.trace_id or keys.trace_id,
            error_code=n.error_code or keys.error_code,
            downstream=n.downstream or keys.downstream,
            runtime_subtype=n.runtime_subtype, pod=n.pod, container=n.container, node=n.node,
            exit_code=n.exit_code, restart_count=n.restart_count, version=n.version,
            commit=n.commit, pr_url=n.pr_url, author=n.author, occurrences=n.occurrences,
        )
    except IntakeError as exc:  # an integer outside signal.v1's range
        raise exc.of(NAME) from exc
    except ValueError as exc:  # source outside the known set
        raise IntakeError(str(exc).removeprefix("Signal."), provider=NAME) from exc


def _event_time(n: NativeSignal, received_ms: int | None) -> int:
    if n.event_time_ms is not None:
        return n.event_time_ms
    if n.timestamp is not None:
        try:
            parsed = time_ms(n.timestamp)
        except ValueError as exc:
            raise IntakeError(str(exc), field="timestamp", provider=NAME) from exc
        if parsed is not None:
            return parsed
    if received_ms is None:
        raise IntakeError("required: event_time_ms (epoch ms) or timestamp (RFC 3339)",
                          field="event_time_ms", provider=NAME)
    return received_ms


def _derived_key(n: NativeSignal) -> str:
    parts = [n.type, n.service, n.env, n.reason, n.title, n.downstream, n.runtime_subtype,
             n.pod, n.container, n.version, n.commit, n.starts_at_ms]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return f"derived:{digest}"


def _default_title(n: NativeSignal) -> str:
    subject = n.downstream if n.type == "dependency" and n.downstream else n.service
    detail = {"deploy": n.version or n.commit, "runtime": n.runtime_subtype,
              "dependency": n.reason, "alert": n.reason}[n.type]
    return " ".join(p for p in (n.type, subject or "unknown", detail) if p)
