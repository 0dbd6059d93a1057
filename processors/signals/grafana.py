"""Grafana-managed (unified) alerting webhook, ``"version": "1"``, Grafana 9 to 11.

Grafana's contact point sends Alertmanager's layout plus its own keys: top level
``orgId``, ``title``, ``state`` (``alerting`` / ``ok``), ``message``; per alert
``silenceURL``, ``dashboardURL``, ``panelURL`` (often ``""``), and the evaluated numbers as
``valueString`` (Grafana 9) or ``values`` (later docs), not always both. Every alert is read
exactly like an Alertmanager alert (:func:`alertmanager.alert_signal`): own status, dedup
key ``fingerprint | startsAt``, endsAt of a firing alert and the zero time dropped.

Differences from Alertmanager (ADR 0007):

- Link: ``panelURL``, then ``dashboardURL``, then ``generatorURL`` (the rule), then
  ``externalURL``; ``""`` counts as absent.
- The group-level ``title``, ``state`` and ``message`` describe the whole notification
  (``[FIRING:2] (blue)``), not an alert, so they are not copied onto signals; the values
  change at every evaluation and are not identity, so they are not kept either.
- A missing ``fingerprint`` is derived with Alertmanager's label algorithm. Grafana's own
  fingerprints also hash labels it strips before sending (the docs' and Zulip's fixtures do
  not reproduce from their labels), so a derived one is a stable stand-in, not Grafana's.
- Grafana has no severity of its own: the ``severity`` label when a rule sets one, else
  ``warning``.
- Legacy (pre-unified) Grafana alerts (``ruleName``, ``evalMatches``) are not accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.alertmanager import alert_signal, no_alerts, truncated
from tocsin.processors.signals.fields import Obj
from tocsin.processors.signals.model import IntakeResult

NAME = "grafana"
SHAPE = ('a Grafana alerting webhook ("version": "1", or "orgId", with an "alerts" '
         "array)")
VERSION = "1"
_GRAFANA_ALERT_KEYS = ("silenceURL", "dashboardURL", "panelURL", "valueString", "values")


def matches(payload: Mapping[str, Any]) -> bool:
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        return "ruleName" in payload and "evalMatches" in payload  # legacy: refused later
    if payload.get("version") == VERSION or "orgId" in payload:
        return True
    return any(isinstance(a, Mapping) and any(k in a for k in _GRAFANA_ALERT_KEYS)
               for a in alerts)


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    """Signals of every alert of the notification, in payload order."""
    root = Obj.root(payload, NAME)
    if root.has("ruleName") or root.has("evalMatches"):
        raise root.error("ruleName", "legacy Grafana alerting is not supported; use a "
                                     "Grafana-managed alert rule's webhook contact point")
    version = root.opt_str("version")
    if version is not None and version != VERSION:
        raise root.error("version", f'must be "{VERSION}" (Grafana webhook format), '
                                    f"got {version!r}")
    external = root.opt_str("externalURL")
    signals = tuple(
        alert_signal(alert, NAME, (alert.opt_str("panelURL"), alert.opt_str("dashboardURL"),
                                   alert.opt_str("generatorURL"), external))
        for alert in root.objs("alerts")
    )
    return IntakeResult(NAME, signals, skipped=no_alerts(signals), truncated=truncated(root))
