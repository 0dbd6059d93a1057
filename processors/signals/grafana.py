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

**Legacy (dashboard) alerting**, Grafana 4 to 10 (removed in 11), sends one rule per
notification and no ``alerts`` array: ``title`` (``[Alerting] …``), ``ruleId``, ``ruleName``,
``ruleUrl``, ``state``, ``message``, ``evalMatches[]`` (``value``, ``metric``, ``tags``), the
rule's own ``tags`` (Grafana 6 and later), ``orgId``, ``dashboardId``, ``panelId`` and
``imageUrl``. A paused rule's notification has no ``evalMatches`` at all. Read as one alert
signal (these senders are still deployed, so they are read, not refused):

- State: ``alerting`` and ``no_data`` → firing, ``ok`` → resolved; ``paused``, ``pending``
  and ``unknown`` notify about the rule, not an alert, and are skipped with a note.
- Identity: ``legacy:`` + the org, dashboard, panel and rule ids it has
  (``legacy:org=1,dashboard=2,panel=6,rule=3``), else the rule URL, else its name. The
  payload has no start time, so every firing of a rule is the same signal.
- Time: none in the payload, so the intake's receive time (refused without it).
- Labels: the rule's ``tags``, plus the tags every eval match shares; service, env and
  severity are looked up there (``warning`` when absent). Title and reason: ``ruleName``;
  description: ``message``; link: ``ruleUrl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.alertmanager import alert_signal, no_alerts, truncated
from tocsin.processors.signals.fields import Obj
from tocsin.processors.signals.labels import (
    ENV_KEYS,
    SERVICE_KEYS,
    SEVERITY_KEYS,
    correlation,
    first,
    severity_of,
)
from tocsin.processors.signals.model import IntakeError, IntakeResult, Signal, State

NAME = "grafana"
SHAPE = ('a Grafana alerting webhook ("version": "1", or "orgId", with an "alerts" '
         'array; or a legacy one with "ruleName" and "state")')
VERSION = "1"
_GRAFANA_ALERT_KEYS = ("silenceURL", "dashboardURL", "panelURL", "valueString", "values")
LEGACY_STATES: dict[str, State] = {"alerting": "firing", "no_data": "firing",
                                   "ok": "resolved"}


def _is_legacy(payload: Mapping[str, Any]) -> bool:
    return "ruleName" in payload and ("evalMatches" in payload or "state" in payload)


def matches(payload: Mapping[str, Any]) -> bool:
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        return _is_legacy(payload)
    if payload.get("version") == VERSION or "orgId" in payload:
        return True
    return any(isinstance(a, Mapping) and any(k in a for k in _GRAFANA_ALERT_KEYS)
               for a in alerts)


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    """Signals of every alert of the notification, in payload order."""
    root = Obj.root(payload, NAME)
    if not isinstance(root.raw("alerts"), list) and _is_legacy(root.data):
        return _legacy(root, received_ms)
    version = root.opt_str("version")
    if version is not None and version != VERSION:
        raise root.error("version", f'must be "{VERSION}" (Grafana webhook format), '
                                    f"got {version!r}")
    external = root.opt_str("externalURL")
    group_status = root.opt_str("status")
    signals = tuple(
        alert_signal(alert, NAME, (alert.opt_str("panelURL"), alert.opt_str("dashboardURL"),
                                   alert.opt_str("generatorURL"), external), group_status)
        for alert in root.objs("alerts")
    )
    return IntakeResult(NAME, signals, skipped=no_alerts(signals), truncated=truncated(root))


# ------------------------------------------------------------------ legacy alerting


def _legacy(root: Obj, received_ms: int | None) -> IntakeResult:
    rule = root.req_str("ruleName")
    state_word = root.req_str("state")
    state = LEGACY_STATES.get(state_word)
    if state is None:
        return IntakeResult(NAME, (), skipped=(
            f"legacy Grafana rule {rule!r} is {state_word}: a rule state, not an alert; "
            "no signal",))
    if received_ms is None:
        raise IntakeError("a legacy alerting notification carries no time of its own; the "
                          "intake must pass received_ms", provider=NAME)
    tags = root.str_map("tags")
    labels = {**_shared_match_tags(root), **tags}
    ids = {name: value for name, key in (("org", "orgId"), ("dashboard", "dashboardId"),
                                         ("panel", "panelId"), ("rule", "ruleId"))
           if (value := root.opt_str(key)) is not None}
    identity = (",".join(f"{k}={v}" for k, v in ids.items()) if "rule" in ids
                else root.opt_str("ruleUrl") or rule)
    keys = correlation(labels)
    return IntakeResult(NAME, (Signal(
        dedup_key=f"legacy:{identity}", type="alert", state=state, source=NAME,
        service=first((labels,), SERVICE_KEYS), env=first((labels,), ENV_KEYS),
        severity=severity_of(first((labels,), SEVERITY_KEYS), "warning"),
        title=rule, reason=rule, description=root.opt_str("message"),
        event_time_ms=received_ms, starts_at_ms=received_ms if state == "firing" else None,
        ends_at_ms=received_ms if state == "resolved" else None,
        provider_url=root.opt_str("ruleUrl"), labels=labels,
        incident_id=keys.incident_id, trace_id=keys.trace_id, error_code=keys.error_code,
        downstream=keys.downstream,
    ),))


def _shared_match_tags(root: Obj) -> dict[str, str]:
    """The tags that every eval match carries with the same value (empty without matches)."""
    maps = [match.str_map("tags") for match in root.opt_objs("evalMatches")]
    if not maps:
        return {}
    return {k: v for k, v in maps[0].items() if all(m.get(k) == v for m in maps[1:])}
