"""PagerDuty Events API v2 and V3 webhooks, from the real payloads in shared/fixtures."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fixtures_io import load as load_fixture
from tests.fixtures_io import ms
from tocsin.processors.signals import IntakeError, intake, parse, signal_id, sniff

RECEIVED = 1_793_610_000_000


def load(name: str) -> dict[str, Any]:
    return load_fixture(f"pagerduty/{name}")




# file: (dedup key, state, severity, service, title, event time, start, end, link)
CASES: dict[str, tuple[Any, ...]] = {
    "events-v2-trigger-openapi-example.json": (
        "srv01/mysql", "firing", "critical", "mysql",
        "DISK at 99% on machine prod-datapipe03.example.com",
        ms("2015-07-17T08:42:58.315+00:00"), ms("2015-07-17T08:42:58.315+00:00"), None,
        "http://pagerduty.example.com"),
    "events-v2-trigger-docs-example.json": (
        "samplekeyhere", "firing", "info", "postgres", "Example alert on host1.example.com",
        ms("2015-07-17T08:42:58.315+00:00"), ms("2015-07-17T08:42:58.315+00:00"), None,
        "https://example.com/"),
    "events-v2-acknowledge-docs-example.json": (
        "dedupkeyhere", "acknowledged", "info", None, "PagerDuty acknowledge: dedupkeyhere",
        RECEIVED, None, None, None),
    "events-v2-resolve-docs-example.json": (
        "dedupkeyhere", "resolved", "info", None, "PagerDuty resolve: dedupkeyhere",
        RECEIVED, None, RECEIVED, None),
    "webhook-v3-incident-triggered-zulip.json": (
        "PFQZPSY", "firing", "critical", "pig208", "Test Incident 3",
        ms("2021-06-04T13:35:29.781+00:00"), ms("2021-06-04T13:35:29.781+00:00"), None,
        "https://pig208.pagerduty.com/incidents/PFQZPSY"),
    "webhook-v3-incident-priority-updated-docs-example.json": (
        "PGR0VU2", "firing", "critical", "API Service", "A little bump in the road",
        ms("2020-10-02T18:45:22.169+00:00"), ms("2020-04-09T15:16:27+00:00"), None,
        "https://acme.pagerduty.com/incidents/PGR0VU2"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_sniffs_and_parses(name: str) -> None:
    dedup, state, severity, service, title, event_ms, start, end, url = CASES[name]
    payload = load(name)
    assert sniff(payload) == "pagerduty"
    [sig] = parse(payload, received_ms=RECEIVED)
    assert (sig.type, sig.source, sig.dedup_key) == ("alert", "pagerduty", dedup)
    assert sig.signal_id == signal_id("pagerduty", dedup)
    assert (sig.state, sig.severity, sig.service, sig.title) == (state, severity, service,
                                                                title)
    assert (sig.event_time_ms, sig.starts_at_ms, sig.ends_at_ms) == (event_ms, start, end)
    assert sig.provider_url == url


def test_trigger_acknowledge_and_resolve_share_the_dedup_key() -> None:
    trigger = load("events-v2-trigger-openapi-example.json")
    ack, resolve = copy.deepcopy(trigger), copy.deepcopy(trigger)
    for event, action in ((ack, "acknowledge"), (resolve, "resolve")):
        del event["payload"]
        event["event_action"] = action
    ids = {parse(e, received_ms=RECEIVED)[0].signal_id for e in (trigger, ack, resolve)}
    assert ids == {signal_id("pagerduty", "srv01/mysql")}
    [ended] = parse(resolve, received_ms=RECEIVED)
    assert (ended.state, ended.ends_at_ms) == ("resolved", RECEIVED)


def test_acknowledge_without_a_time_needs_the_receive_time() -> None:
    with pytest.raises(IntakeError, match="received_ms"):
        parse(load("events-v2-acknowledge-docs-example.json"))


def test_trigger_fields_become_labels_annotations_and_keys() -> None:
    payload = load("events-v2-trigger-openapi-example.json")
    payload["payload"]["custom_details"].update(
        {"service": "inventory", "environment": "prod", "tocsin_incident_id": "inc_1"})
    [sig] = parse(payload)
    assert sig.labels == {"source": "prod-datapipe03.example.com", "component": "mysql",
                          "group": "prod-datapipe", "class": "disk"}
    assert sig.annotations["free space"] == "1%"
    assert sig.annotations["load avg"] == "0.75"
    assert (sig.service, sig.env, sig.incident_id) == ("inventory", "prod", "inc_1")
    assert sig.reason == "disk"


@pytest.mark.parametrize("word,expected", [
    ("critical", "critical"), ("error", "critical"), ("warning", "warning"), ("info", "info"),
])
def test_events_v2_severity_map(word: str, expected: str) -> None:
    payload = load("events-v2-trigger-openapi-example.json")
    payload["payload"]["severity"] = word
    assert parse(payload)[0].severity == expected


def test_a_trigger_without_dedup_key_gets_a_stable_derived_one() -> None:
    payload = load("events-v2-trigger-openapi-example.json")
    del payload["dedup_key"]
    first = parse(payload)[0]
    assert first.dedup_key.startswith("derived:")
    assert parse(copy.deepcopy(payload))[0].dedup_key == first.dedup_key


@pytest.mark.parametrize("event_type,state", [
    ("incident.triggered", "firing"), ("incident.acknowledged", "acknowledged"),
    ("incident.unacknowledged", "firing"), ("incident.resolved", "resolved"),
    ("incident.reopened", "firing"), ("incident.priority_updated", "firing"),
])
def test_v3_event_types_map_to_states(event_type: str, state: str) -> None:
    payload = load("webhook-v3-incident-triggered-zulip.json")
    payload["event"]["event_type"] = event_type
    [sig] = parse(payload)
    assert sig.state == state
    assert sig.signal_id == signal_id("pagerduty", "PFQZPSY")
    assert sig.ends_at_ms == (sig.event_time_ms if state == "resolved" else None)


def test_v3_other_incident_events_take_the_incident_status() -> None:
    payload = load("webhook-v3-incident-priority-updated-docs-example.json")
    payload["event"]["data"]["status"] = "acknowledged"
    [sig] = parse(payload)
    assert sig.state == "acknowledged"
    assert sig.labels == {"urgency": "high", "priority": "P1", "incident_number": "2",
                          "incident_key": "d3640fbd41094207a1c11e58e46b1662"}


def test_v3_non_incident_events_are_skipped_not_refused() -> None:
    ping = {"event": {"id": "01", "event_type": "pagey.ping", "resource_type": "pagey",
                      "occurred_at": "2021-06-04T13:35:29.781Z", "data": {}}}
    result = intake(ping)
    assert (result.provider, result.signals) == ("pagerduty", ())
    assert "pagey.ping" in result.skipped[0]


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p.update(event_action="snooze"), "event_action: must be one of"),
    (lambda p: p.pop("payload"), "payload: required, an object"),
    (lambda p: p["payload"].pop("summary"), "payload.summary: required"),
    (lambda p: p["payload"].update(severity="sev1"), "payload.severity: must be one of"),
    (lambda p: p["payload"].update(timestamp="2015-07-17"), "payload.timestamp: not a time"),
    (lambda p: p.pop("routing_key"), "routing_key: required"),
])
def test_malformed_events_v2_name_the_field(mutate: Any, message: str) -> None:
    payload = load("events-v2-trigger-openapi-example.json")
    mutate(payload)
    with pytest.raises(IntakeError, match=message):
        parse(payload, provider="pagerduty", received_ms=RECEIVED)


def test_acknowledge_without_dedup_key_is_refused() -> None:
    payload = load("events-v2-acknowledge-docs-example.json")
    del payload["dedup_key"]
    with pytest.raises(IntakeError, match="dedup_key: required for acknowledge"):
        parse(payload, received_ms=RECEIVED)


def test_v3_without_incident_id_names_the_field() -> None:
    payload = load("webhook-v3-incident-triggered-zulip.json")
    del payload["event"]["data"]["id"]
    with pytest.raises(IntakeError, match=r"event\.data\.id: required"):
        parse(payload)
