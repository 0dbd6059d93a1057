"""Sentry integration-platform webhooks.

The payloads below are copied from Sentry's documentation, getsentry/sentry-docs:
- ISSUE_ALERT: docs/organization/integrations/integration-platform/webhooks/issue-alerts.mdx
  (https://docs.sentry.io/organization/integrations/integration-platform/webhooks/issue-alerts/)
  @ 2e59ab6ba685ba182f3d75d377589c88d1df5197, "Payload" section;
- ISSUE_CREATED: .../webhooks/issues.mdx @ 158d8cdfd4b710bc47d6decd3088e4b5302dbe6d;
- ERROR_CREATED: .../webhooks/errors.mdx @ d750f1eb4ee0de7e3b479c73b7da9deec3cf87ed.
Values are unchanged. To keep the file readable, ISSUE_ALERT leaves out the stack frames and
the ``request``, ``sdk`` and ``grouping_config`` objects, and ERROR_CREATED keeps only the
keys the parser reads (no parser reads the others).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tocsin.processors.signals import IntakeError, intake, parse, signal_id, sniff

RECEIVED = 1_793_610_000_000

ISSUE_ALERT: dict[str, Any] = {
    "action": "triggered",
    "actor": {"id": "sentry", "name": "Sentry", "type": "application"},
    "data": {
        "event": {
            "_ref": 1,
            "_ref_version": 2,
            "contexts": {
                "browser": {"name": "Chrome", "type": "browser", "version": "75.0.3770"},
                "os": {"name": "Mac OS X", "type": "os", "version": "10.14.0"},
            },
            "culprit": "?(<anonymous>)",
            "datetime": "2019-08-19T21:06:17.677000Z",
            "dist": None,
            "event_id": "e4874d664c3540c1a32eab185f12c5ab",
            "exception": {"values": [{
                "mechanism": {
                    "data": {"message": "heck is not defined", "mode": "stack",
                             "name": "ReferenceError"},
                    "description": None, "handled": False, "help_link": None,
                    "meta": None, "synthetic": None, "type": "onerror",
                },
                "type": "ReferenceError",
                "value": "heck is not defined",
            }]},
            "fingerprint": ["{{ default }}"],
            "hashes": ["29f7ffc4903a8a990408b80a3b4c95a2"],
            "issue_url": "https://sentry.io/api/0/issues/1117540176/",
            "issue_id": "1117540176",
            "key_id": "667532",
            "level": "error",
            "location": "<anonymous>",
            "logger": "",
            "message": "",
            "metadata": {"filename": "<anonymous>", "type": "ReferenceError",
                         "value": "heck is not defined"},
            "platform": "javascript",
            "project": 1,
            "received": 1566248777.677,
            "release": None,
            "tags": [
                ["browser", "Chrome 75.0.3770"], ["browser.name", "Chrome"],
                ["handled", "no"], ["level", "error"], ["mechanism", "onerror"],
                ["os", "Mac OS X 10.14.0"], ["os.name", "Mac OS X"],
                ["user", "ip:162.217.75.90"], ["url", "https://null.jsbin.com/runner"],
            ],
            "time_spent": None,
            "timestamp": 1566248777.677,
            "title": "ReferenceError: heck is not defined",
            "type": "error",
            "url": "https://sentry.io/api/0/projects/test-org/front-end/events/"
                   "e4874d664c3540c1a32eab185f12c5ab/",
            "user": {"ip_address": "162.218.85.90"},
            "version": "7",
            "web_url": "https://sentry.io/organizations/test-org/issues/1117540176/events/"
                       "e4874d664c3540c1a32eab185f12c5ab/",
        },
        "triggered_rule": "Very Important Alert Rule!",
        "issue_alert": {"title": "Very Important Alert Rule!",
                        "settings": [{"name": "channel", "value": "#general"}]},
    },
    "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"},
}

ISSUE_CREATED: dict[str, Any] = {
    "action": "created",
    "actor": {"id": "sentry", "name": "Sentry", "type": "application"},
    "data": {"issue": {
        "annotations": [], "assignedTo": None, "count": "1", "culprit": "?(runner)",
        "firstSeen": "2019-08-19T20:58:37.391000Z", "hasSeen": False, "id": "1170820242",
        "isBookmarked": False, "isPublic": False, "isSubscribed": False,
        "lastSeen": "2019-08-19T20:58:37.391000Z", "level": "error", "logger": None,
        "metadata": {"filename": "/runner", "type": "ReferenceError",
                     "value": "blooopy is not defined"},
        "numComments": 0, "permalink": None, "platform": "javascript",
        "project": {"id": "1", "name": "front-end", "platform": "", "slug": "front-end"},
        "shareId": None, "shortId": "FRONT-END-9", "status": "unresolved",
        "statusDetails": {}, "subscriptionDetails": None, "substatus": "escalating",
        "title": "ReferenceError: blooopy is not defined", "type": "error", "userCount": 1,
    }},
    "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"},
}

ERROR_CREATED: dict[str, Any] = {
    "action": "created",
    "actor": {"id": "sentry", "name": "Sentry", "type": "application"},
    "data": {"error": {
        "culprit": "?(runner)", "datetime": "2019-08-19T20:58:37.391000Z",
        "event_id": "bb78c1407cea4519aa397afc059c793d",
        "exception": {"values": [{
            "mechanism": {"handled": False, "type": "onerror"},
            "type": "ReferenceError", "value": "blooopy is not defined"}]},
        "hashes": ["07d2da329989f6cd310eb5f1c5e828a4"],
        "issue_url": "https://sentry.io/api/0/issues/1170820242/", "issue_id": "1170820242",
        "level": "error", "platform": "javascript", "project": 1,
        "timestamp": 1566248317.391, "title": "ReferenceError: blooopy is not defined",
        "type": "error",
        "url": "https://sentry.io/api/0/projects/test-org/front-end/events/"
               "bb78c1407cea4519aa397afc059c793d/",
        "web_url": "https://sentry.io/organizations/test-org/issues/1170820242/events/"
                   "bb78c1407cea4519aa397afc059c793d/",
    }},
    "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"},
}


def ms(iso: str) -> int:
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1)


def test_issue_alert_from_the_docs() -> None:
    assert sniff(ISSUE_ALERT) == "sentry"
    [sig] = parse(ISSUE_ALERT)
    assert (sig.type, sig.source, sig.state, sig.severity) == (
        "runtime", "sentry", "firing", "warning")
    assert (sig.runtime_subtype, sig.reason) == ("uncaught_exception", "ReferenceError")
    assert sig.signal_id == signal_id("sentry", "1117540176")
    assert (sig.title, sig.description) == ("ReferenceError: heck is not defined",
                                            "?(<anonymous>)")
    assert sig.service == "front-end"  # from the event's API url: /projects/test-org/front-end/
    assert sig.event_time_ms == ms("2019-08-19T21:06:17.677+00:00")
    assert sig.fingerprint == "29f7ffc4903a8a990408b80a3b4c95a2"
    assert sig.provider_url == ISSUE_ALERT["data"]["event"]["web_url"]
    assert sig.labels["browser.name"] == "Chrome"
    assert sig.annotations == {"triggered_rule": "Very Important Alert Rule!"}


def test_error_webhook_and_issue_webhook_fold_into_one_signal_per_issue() -> None:
    [error] = parse(ERROR_CREATED)
    [created] = parse(ISSUE_CREATED)
    assert error.signal_id == created.signal_id == signal_id("sentry", "1170820242")
    assert error.event_time_ms == ms("2019-08-19T20:58:37.391+00:00")
    assert (created.state, created.service, created.runtime_subtype) == (
        "firing", "front-end", "uncaught_exception")
    assert created.labels == {"short_id": "FRONT-END-9", "substatus": "escalating"}


@pytest.mark.parametrize("action,state", [
    ("resolved", "resolved"), ("archived", "resolved"), ("ignored", "resolved"),
    ("assigned", "acknowledged"), ("unresolved", "firing"),
])
def test_issue_actions_map_to_states(action: str, state: str) -> None:
    payload = copy.deepcopy(ISSUE_CREATED)
    payload["action"] = action
    [sig] = parse(payload, received_ms=RECEIVED)
    assert sig.state == state
    if state == "resolved":
        assert sig.ends_at_ms == sig.event_time_ms == RECEIVED


def test_an_issue_resolve_without_receive_time_is_refused() -> None:
    payload = copy.deepcopy(ISSUE_CREATED)
    payload["action"] = "resolved"
    with pytest.raises(IntakeError, match="received_ms"):
        parse(payload)


@pytest.mark.parametrize("mechanism,subtype", [
    ({"type": "onerror", "handled": False}, "uncaught_exception"),
    ({"type": "onunhandledrejection", "handled": False}, "unhandled_rejection"),
    ({"type": "auto.browser.global_handlers.onunhandledrejection"}, "unhandled_rejection"),
    ({"type": "panic", "handled": False}, "panic"),
    ({"type": "generic", "handled": True}, None),
    (None, "uncaught_exception"),
])
def test_mechanism_decides_the_subtype(mechanism: dict[str, Any] | None,
                                       subtype: str | None) -> None:
    payload = copy.deepcopy(ISSUE_ALERT)
    value = payload["data"]["event"]["exception"]["values"][0]
    if mechanism is None:
        del value["mechanism"]
    else:
        value["mechanism"] = mechanism
    assert parse(payload)[0].runtime_subtype == subtype


@pytest.mark.parametrize("level,severity", [
    ("fatal", "critical"), ("error", "warning"), ("warning", "warning"), ("info", "info"),
    ("debug", "info"),
])
def test_level_map(level: str, severity: str) -> None:
    payload = copy.deepcopy(ISSUE_ALERT)
    payload["data"]["event"]["level"] = level
    assert parse(payload)[0].severity == severity


def test_tags_give_service_env_and_keys_and_contexts_give_the_trace() -> None:
    payload = copy.deepcopy(ISSUE_ALERT)
    event = payload["data"]["event"]
    event["tags"] += [["service", "checkout"], ["environment", "prod"],
                      ["error_code", "PMT_502"]]
    event["contexts"]["trace"] = {"trace_id": "6762b34f4e26ea8e603235a1e58e1b1c",
                                  "type": "trace"}
    [sig] = parse(payload)
    assert (sig.service, sig.env, sig.error_code) == ("checkout", "prod", "PMT_502")
    assert sig.trace_id == "6762b34f4e26ea8e603235a1e58e1b1c"


def test_other_resources_are_skipped() -> None:
    metric = {"action": "critical", "actor": {"id": "sentry"},
              "data": {"metric_alert": {"id": "1"}, "description_title": "Too many errors"},
              "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"}}
    assert sniff(metric) == "sentry"
    result = intake(metric)
    assert result.signals == () and "metric_alert" in result.skipped[0]


@pytest.mark.parametrize("mutate,message", [
    (lambda p: [p["data"]["event"].pop(k) for k in ("issue_id", "issue_url", "web_url")],
     r"data\.event\.issue_id: required"),
    (lambda p: p["data"]["event"].update(datetime=None, timestamp="x"),
     r"data\.event\.datetime: required"),
    (lambda p: p["data"]["event"].update(tags="a,b"), r"data\.event\.tags: must be"),
    (lambda p: p.update(data=[]), "data: must be an object"),
])
def test_malformed_sentry_payloads_name_the_field(mutate: Any, message: str) -> None:
    payload = copy.deepcopy(ISSUE_ALERT)
    mutate(payload)
    with pytest.raises(IntakeError, match=message):
        parse(payload, provider="sentry")
