"""Prometheus Alertmanager webhook (``"version": "4"``) → one alert signal per alert.

Shape (alertmanager docs/configuration.md, ``<webhook_config>``): ``version``, ``groupKey``,
``truncatedAlerts``, ``status``, ``receiver``, ``groupLabels``, ``commonLabels``,
``commonAnnotations``, ``externalURL``, ``alerts[]`` of ``status``, ``labels``,
``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``. Extra keys
(Grafana OnCall's ``numFiring``/``numResolved``, newer ``notification_reason``) are ignored.
Alertmanager before 0.8 sent ``"version": "3"`` with the same alerts (its ``groupKey`` a
number, not a string); it is read exactly like version 4.

Decisions (ADR 0007):

- **Every alert** of the group becomes a signal, with **its own** ``status``: a group whose
  status is ``firing`` still carries the alerts that resolved since the last notification.
  An alert without a ``status`` of its own (trimmed payloads, e.g. prometheus-msteams'
  fixture) takes the group's.
- **Identity**: dedup key = ``fingerprint | startsAt`` (startsAt in epoch ms). Alertmanager
  re-sends a firing alert every repeat interval with the same startsAt (same signal), its
  resolve keeps that startsAt (same signal), and a re-fire after a resolve starts anew
  (new signal).
- **Missing fingerprint** (Alertmanager before it sent one, e.g. the 2018 payloads of
  metalmatze/alertmanager-bot): derived from the labels with Alertmanager's own algorithm,
  :func:`~tocsin.processors.signals.labels.label_fingerprint` (FNV-1a-64 over the sorted
  label names and values, each followed by a 0xff byte). It reproduces the fingerprints
  Alertmanager sent in the fixtures that carry both.
- **Times**: ``endsAt`` of a *firing* alert is Alertmanager's resolve-timeout estimate, not
  an end, so it is dropped; the zero time ``0001-01-01T00:00:00Z`` means unset. The event
  time is startsAt for a firing alert and endsAt for a resolved one.
- ``truncatedAlerts`` (alerts dropped by ``max_alerts``) cannot be recovered; it is
  reported in :attr:`IntakeResult.truncated`, never silently lost.
- Service from labels service / service_name / app / app_kubernetes_io_name / job; env from
  env / environment / deployment_environment; severity from the ``severity`` label (then
  ``priority``, ``level``) through the shared word map, ``warning`` when absent.
- Title: annotation ``summary`` (then ``title``), else the ``alertname``; reason: the
  ``alertname``; description: annotation ``description`` (then ``message``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.fields import Obj
from tocsin.processors.signals.labels import (
    ENV_KEYS,
    SERVICE_KEYS,
    SEVERITY_KEYS,
    correlation,
    first,
    label_fingerprint,
    severity_of,
)
from tocsin.processors.signals.model import IntakeResult, Signal

NAME = "alertmanager"
SHAPE = 'an Alertmanager webhook ("version": "4" and an "alerts" array)'
VERSION = "4"
VERSIONS = (VERSION, "3")  # "3": Alertmanager before 0.8, same alert layout
ALERT_STATUSES = ("firing", "resolved")


def matches(payload: Mapping[str, Any]) -> bool:
    return isinstance(payload.get("alerts"), list) and payload.get("version") in VERSIONS


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    """Signals of every alert of the notification, in payload order."""
    root = Obj.root(payload, NAME)
    version = root.req_str("version")
    if version not in VERSIONS:
        raise root.error("version", f'must be "{VERSION}" (Alertmanager webhook format '
                                    f'version 4, or the older "3"), got {version!r}')
    fallback_url = root.opt_str("externalURL")
    group_status = root.opt_str("status")
    signals = tuple(
        alert_signal(alert, NAME, (alert.opt_str("generatorURL"), fallback_url), group_status)
        for alert in root.objs("alerts")
    )
    return IntakeResult(NAME, signals, skipped=no_alerts(signals), truncated=truncated(root))


def no_alerts(signals: tuple[Signal, ...]) -> tuple[str, ...]:
    return () if signals else ("the notification carries no alerts",)


def truncated(root: Obj) -> int:
    """``truncatedAlerts``: how many alerts the sender dropped (0 when absent)."""
    count = root.opt_int("truncatedAlerts") or 0
    if count < 0:
        raise root.error("truncatedAlerts", "must not be negative")
    return count


def alert_signal(alert: Obj, source: str, urls: tuple[str | None, ...],
                 group_status: str | None = None) -> Signal:
    """One Alertmanager-format alert (Alertmanager or Grafana) as a Signal.

    ``urls`` are the candidate provider links, best first; the first non-empty one wins.
    ``group_status`` (the notification's) stands in for an alert without a status.
    """
    status = (alert.req_choice("status", ALERT_STATUSES) if alert.has("status")
              or group_status is None else group_status)
    if status not in ALERT_STATUSES:
        raise alert.error("status", f"absent, and the notification's status {status!r} is "
                                    f"not one of {', '.join(ALERT_STATUSES)}")
    labels = alert.str_map("labels")
    annotations = alert.str_map("annotations")
    starts_at = alert.req_time("startsAt")
    ends_at = alert.opt_time("endsAt") if status == "resolved" else None
    fingerprint = alert.opt_str("fingerprint") or label_fingerprint(labels)
    alertname = labels.get("alertname") or None
    keys = correlation(labels, annotations)
    return Signal(
        dedup_key=f"{fingerprint}|{starts_at}",
        type="alert",
        state="firing" if status == "firing" else "resolved",
        source=source,
        service=first((labels,), SERVICE_KEYS),
        env=first((labels,), ENV_KEYS),
        severity=severity_of(first((labels,), SEVERITY_KEYS), "warning"),
        title=first((annotations,), ("summary", "title")) or alertname or "alert",
        reason=alertname,
        description=first((annotations,), ("description", "message")),
        event_time_ms=ends_at if ends_at is not None else starts_at,
        starts_at_ms=starts_at,
        ends_at_ms=ends_at,
        fingerprint=fingerprint,
        provider_url=next((u for u in urls if u), None),
        labels=labels,
        annotations=annotations,
        incident_id=keys.incident_id,
        trace_id=keys.trace_id,
        error_code=keys.error_code,
        downstream=keys.downstream,
    )
