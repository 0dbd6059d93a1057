"""Sentry integration-platform webhooks → runtime signals.

Shapes (docs.sentry.io, organization/integrations/integration-platform/webhooks):

- **Issue alert** (``Sentry-Hook-Resource: event_alert``): ``action: triggered``,
  ``data.event`` (the event that fired the rule: ``issue_id``, ``title``, ``culprit``,
  ``level``, ``datetime``, ``exception.values[]`` with ``type``, ``value``, ``mechanism``,
  ``tags`` as ``[key, value]`` pairs, ``hashes``, ``url``, ``web_url``),
  ``data.triggered_rule``.
- **Error** (``error``): the same event under ``data.error``, ``action: created``.
- **Issue** (``issue``): ``action`` created / resolved / assigned / archived / unresolved,
  ``data.issue`` (``id``, ``title``, ``culprit``, ``level``, ``status``, ``firstSeen``,
  ``lastSeen``, ``metadata``, ``project.slug``).

Other resources (metric alerts, comments, installation, seer …) are skipped with a note
naming the resource: a metric alert is about an alert rule's aggregate, not an error or an
issue (ADR 0007 known limits).

Decisions (ADR 0007):

- Identity: the **issue id**, so the issue alert, later events of the same issue and the
  issue's resolve are one signal. An event without ``issue_id`` (sentry.io sent only
  ``issue_url``, ``…/api/0/issues/1637164584/``, in the 2020 event alerts Zulip recorded, and
  older self-hosted Sentry still does) takes it from ``issue_url``, else from the
  ``/issues/{id}/`` part of ``web_url``.
- Type: ``runtime`` for error events that carry an exception and for error issues; an event
  without an exception (``capture_message``, Sentry type ``default``), a message issue
  (type ``default``, or no exception type in its metadata) and other issue types
  (performance, generic) are ``alert``: a log message is not a runtime fault, and a runtime
  signal decides the "runtime" cause (ADR 0008). Subtype from the exception's
  ``mechanism``: a type containing
  ``unhandledrejection`` (JavaScript ``onunhandledrejection``) → unhandled_rejection,
  ``panic`` (sentry-rust) → panic, ``handled: true`` → none (a reported, handled error is not
  a runtime fault), otherwise uncaught_exception; an issue says less: ``isUnhandled: false``
  → none, otherwise uncaught_exception.
- State: events → firing; issue created / unresolved → firing, resolved / archived /
  ignored → resolved, assigned → acknowledged.
- Severity (Sentry ``level``): fatal → critical; error, warning → warning; info, debug,
  log → info. A single exception is weaker evidence than an OOM kill or a crash loop.
- Service: tag ``service``, else the project slug (``data.issue.project.slug``, or the
  ``/projects/{org}/{project}/`` part of the event's API ``url``). Env: the event's
  ``environment``, else tag ``environment``. Trace id: ``contexts.trace.trace_id``.
- Time: the event's ``datetime`` (else ``timestamp``, epoch seconds); an issue's
  ``firstSeen`` when created, ``lastSeen`` when unresolved, otherwise the intake's receive
  time (the payload carries no time of the change).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.fields import Obj, first_of, seconds_ms
from tocsin.processors.signals.labels import correlation
from tocsin.processors.signals.model import (
    IntakeError,
    IntakeResult,
    RuntimeSubtype,
    Severity,
    Signal,
    SignalType,
    State,
)

NAME = "sentry"
SHAPE = ('a Sentry webhook ("action" and "data" with "event", "error" or "issue")')
LEVELS: dict[str, Severity] = {"fatal": "critical", "error": "warning", "warning": "warning",
                               "info": "info", "debug": "info", "log": "info"}
ISSUE_ACTIONS: dict[str, State] = {
    "created": "firing", "unresolved": "firing", "resolved": "resolved",
    "archived": "resolved", "ignored": "resolved", "assigned": "acknowledged",
}
ISSUE_STATUSES: dict[str, State] = {"unresolved": "firing", "resolved": "resolved",
                                    "ignored": "resolved"}
_PROJECT_IN_URL = re.compile(r"/projects/[^/]+/([^/]+)/")
_ISSUE_IN_URL = re.compile(r"/issues/(\d+)(?:/|$)")
RESOURCES = ("metric_alert", "installation", "comment", "seer", "preprod_artifact")


def matches(payload: Mapping[str, Any]) -> bool:
    data = payload.get("data")
    if not isinstance(payload.get("action"), str) or not isinstance(data, Mapping):
        return False
    return ("installation" in payload or "actor" in payload
            or any(k in data for k in ("event", "error", "issue")))


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    root = Obj.root(payload, NAME)
    action = root.req_str("action")
    data = root.obj("data")
    for key in ("event", "error"):
        if data.has(key):
            return IntakeResult(NAME, (_event(data.obj(key), data.opt_str("triggered_rule")),))
    if data.has("issue"):
        return IntakeResult(NAME, (_issue(data.obj("issue"), action, received_ms),))
    resource = next((k for k in RESOURCES if k in data.data), next(iter(data.data), "empty"))
    return IntakeResult(NAME, (), skipped=(f"Sentry {resource} webhook ({action}): "
                                           "not an error or issue, no signal",))


def _event(ev: Obj, rule: str | None) -> Signal:
    tags = _tags(ev)
    exception = _main_exception(ev)
    mechanism = exception.opt_obj("mechanism") if exception else None
    kind = ev.opt_str("type")
    signal_type: SignalType = ("runtime" if exception is not None
                               and kind in (None, "error", "default") else "alert")
    trace = ev.opt_obj("contexts")
    trace = trace.opt_obj("trace") if trace else None
    keys = correlation(tags)
    when = ev.opt_time("datetime")
    if when is None:
        stamp = ev.raw("timestamp")
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            raise ev.error("datetime", "required, an RFC 3339 time (or timestamp, epoch "
                                       "seconds)")
        try:
            when = seconds_ms(stamp)
        except ValueError as exc:
            raise ev.error("timestamp", str(exc)) from exc
    metadata = ev.opt_obj("metadata")
    reason = (exception.opt_str("type") if exception else None) or (
        metadata.opt_str("type") if metadata else None)
    url = ev.opt_str("url") or ""
    project = m.group(1) if (m := _PROJECT_IN_URL.search(url)) else None
    hashes = ev.raw("hashes")
    return Signal(
        dedup_key=_issue_id(ev), type=signal_type, state="firing", source=NAME,
        service=tags.get("service") or project,
        env=ev.opt_str("environment") or tags.get("environment"),
        severity=LEVELS.get(ev.opt_str("level") or "", "warning"),
        title=ev.opt_str("title") or reason or "Sentry event", reason=reason,
        description=ev.opt_str("culprit"), event_time_ms=when, starts_at_ms=when,
        fingerprint=hashes[0] if isinstance(hashes, list) and hashes
        and isinstance(hashes[0], str) else None,
        provider_url=ev.opt_str("web_url"), labels=tags,
        annotations={"triggered_rule": rule} if rule else {},
        incident_id=keys.incident_id,
        trace_id=(trace.opt_str("trace_id") if trace else None) or keys.trace_id,
        error_code=keys.error_code, downstream=keys.downstream,
        runtime_subtype=_event_subtype(mechanism) if signal_type == "runtime" else None,
    )


def _issue_id(ev: Obj) -> str:
    """``issue_id``, else the id in ``issue_url`` (``…/issues/123/``), else in ``web_url``."""
    found = ev.opt_str("issue_id")
    if found is not None:
        return found
    for key in ("issue_url", "web_url"):
        if m := _ISSUE_IN_URL.search(ev.opt_str(key) or ""):
            return m.group(1)
    raise ev.error("issue_id", "required, a non-empty string (or an issue_url / web_url "
                               "naming the issue)")


def _event_subtype(mechanism: Obj | None) -> RuntimeSubtype | None:
    kind = (mechanism.opt_str("type") or "") if mechanism else ""
    if "unhandledrejection" in kind.lower():
        return "unhandled_rejection"
    if kind == "panic":
        return "panic"
    if mechanism is not None and mechanism.raw("handled") is True:
        return None
    return "uncaught_exception"


def _main_exception(ev: Obj) -> Obj | None:
    """The last of ``exception.values``: Sentry lists chained exceptions oldest first."""
    exception = ev.opt_obj("exception")
    values = exception.opt_objs("values") if exception else []
    return values[-1] if values else None


def _tags(ev: Obj) -> dict[str, str]:
    """Sentry tags as a map: ``[key, value]`` pairs (webhooks) or ``{key, value}`` objects."""
    raw = ev.raw("tags")
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return ev.str_map("tags")
    if not isinstance(raw, list):
        raise ev.error("tags", "must be an array of [key, value] pairs")
    out: dict[str, str] = {}
    for n, tag in enumerate(raw):
        if isinstance(tag, list) and len(tag) == 2:
            key, value = tag
        elif isinstance(tag, Mapping):
            key, value = tag.get("key"), tag.get("value")
        else:
            raise ev.error(f"tags[{n}]", "must be a [key, value] pair")
        if key is not None and value is not None:
            out[str(key)] = str(value)
    return out


def _issue(issue: Obj, action: str, received_ms: int | None) -> Signal:
    state = ISSUE_ACTIONS.get(action)
    if state is None:
        state = ISSUE_STATUSES[issue.req_choice("status", tuple(ISSUE_STATUSES))]
    own = {"created": issue.opt_time("firstSeen"),
           "unresolved": issue.opt_time("lastSeen")}.get(action)
    when = first_of(own, received_ms)
    if when is None:
        raise IntakeError(f"an issue {action} webhook carries no time of the change; the "
                          "intake must pass received_ms", provider=NAME)
    project = issue.opt_obj("project")
    metadata = issue.opt_obj("metadata")
    kind = issue.opt_str("type")
    exception_type = metadata.opt_str("type") if metadata else None
    signal_type: SignalType = ("runtime" if kind == "error" or (
        kind is None and exception_type is not None) else "alert")
    unhandled = issue.raw("isUnhandled")
    subtype: RuntimeSubtype | None = (
        "uncaught_exception" if signal_type == "runtime" and unhandled is not False else None)
    first_seen = issue.opt_time("firstSeen")
    return Signal(
        dedup_key=issue.req_str("id"), type=signal_type, state=state, source=NAME,
        service=project.opt_str("slug") if project else None,
        severity=LEVELS.get(issue.opt_str("level") or "", "warning"),
        title=issue.opt_str("title") or f"Sentry issue {issue.req_str('id')}",
        reason=exception_type,
        description=issue.opt_str("culprit"), event_time_ms=when,
        starts_at_ms=first_seen, ends_at_ms=when if state == "resolved" else None,
        provider_url=issue.opt_str("web_url") or issue.opt_str("permalink"),
        labels={k: v for k, v in (("short_id", issue.opt_str("shortId")),
                                  ("substatus", issue.opt_str("substatus"))) if v},
        runtime_subtype=subtype,
    )
