"""Alertmanager and Grafana webhooks, from the real payloads in shared/fixtures."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.fixtures_io import load, ms
from tocsin.processors.signals import IntakeError, intake, parse, sniff

# file, provider, per alert: (state, severity, service, title, event time, start, end,
# fingerprint, link)
CASES: list[tuple[str, str, list[tuple[Any, ...]]]] = [
    ("alertmanager/alertmanager-bot-firing.json", "alertmanager", [
        ("firing", "critical", None, "Fire", ms("2018-11-04T22:43:58.283+01:00"),
         ms("2018-11-04T22:43:58.283+01:00"), None, "88cbf0084cf27726",
         "http://localhost:9090/graph?g0.expr=vector%28666%29&g0.tab=1"),
    ]),
    ("alertmanager/alertmanager-bot-resolved.json", "alertmanager", [
        ("resolved", "critical", None, "Fire", ms("2018-11-04T22:48:13.283+01:00"),
         ms("2018-11-04T22:43:58.283+01:00"), ms("2018-11-04T22:48:13.283+01:00"),
         "88cbf0084cf27726", "http://localhost:9090/graph?g0.expr=vector%28666%29&g0.tab=1"),
    ]),
    ("alertmanager/grafana-oncall-firing-example.json", "alertmanager", [
        ("firing", "critical", "node", "Instance localhost:8081 down",
         ms("2023-06-12T08:24:38.326+00:00"), ms("2023-06-12T08:24:38.326+00:00"), None,
         "f404ecabc8dd5cd7", None),
        ("firing", "critical", "node", "Instance localhost:8082 down",
         ms("2023-06-12T08:24:38.326+00:00"), ms("2023-06-12T08:24:38.326+00:00"), None,
         "f8f08d4e32c61a9d", None),
    ]),
    ("alertmanager/zulip-firing-2-alerts.json", "alertmanager", [
        ("firing", "critical", None, "High CPU core temperature",
         ms("2020-02-06T00:17:58.432+00:00"), ms("2020-02-06T00:17:58.432+00:00"), None,
         "a1bc48475b20e73d", None),
        ("firing", "critical", None, "High CPU core temperature",
         ms("2020-02-06T00:17:58.432+00:00"), ms("2020-02-06T00:17:58.432+00:00"), None,
         "c2ea85182f28cbd9", None),
    ]),
    ("grafana/grafana-docs-webhook-example-firing.json", "grafana", [
        ("firing", "warning", None, "This alert was triggered for zone us-1",
         ms("2021-10-12T09:51:03.157+02:00"), ms("2021-10-12T09:51:03.157+02:00"), None,
         "c6eadffa33fcdf37", "https://play.grafana.org/alerting/1afz29v7z/edit"),
        ("firing", "warning", None, "This alert was triggered for zone eu-1",
         ms("2021-10-12T09:56:03.157+02:00"), ms("2021-10-12T09:56:03.157+02:00"), None,
         "bc97ff14869b13e3", "https://play.grafana.org/alerting/d1rdpdv7k/edit"),
    ]),
    ("grafana/zulip-grafana9-firing.json", "grafana", [
        ("firing", "warning", None, "This is a summary field, failure on some_host",
         ms("2022-06-17T00:41:00.782+00:00"), ms("2022-06-17T00:41:00.782+00:00"), None,
         "d8a21484c9c25a60", "https://grafana.example.com/alerting/grafana/zTjxv_C7k/view"),
    ]),
    ("grafana/zulip-grafana9-resolved.json", "grafana", [
        ("resolved", "warning", None, "This is a summary field, failure on <no value>",
         ms("2022-06-17T00:51:24.067+00:00"), ms("2022-06-17T00:41:00.782+00:00"),
         ms("2022-06-17T00:51:24.067+00:00"), "d8a21484c9c25a60",
         "https://grafana.example.com/alerting/grafana/zTjxv_C7k/view"),
    ]),
]


@pytest.mark.parametrize("name,provider,expected", CASES, ids=[c[0] for c in CASES])
def test_fixture_sniffs_and_parses(name: str, provider: str,
                                   expected: list[tuple[Any, ...]]) -> None:
    payload = load(name)
    assert sniff(payload) == provider
    signals = parse(payload)
    assert len(signals) == len(expected)
    for sig, (state, severity, service, title, event_ms, start, end, fp, url) in zip(
            signals, expected, strict=True):
        assert (sig.type, sig.source, sig.state, sig.severity) == (
            "alert", provider, state, severity)
        assert (sig.service, sig.env, sig.title) == (service, None, title)
        assert (sig.event_time_ms, sig.starts_at_ms, sig.ends_at_ms) == (event_ms, start, end)
        assert sig.fingerprint == fp
        assert sig.dedup_key == f"{fp}|{start}"
        if url is not None:
            assert sig.provider_url == url
        assert sig.signal_id.startswith("sig_") and len(sig.signal_id) == 20


def test_a_resolve_is_the_same_signal_as_its_firing() -> None:
    for firing, resolved in (("alertmanager/alertmanager-bot-firing.json",
                              "alertmanager/alertmanager-bot-resolved.json"),
                             ("grafana/zulip-grafana9-firing.json",
                              "grafana/zulip-grafana9-resolved.json")):
        [fired] = parse(load(firing))
        [ended] = parse(load(resolved))
        assert fired.signal_id == ended.signal_id
        assert (fired.state, ended.state) == ("firing", "resolved")


def test_a_repeat_notification_is_the_same_signal_and_a_refire_is_a_new_one() -> None:
    payload = load("alertmanager/zulip-firing-2-alerts.json")
    first = parse(payload)
    repeat = copy.deepcopy(payload)
    repeat["alerts"][0]["annotations"]["description"] = "CPU core temperature is 40C"
    assert [s.signal_id for s in parse(repeat)] == [s.signal_id for s in first]
    refire = copy.deepcopy(payload)
    refire["alerts"][0]["startsAt"] = "2020-02-06T01:30:00.000000000Z"
    assert parse(refire)[0].signal_id != first[0].signal_id


def test_same_labels_but_different_fingerprints_stay_two_signals() -> None:
    """Zulip's fixture: two alerts with identical labels, distinct fingerprints; the
    fingerprint Alertmanager sends is the identity, never re-derived."""
    one, two = parse(load("alertmanager/zulip-firing-2-alerts.json"))
    assert one.labels == two.labels
    assert one.signal_id != two.signal_id


def test_a_firing_group_may_carry_resolved_alerts() -> None:
    payload = load("alertmanager/zulip-firing-2-alerts.json")
    payload["alerts"][1]["status"] = "resolved"
    payload["alerts"][1]["endsAt"] = "2020-02-06T00:27:58.432911368Z"
    assert payload["status"] == "firing"
    fired, ended = parse(payload)
    assert (fired.state, fired.ends_at_ms) == ("firing", None)
    assert ended.state == "resolved"
    assert ended.ends_at_ms == ended.event_time_ms == ms("2020-02-06T00:27:58.432+00:00")


def test_endsat_of_a_firing_alert_is_an_estimate_and_is_dropped() -> None:
    payload = load("alertmanager/alertmanager-bot-firing.json")
    assert payload["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    [sig] = parse(payload)
    assert sig.ends_at_ms is None


def test_missing_fingerprint_is_derived_from_labels() -> None:
    payload = load("alertmanager/alertmanager-bot-firing.json")
    assert "fingerprint" not in payload["alerts"][0]
    [sig] = parse(payload)
    assert sig.fingerprint == "88cbf0084cf27726"
    payload["alerts"][0]["labels"]["instance"] = "b"
    assert parse(payload)[0].fingerprint != sig.fingerprint


def test_truncated_alerts_are_reported_not_lost() -> None:
    payload = load("alertmanager/grafana-oncall-firing-example.json")
    assert intake(payload).truncated == 0
    payload["truncatedAlerts"] = 3
    result = intake(payload)
    assert (result.truncated, len(result.signals)) == (3, 2)


def test_an_empty_notification_says_so() -> None:
    payload = load("grafana/zulip-grafana9-firing.json")
    payload["alerts"] = []
    result = intake(payload)
    assert (result.signals, result.skipped) == ((), ("the notification carries no alerts",))


def test_extra_keys_are_ignored() -> None:
    payload = load("alertmanager/grafana-oncall-firing-example.json")
    assert {"numFiring", "numResolved"} <= set(payload)
    payload["notification_reason"] = "repeat_interval"
    assert len(parse(payload)) == 2


def test_labels_give_service_env_severity_and_correlation_keys() -> None:
    payload = load("alertmanager/zulip-firing-2-alerts.json")
    alert = payload["alerts"][0]
    alert["labels"].update({"app": "checkout", "environment": "prod", "severity": "warn",
                            "tocsin_incident_id": "inc_0123456789abcdef",
                            "error_code": "PMT_502"})
    alert["annotations"].update({"trace_id": "6762b34f4e26ea8e603235a1e58e1b1c",
                                 "downstream": "payment"})
    sig = parse(payload)[0]
    assert (sig.service, sig.env, sig.severity) == ("checkout", "prod", "warning")
    assert (sig.incident_id, sig.error_code) == ("inc_0123456789abcdef", "PMT_502")
    assert (sig.trace_id, sig.downstream) == ("6762b34f4e26ea8e603235a1e58e1b1c", "payment")
    assert sig.reason == "High CPU Temperature"
    assert sig.description == "CPU core temperature is 34.75C"


def test_grafana_link_prefers_panel_then_dashboard_and_ignores_empty_strings() -> None:
    payload = load("grafana/zulip-grafana9-firing.json")
    alert = payload["alerts"][0]
    assert alert["dashboardURL"] == alert["panelURL"] == ""
    alert["dashboardURL"] = "https://grafana.example.com/d/abc"
    assert parse(payload)[0].provider_url == "https://grafana.example.com/d/abc"
    alert["panelURL"] = "https://grafana.example.com/d/abc?viewPanel=2"
    assert parse(payload)[0].provider_url == "https://grafana.example.com/d/abc?viewPanel=2"


def test_grafana_values_or_value_string_and_no_org_id_all_sniff_as_grafana() -> None:
    docs = load("grafana/grafana-docs-webhook-example-firing.json")
    nine = load("grafana/zulip-grafana9-firing.json")
    assert "valueString" not in docs["alerts"][0] and "values" in docs["alerts"][0]
    assert "valueString" in nine["alerts"][0] and "values" not in nine["alerts"][0]
    for payload in (docs, nine):
        del payload["orgId"]
        assert sniff(payload) == "grafana"
        del payload["version"]
        assert sniff(payload) == "grafana"  # still told by its per-alert keys


def test_grafana_without_fingerprint_gets_a_stable_one() -> None:
    payload = load("grafana/zulip-grafana9-firing.json")
    del payload["alerts"][0]["fingerprint"]
    first, again = parse(payload)[0], parse(copy.deepcopy(payload))[0]
    assert first.fingerprint == again.fingerprint == "7778b1dc6f14daf0"


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p["alerts"][0].pop("startsAt"), "alerts[0].startsAt: required"),
    (lambda p: p["alerts"][0].update(startsAt="yesterday"), "alerts[0].startsAt: not a time"),
    (lambda p: p["alerts"][0].update(status="pending"), "alerts[0].status: must be one of"),
    (lambda p: p["alerts"][0].update(labels=["a"]), "alerts[0].labels: must be an object"),
    (lambda p: p.update(alerts={}), "alerts: required, an array"),
    (lambda p: p.update(version="5"), 'version: must be "4"'),
])
def test_malformed_alertmanager_payloads_name_the_field(mutate: Any, message: str) -> None:
    payload = load("alertmanager/zulip-firing-2-alerts.json")
    mutate(payload)
    with pytest.raises(IntakeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(payload, provider="alertmanager")


def test_legacy_grafana_alerting_is_read_as_one_alert_dated_by_the_intake() -> None:
    """Legacy (dashboard) alerting is still deployed (Grafana 4 to 10): read, not refused.
    More legacy bodies, real ones, are in tests/fixtures/webhooks/grafana/."""
    legacy = {"dashboardId": 1, "evalMatches": [{"value": 1, "metric": "Count", "tags": {}}],
              "message": "Notification Message", "orgId": 1, "panelId": 2, "ruleId": 1,
              "ruleName": "Panel Title alert", "state": "alerting",
              "title": "[Alerting] Panel Title alert"}
    assert sniff(legacy) == "grafana"
    with pytest.raises(IntakeError, match="received_ms"):
        parse(legacy)  # no time of its own
    [sig] = parse(legacy, received_ms=1_000)
    assert (sig.type, sig.state, sig.title, sig.event_time_ms) == (
        "alert", "firing", "Panel Title alert", 1_000)
    ok = {**legacy, "state": "ok", "evalMatches": []}
    [resolved] = parse(ok, received_ms=2_000)
    assert (resolved.state, resolved.ends_at_ms) == ("resolved", 2_000)
    assert resolved.signal_id == sig.signal_id  # the rule's alert, fired then resolved
