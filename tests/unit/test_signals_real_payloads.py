"""Real webhook bodies, as other projects recorded them, through the sniffer and the parsers.

Every file under ``tests/fixtures/webhooks/<provider>/`` (origin, commit, licence and any
conversion: ``SOURCES.md`` there) has a row in ``TABLE``, written by reading the payload:
the provider it is sniffed as, how many signals it gives, and the first signal's type,
state, service and severity (plus a few more fields where the payload decides them), or,
for a body that carries no signal, the reason the parser gives for skipping it. Each body
is parsed twice, sniffed and with its provider forced, and both must agree: a real sender's
body never raises, so it never becomes a 400 or 422.

The native format has no public senders (it is Tocsin's own), so it is covered by reading
every signal of every real body back through it: a normalized signal re-enters unchanged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_io import FIXTURES as SHARED
from tests.fixtures_io import ms
from tocsin.processors.signals import intake, signal_id, sniff

WEBHOOKS = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
RECEIVED = 1_800_000_000_000  # the intake's receive time, for bodies without a time


@dataclass(frozen=True)
class Row:
    provider: str
    count: int
    type: str | None = None
    state: str | None = None
    service: str | None = None
    severity: str | None = None
    more: dict[str, Any] = field(default_factory=dict)  # further fields of the first signal
    skipped: str | None = None  # a word of the skip note, for a body without signals


TABLE: dict[str, Row] = {
    # -- Alertmanager
    "alertmanager/alertmanager-v3-firing-groupkey-number-alerta.json": Row(
        "alertmanager", 1, "alert", "firing", "System", "critical",
        {"env": "Production", "reason": "failedConnect", "title": "Connect fail",
         "event_time_ms": ms("2016-08-01T13:27:08.008+03:00")}),
    "alertmanager/alertmanager-v4-alert-without-status-prometheus-msteams.json": Row(
        "alertmanager", 1, "alert", "firing", "docker_nodes", "warning",
        {"title": "Server High Memory usage",
         "provider_url": "http://docker.for.mac.host.internal:9093"}),
    "alertmanager/alertmanager-v4-no-fingerprint-2017-alerta.json": Row(
        "alertmanager", 1, "alert", "firing", None, "critical",
        {"reason": "thing_dead", "starts_at_ms": ms("2017-08-03T15:17:37.804-04:00")}),
    "alertmanager/alertmanager-v4-prometheus-operator-resolved-prom2teams.json": Row(
        "alertmanager", 1, "alert", "resolved", None, "warning",
        {"fingerprint": "dd19ae3d4e06ac55", "title": "CPU throttling",
         "ends_at_ms": ms("2019-01-28T20:27:23.868+00:00")}),
    "alertmanager/alertmanager-v4-resolved-zero-endsat-zulip.json": Row(
        "alertmanager", 1, "alert", "resolved", None, "critical",
        {"fingerprint": "a1bc48475b20e73d", "ends_at_ms": None,
         "event_time_ms": ms("2020-02-06T00:17:58.432+00:00")}),
    # -- Grafana: legacy (dashboard) alerting, Grafana 6 to 8, then unified alerting 11, 12
    "grafana/grafana-legacy-alerting-evalmatches-tags-alerta.json": Row(
        "grafana", 1, "alert", "firing", "monitoring", "warning",
        {"title": "Zeta CPU alert", "dedup_key": "legacy:rule=7",
         "event_time_ms": RECEIVED, "description": "boom!"}),
    "grafana/grafana-legacy-ok-alerta.json": Row(
        "grafana", 1, "alert", "resolved", None, "warning",
        {"dedup_key": "legacy:rule=7", "ends_at_ms": RECEIVED}),
    "grafana/grafana6-legacy-alerting-rule-tags-alerta.json": Row(
        "grafana", 1, "alert", "firing", "Physical", "warning",
        {"env": "Staging", "title": "Testing -> Battery Voltage alert"}),
    "grafana/grafana7-legacy-no-data-alerting-zulip.json": Row(
        "grafana", 1, "alert", "firing", None, "warning",
        {"dedup_key": "legacy:org=1,dashboard=2,panel=6,rule=3", "title": "No Data alert"}),
    "grafana/grafana7-legacy-paused-no-evalmatches-zulip.json": Row(
        "grafana", 0, skipped="paused"),
    "grafana/grafana11-unified-values-imageurl-zulip.json": Row(
        "grafana", 1, "alert", "firing", None, "warning",
        {"fingerprint": "e6349a25f5ef0e9e", "title": "High memory usage",
         "provider_url": "https://play.grafana.org/d/ece9fb32-7f71-4be9-bd94-2f23608ae5b9"
                         "?orgId=1&viewPanel=2"}),
    "grafana/grafana12-test-notification-keep.json": Row(
        "grafana", 1, "alert", "firing", None, "warning",
        {"fingerprint": "c4edaaf9f9f839b0", "description": "Test Description",
         "provider_url": "https://grafana.example.com/d/dashboard_uid?viewPanel=1"}),
    # -- PagerDuty: webhooks V1 and V2 (messages[]) and V3
    "pagerduty/webhook-v1-acknowledge-resolve-messages-alerta.json": Row(
        "pagerduty", 2, "alert", "acknowledged", "service", "warning",
        {"dedup_key": "PIJ90N7", "title": "45645", "reason": "incident.acknowledge",
         "event_time_ms": ms("2013-07-09T20:25:44+00:00")}),
    "pagerduty/webhook-v2-incident-trigger-messages-zulip.json": Row(
        "pagerduty", 1, "alert", "firing", "Production XDB Cluster", "critical",
        {"dedup_key": "PRORDTY", "title": "My new incident",
         "provider_url": "https://webdemo.pagerduty.com/incidents/PRORDTY"}),
    "pagerduty/webhook-v3-incident-resolved-zulip.json": Row(
        "pagerduty", 1, "alert", "resolved", "pig208", "critical",
        {"dedup_key": "PCPZE64", "ends_at_ms": ms("2021-06-04T13:16:53.816+00:00")}),
    "pagerduty/webhook-v3-service-created-zulip.json": Row(
        "pagerduty", 0, skipped="service.created"),
    # -- Sentry integration platform: event_alert (2020, no issue_id), issue, metric, install
    "sentry/event-alert-go-issue-url-no-issue-id-zulip.json": Row(
        "sentry", 1, "runtime", "firing", "zulip-integration-testing", "warning",
        {"dedup_key": "1637164584", "runtime_subtype": "uncaught_exception",
         "reason": "*url.Error", "event_time_ms": ms("2020-04-29T11:23:45.978+00:00")}),
    "sentry/event-alert-go-message-no-exception-zulip.json": Row(
        "sentry", 1, "alert", "firing", "zulip-integration-testing", "info",
        {"dedup_key": "1638844654", "runtime_subtype": None,
         "title": "A test message event from golang."}),
    "sentry/installation-created-docs.json": Row("sentry", 0, skipped="installation"),
    "sentry/issue-assigned-to-team-zulip.json": Row(
        "sentry", 1, "runtime", "acknowledged", "zulip-integration-testing", "warning",
        {"dedup_key": "1638821441", "event_time_ms": RECEIVED,
         "labels": {"short_id": "ZULIP-INTEGRATION-TESTING-E"}}),
    "sentry/issue-resolved-zulip.json": Row(
        "sentry", 1, "runtime", "resolved", "zulip-integration-testing", "warning",
        {"dedup_key": "1638821441", "ends_at_ms": RECEIVED, "reason": "Exception"}),
    "sentry/metric-alert-resolved-docs.json": Row("sentry", 0, skipped="metric_alert"),
    # -- Kubernetes: the API's own round-trip fixtures (every field set) and real dumps
    "kubernetes/event-v1-pulled-k9s.json": Row("kubernetes", 0, skipped="Pulled"),
    "kubernetes/k8s-api-testdata-core.v1.Event.json": Row(
        "kubernetes", 0, skipped="reasonValue"),
    "kubernetes/k8s-api-testdata-core.v1.Pod.json": Row(
        "kubernetes", 0, skipped="no container OOM-killed"),
    "kubernetes/k8s-api-testdata-events.k8s.io.v1.Event.json": Row(
        "kubernetes", 0, skipped="reasonValue"),
    "kubernetes/k8s-api-testdata-events.k8s.io.v1beta1.Event.json": Row(
        "kubernetes", 0, skipped="reasonValue"),
    "kubernetes/pod-v1-pod-crashloop-pending-is-healthy.json": Row(
        "kubernetes", 0, skipped="no container OOM-killed"),
    "kubernetes/pod-v1-start-error-is-healthy.json": Row(
        "kubernetes", 0, skipped="no container OOM-killed"),
    # -- CI: GitHub deployment_status (2015, 2019 GHES, 2022 Pages), GitLab deployment
    "ci/github-deployment-status-failure-2015-zulip.json": Row(
        "ci", 1, "deploy", "firing", "public-repo", "warning",
        {"env": "production", "commit": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
         "version": None, "author": "baxterthehacker"}),
    "ci/github-deployment-status-in-progress-gh-pages-octokit.json": Row(
        "ci", 1, "deploy", "firing", "Hello-World", "info",
        {"env": "github-pages", "reason": "in_progress", "author": "github-pages[bot]",
         "dedup_key": "github:Codertocat/Hello-World:145988746"}),
    "ci/github-deployment-status-success-ghes35-octokit.json": Row(
        "ci", 1, "deploy", "firing", "Hello-World", "info",
        {"dedup_key": "github:Codertocat/Hello-World:2", "reason": "success"}),
    "ci/gitlab-deployment-success-no-deployment-id-gitlab4j.json": Row(
        "ci", 1, "deploy", "firing", "test-deployment-webhooks", "info",
        {"dedup_key": "gitlab:root/test-deployment-webhooks:staging:"
                      "279484c09fbe69ededfced8c1bb6e6d24616b468",
         "event_time_ms": ms("2021-04-28T21:50:00+02:00"), "author": "root"}),
    "ci/gitlab-deployment-success-ref-no-tier-go-gitlab.json": Row(
        "ci", 1, "deploy", "firing", "test-deployment-webhooks", "info",
        {"dedup_key": "gitlab:root/test-deployment-webhooks:15", "version": "1.0.0",
         "author": "user1"}),
}


def load(name: str) -> Any:
    return json.loads((WEBHOOKS / name).read_text())


def test_every_body_has_a_row_and_every_format_has_several() -> None:
    files = sorted(str(p.relative_to(WEBHOOKS)) for p in WEBHOOKS.rglob("*.json"))
    assert files == sorted(TABLE)
    assert len(files) >= 25
    per_provider: dict[str, int] = {}
    for row in TABLE.values():
        per_provider[row.provider] = per_provider.get(row.provider, 0) + 1
    assert set(per_provider) == {"alertmanager", "grafana", "pagerduty", "sentry",
                                 "kubernetes", "ci"}
    assert min(per_provider.values()) >= 4


@pytest.mark.parametrize("name", sorted(TABLE))
def test_a_real_body_gives_its_signals_or_says_why_not(name: str) -> None:
    row, payload = TABLE[name], load(name)
    assert sniff(payload) == row.provider
    sniffed = intake(copy.deepcopy(payload), received_ms=RECEIVED)
    forced = intake(payload, provider=row.provider, received_ms=RECEIVED)
    assert sniffed == forced
    assert forced.provider == row.provider
    assert len(forced.signals) == row.count
    assert all(s.source == row.provider for s in forced.signals)
    if row.count == 0:
        assert row.skipped is not None
        assert any(row.skipped in note for note in forced.skipped), forced.skipped
        return
    first = forced.signals[0]
    assert (first.type, first.state, first.service, first.severity) == (
        row.type, row.state, row.service, row.severity)
    for key, value in row.more.items():
        got = getattr(first, key)
        if key == "labels":
            assert value.items() <= got.items()
        else:
            assert got == value, key


def test_a_sentry_event_without_issue_id_takes_it_from_issue_url() -> None:
    """The reported 400: Sentry (sentry.io in 2020, self-hosted of that era) sent event
    alerts with ``issue_url`` and no ``issue_id``."""
    payload = load("sentry/event-alert-go-issue-url-no-issue-id-zulip.json")
    event = payload["data"]["event"]
    assert "issue_id" not in event
    assert event["issue_url"] == "https://sentry.io/api/0/issues/1637164584/"
    [sig] = intake(payload).signals
    assert sig.signal_id == signal_id("sentry", "1637164584")
    del event["issue_url"]  # then the web_url's /issues/{id}/ part
    assert intake(payload).signals[0].signal_id == sig.signal_id


def test_the_issue_and_its_event_alert_fold_into_one_signal() -> None:
    alert = intake(load("sentry/event-alert-go-issue-url-no-issue-id-zulip.json")).signals[0]
    resolved = intake(load("sentry/issue-resolved-zulip.json"),
                      received_ms=RECEIVED).signals[0]
    assigned = intake(load("sentry/issue-assigned-to-team-zulip.json"),
                      received_ms=RECEIVED).signals[0]
    assert resolved.signal_id == assigned.signal_id  # same issue 1638821441
    assert alert.signal_id != resolved.signal_id  # a different issue (1637164584)


def test_pagerduty_v1_messages_of_one_incident_fold() -> None:
    body = load("pagerduty/webhook-v1-acknowledge-resolve-messages-alerta.json")
    ack, resolve = intake(body).signals
    assert (ack.state, resolve.state) == ("acknowledged", "resolved")
    assert ack.signal_id == resolve.signal_id == signal_id("pagerduty", "PIJ90N7")
    assert resolve.ends_at_ms == ms("2013-07-09T20:25:45+00:00")


def test_legacy_grafana_alerting_and_ok_of_one_rule_fold() -> None:
    firing = intake(load("grafana/grafana-legacy-alerting-evalmatches-tags-alerta.json"),
                    received_ms=RECEIVED).signals[0]
    ok = intake(load("grafana/grafana-legacy-ok-alerta.json"),
                received_ms=RECEIVED + 60_000).signals[0]
    assert firing.signal_id == ok.signal_id
    assert firing.labels["instance"] == "zeta.domain"  # the one eval match's tags


def test_an_events_k8s_io_v1_backoff_reads_the_deprecated_core_fields() -> None:
    """The API's events.k8s.io/v1 fixture with a kubelet crash-loop reason: the core/v1
    times and source it carries under ``deprecated*`` names date and place the signal."""
    event = load("kubernetes/k8s-api-testdata-events.k8s.io.v1.Event.json")
    event.update(reason="BackOff", note="Back-off restarting failed container app in pod x")
    event["regarding"].update(kind="Pod", fieldPath="spec.containers{app}")
    del event["series"]
    [sig] = intake(event).signals
    assert (sig.runtime_subtype, sig.container, sig.node) == ("crashloop", "app", "hostValue")
    assert sig.event_time_ms == ms("2014-01-01T01:01:01+00:00")  # deprecatedLastTimestamp
    assert sig.starts_at_ms == ms("2013-01-01T01:01:01+00:00")  # deprecatedFirstTimestamp


def _real_bodies() -> list[tuple[str, Any]]:
    bodies = [(name, load(name)) for name in sorted(TABLE)]
    for folder in ("alertmanager", "grafana", "pagerduty", "kubernetes"):
        for path in sorted((SHARED / folder).glob("*.json")):
            bodies.append((f"shared/{folder}/{path.name}", json.loads(path.read_text())))
    return bodies


def test_every_signal_of_every_real_body_re_enters_unchanged_as_native() -> None:
    seen = 0
    for name, payload in _real_bodies():
        try:
            result = intake(payload, received_ms=RECEIVED)
        except ValueError:
            continue  # the shared docs snippet that is not a payload (tested elsewhere)
        for sig in result.signals:
            record = sig.to_dict()
            assert sniff(record) == "native", name
            assert intake(record).signals == (sig,), name
            seen += 1
    assert seen >= 40


def test_numbers_sent_as_text_are_read_as_numbers() -> None:
    body = load("pagerduty/webhook-v2-incident-trigger-messages-zulip.json")
    body["messages"][0]["incident"]["incident_number"] = "33"
    assert intake(body).signals[0].labels["incident_number"] == "33"
    alerts = load("alertmanager/alertmanager-v4-resolved-zero-endsat-zulip.json")
    alerts["truncatedAlerts"] = "2"
    assert intake(alerts).truncated == 2
