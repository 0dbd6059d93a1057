"""PagerDuty: Events API v2 events and V3 webhooks → alert signals.

**Events API v2** (``routing_key``, ``event_action``; developer.pagerduty.com "Send Alert
Events"): ``trigger`` carries ``payload`` (``summary``, ``source``, ``severity`` required;
``timestamp``, ``component``, ``group``, ``class``, ``custom_details`` optional), ``links``,
``images``, ``client_url``; ``acknowledge`` and ``resolve`` carry only ``routing_key``,
``dedup_key`` and ``event_action``.

- Identity: ``dedup_key``, shared by trigger, acknowledge and resolve. A trigger without
  one (PagerDuty then makes one up and only tells the sender) gets a derived key:
  ``derived:`` + 16 hex of sha256 of routing key, summary, source, component, group and
  class, so that re-sent identical triggers fold.
- State: trigger → firing, acknowledge → acknowledged, resolve → resolved.
- Severity: critical → critical, **error → critical** (PagerDuty pages on both: high
  urgency), warning → warning, info → info. An acknowledge/resolve has no severity: info
  (the trigger's severity is the one to keep when folding).
- Service: ``custom_details.service``, else ``component``, else ``source`` (a host or an
  FQDN, the least specific). Env: ``custom_details`` env / environment.
- Title: ``summary``; reason: ``class``; labels: source, component, group, class;
  annotations: ``custom_details`` (non-text values as compact JSON); link: first
  ``links[].href``, else ``client_url``.
- Time: ``payload.timestamp``; acknowledge/resolve (and a trigger without one) use the
  intake's receive time, which the caller must then pass.

**V3 webhooks** (``event`` with ``event_type``, ``resource_type``, ``occurred_at``,
``data``): only ``resource_type: incident`` makes a signal; anything else (``pagey.ping``,
service events) is skipped with a note, never an error, so PagerDuty does not disable the
subscription.

- Identity: the incident id (``data.id``).
- State: ``incident.acknowledged`` → acknowledged, ``incident.resolved`` → resolved,
  ``incident.triggered`` / ``reopened`` / ``unacknowledged`` → firing; any other incident
  event (``priority_updated``, ``escalated``, ``annotated`` …) takes ``data.status``.
- Severity: ``data.urgency`` high → critical, low → warning (absent → warning).
- Service: ``data.service.summary`` (the PagerDuty service's name). Title ``data.title``;
  reason: the event type; link ``data.html_url``; labels urgency, priority, incident
  number and incident key when present.
- Times: event time ``occurred_at``; start ``data.created_at`` (or occurred_at of a
  trigger); end occurred_at of a resolve.

**V1 and V2 webhooks** (``messages[]``; PagerDuty retired them in 2022, but recorded and
relayed ones still arrive): V2 messages carry ``event`` (``incident.trigger``) and the
incident under ``incident`` (``id``, ``title``, ``status``, ``urgency``, ``service``,
``created_at``, ``html_url``); V1 messages carry ``type`` and the incident under
``data.incident`` (``created_on``, ``service.name``, ``trigger_summary_data.subject``, no
urgency). Every incident message becomes a signal, read as a V3 incident event: identity the
incident id (so V2 and V3 notifications of one incident fold), trigger / unacknowledge →
firing, acknowledge → acknowledged, resolve → resolved, other events take the incident's
``status``; event time the message's ``created_on``. Messages about anything else are
skipped with a note.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.fields import Obj, first_of, text_of
from tocsin.processors.signals.labels import ENV_KEYS, correlation, first
from tocsin.processors.signals.model import IntakeError, IntakeResult, Severity, Signal, State

NAME = "pagerduty"
SHAPE = ('a PagerDuty Events API v2 event ("routing_key" and "event_action"), V3 '
         'webhook ("event" with "event_type") or V1/V2 webhook ("messages")')
ACTIONS: dict[str, State] = {"trigger": "firing", "acknowledge": "acknowledged",
                             "resolve": "resolved"}
SEVERITY: dict[str, Severity] = {"critical": "critical", "error": "critical",
                                 "warning": "warning", "info": "info"}
V3_STATES: dict[str, State] = {
    "incident.triggered": "firing", "incident.reopened": "firing",
    "incident.unacknowledged": "firing", "incident.acknowledged": "acknowledged",
    "incident.resolved": "resolved",
}
STATUS_STATES: dict[str, State] = {"triggered": "firing", "acknowledged": "acknowledged",
                                   "resolved": "resolved"}
MESSAGE_STATES: dict[str, State] = {"trigger": "firing", "unacknowledge": "firing",
                                    "acknowledge": "acknowledged", "resolve": "resolved"}


def _is_message(m: object) -> bool:
    return isinstance(m, Mapping) and (
        isinstance(m.get("event"), str) or isinstance(m.get("type"), str)) and (
        "incident" in m or isinstance(m.get("data"), Mapping))


def matches(payload: Mapping[str, Any]) -> bool:
    if "routing_key" in payload and "event_action" in payload:
        return True
    event = payload.get("event")
    if isinstance(event, Mapping) and isinstance(event.get("event_type"), str):
        return True
    messages = payload.get("messages")
    return isinstance(messages, list) and any(_is_message(m) for m in messages)


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    root = Obj.root(payload, NAME)
    if root.has("event") and not root.has("event_action"):
        return _v3(root.obj("event"))
    if isinstance(root.raw("messages"), list) and not root.has("event_action"):
        return _messages(root, received_ms)
    return IntakeResult(NAME, (_v2(root, received_ms),))


def need_time(given: int | None, received_ms: int | None, what: str) -> int:
    """The payload's own time, else the intake's receive time, else an error."""
    if given is not None:
        return given
    if received_ms is None:
        raise IntakeError(f"{what} carries no time of its own; the intake must pass "
                          "received_ms", provider=NAME)
    return received_ms


# ------------------------------------------------------------------ Events API v2


def _v2(root: Obj, received_ms: int | None) -> Signal:
    action = root.req_choice("event_action", tuple(ACTIONS))
    routing_key = root.req_str("routing_key")
    body = root.obj("payload") if action == "trigger" else root.opt_obj("payload")
    dedup = root.opt_str("dedup_key")
    if dedup is None:
        if body is None:
            raise root.error("dedup_key", f"required for {action}")
        dedup = _derived_key(routing_key, body)
    if body is None:
        event_ms = need_time(None, received_ms, f"an Events v2 {action}")
        return Signal(
            dedup_key=dedup, type="alert", state=ACTIONS[action], source=NAME,
            severity="info", title=f"PagerDuty {action}: {dedup}", event_time_ms=event_ms,
            ends_at_ms=event_ms if action == "resolve" else None,
        )
    summary = body.req_str("summary")
    source = body.req_str("source")
    severity = body.req_choice("severity", tuple(SEVERITY))
    details = _details(body)
    labels = {k: v for k in ("source", "component", "group", "class")
              if (v := body.opt_str(k)) is not None}
    keys = correlation(details)
    event_ms = need_time(body.opt_time("timestamp"), received_ms, "an Events v2 trigger "
                                                                  "without payload.timestamp")
    return Signal(
        dedup_key=dedup, type="alert", state=ACTIONS[action], source=NAME,
        service=details.get("service") or body.opt_str("component") or source,
        env=first((details,), ENV_KEYS),
        severity=SEVERITY[severity], title=summary, reason=body.opt_str("class"),
        event_time_ms=event_ms, starts_at_ms=event_ms if action == "trigger" else None,
        ends_at_ms=event_ms if action == "resolve" else None,
        provider_url=_first_link(root) or root.opt_str("client_url"),
        labels=labels, annotations=details,
        incident_id=keys.incident_id, trace_id=keys.trace_id, error_code=keys.error_code,
        downstream=keys.downstream,
    )


def _details(body: Obj) -> dict[str, str]:
    """``custom_details`` as text → text; a non-object value is kept under ``details``."""
    raw = body.raw("custom_details")
    if raw is None or isinstance(raw, Mapping):
        return body.str_map("custom_details")
    return {"details": text_of(raw)}


def _derived_key(routing_key: str, body: Obj) -> str:
    parts = [routing_key] + [body.opt_str(k) or "" for k in
                             ("summary", "source", "component", "group", "class")]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return f"derived:{digest}"


def _first_link(root: Obj) -> str | None:
    for link in root.opt_objs("links"):
        href = link.opt_str("href")
        if href:
            return href
    return None


# ------------------------------------------------------------------ V3 webhooks


def _v3(event: Obj) -> IntakeResult:
    event_type = event.req_str("event_type")
    resource = event.opt_str("resource_type") or event_type.split(".", 1)[0]
    if resource != "incident":
        return IntakeResult(NAME, (), skipped=(f"PagerDuty {event_type}: not an incident "
                                               "event, no signal",))
    data = event.obj("data")
    occurred = event.req_time("occurred_at")
    state = V3_STATES.get(event_type)
    if state is None:
        status = data.req_choice("status", tuple(STATUS_STATES))
        state = STATUS_STATES[status]
    service = data.opt_obj("service")
    priority = data.opt_obj("priority")
    urgency = data.opt_str("urgency")
    number = data.opt_int("number")
    labels = {
        k: v for k, v in (
            ("urgency", urgency),
            ("priority", priority.opt_str("summary") if priority else None),
            ("incident_number", str(number) if number is not None else None),
            ("incident_key", data.opt_str("incident_key")),
        ) if v is not None
    }
    created = data.opt_time("created_at")
    incident = data.req_str("id")
    return IntakeResult(NAME, (Signal(
        dedup_key=incident, type="alert", state=state, source=NAME,
        service=service.opt_str("summary") if service else None,
        severity="critical" if urgency == "high" else "warning",
        title=data.opt_str("title") or f"PagerDuty incident {incident}",
        reason=event_type, event_time_ms=occurred,
        starts_at_ms=created if created is not None else (
            occurred if event_type == "incident.triggered" else None),
        ends_at_ms=occurred if state == "resolved" else None,
        provider_url=data.opt_str("html_url"), labels=labels,
    ),))


# ------------------------------------------------------------------ V1 / V2 webhooks


def _messages(root: Obj, received_ms: int | None) -> IntakeResult:
    signals: list[Signal] = []
    skipped: list[str] = []
    for msg in root.objs("messages"):
        kind = msg.opt_str("event") or msg.opt_str("type") or "?"
        data = msg.opt_obj("data")
        incident = msg.opt_obj("incident") or (data.opt_obj("incident") if data else None)
        if incident is None or not kind.startswith("incident."):
            skipped.append(f"PagerDuty {kind} message: not an incident event, no signal")
            continue
        signals.append(_message_signal(msg, kind, incident, received_ms))
    if not signals and not skipped:
        skipped.append("the webhook carries no messages")
    return IntakeResult(NAME, tuple(signals), tuple(skipped))


def _message_signal(msg: Obj, kind: str, incident: Obj, received_ms: int | None) -> Signal:
    state = MESSAGE_STATES.get(kind.split(".", 1)[1])
    if state is None:
        state = STATUS_STATES[incident.req_choice("status", tuple(STATUS_STATES))]
    incident_id = incident.req_str("id")
    occurred = need_time(msg.opt_time("created_on"), received_ms,
                         f"a {kind} message without created_on")
    created = first_of(incident.opt_time("created_at"), incident.opt_time("created_on"))
    service = incident.opt_obj("service")
    summary = incident.opt_obj("trigger_summary_data")
    urgency = incident.opt_str("urgency")
    number = incident.opt_int("incident_number")
    labels = {
        k: v for k, v in (
            ("urgency", urgency),
            ("incident_number", str(number) if number is not None else None),
            ("incident_key", incident.opt_str("incident_key")),
        ) if v is not None
    }
    title = (incident.opt_str("title")
             or (summary.opt_str("subject") or summary.opt_str("description") if summary
                 else None)
             or incident.opt_str("summary") or f"PagerDuty incident {incident_id}")
    return Signal(
        dedup_key=incident_id, type="alert", state=state, source=NAME,
        service=(service.opt_str("summary") or service.opt_str("name")) if service else None,
        severity="critical" if urgency == "high" else "warning",
        title=title, reason=kind, event_time_ms=occurred,
        starts_at_ms=created if created is not None else (
            occurred if state == "firing" else None),
        ends_at_ms=occurred if state == "resolved" else None,
        provider_url=incident.opt_str("html_url"), labels=labels,
    )
