"""Signals over real HTTP into the signals topic, correlated to the incident, classified,
and the report published on the reports topic, stored in DuckDB and served by the API and
the CLI with the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_io import FIXTURES
from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    produce_events,
    read_topic,
    spike_log,
)
from tocsin.processors.report import verify
from tocsin.schemas.signal_wire import decode_signal

ONSET = T0_MS + 2_400_000 + 4_000
MIN = 60_000


def post(worker: WorkerProc, path: str, payload: Any, token: str | None = None
         ) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}{path}", data=data,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def get(worker: WorkerProc, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}{path}",
                                    timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


DEMO_SIGNALS = [
    {"type": "deploy", "service": "checkout", "env": "prod", "version": "1.5.0",
     "commit": "8f2c1e0", "author": "dana", "event_time_ms": ONSET - 6 * MIN,
     "title": "checkout 1.5.0 deployed"},
    {"type": "dependency", "service": "payment", "env": "prod", "severity": "critical",
     "event_time_ms": ONSET - 2 * MIN, "title": "payment gateway answers 502"},
    {"type": "runtime", "service": "checkout", "env": "prod", "runtime_subtype": "oom_killed",
     "pod": "checkout-7d9f", "container": "api", "exit_code": 137, "severity": "critical",
     "event_time_ms": ONSET - MIN, "title": "checkout-7d9f OOMKilled"},
    {"type": "alert", "service": "checkout", "env": "prod", "severity": "warning",
     "event_time_ms": ONSET + 30_000, "title": "<!channel> CheckoutErrorRate high",
     "fingerprint": "fp-checkout-errors"},
]


@pytest.fixture(scope="module")
def flow(broker: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    names = Names.fresh("triage")
    db = tmp_path_factory.mktemp("triage") / "t.duckdb"
    worker = WorkerProc(broker, names, db, extra_env={
        "TOCSIN_TOPICS__SIGNALS": f"sig-{names.app_id}",
        "TOCSIN_TOPICS__REPORTS": f"rep-{names.app_id}"}).start()
    worker.wait_ready(90)
    log = spike_log()
    accepted = [post(worker, "/v1/signals", s) for s in DEMO_SIGNALS]
    produce_events(broker, names.events, log)
    worker.wait_projected(len(log))
    yield {"worker": worker, "names": names, "db": db, "accepted": accepted,
           "signals_topic": f"sig-{names.app_id}", "reports_topic": f"rep-{names.app_id}"}
    assert worker.stop() == 0


def _wait_report(worker: WorkerProc, incident_id: str, status: str) -> dict[str, Any]:
    deadline = __import__("time").monotonic() + 30
    while __import__("time").monotonic() < deadline:
        code, body = get(worker, f"/v1/incidents/{incident_id}/report")
        if code == 200:
            report = json.loads(body)
            if report["incident"]["status"] == status:
                return dict(report)
        __import__("time").sleep(0.2)
    raise TimeoutError(f"no {status} report for {incident_id}")


def test_signals_are_accepted_after_the_broker_acknowledged(flow: dict[str, Any]) -> None:
    assert [a[0] for a in flow["accepted"]] == [202] * 4
    ids = [a[1]["signal_ids"][0] for a in flow["accepted"]]
    on_topic = [decode_signal(r.value).signal_id for r in
                read_topic(flow["worker"].bootstrap, flow["signals_topic"])]
    assert set(ids) <= set(on_topic)


def test_report_cites_cause_evidence_and_hash_everywhere(flow: dict[str, Any]) -> None:
    worker = flow["worker"]
    incident = worker.query("SELECT incident_id FROM incidents")[0]["incident_id"]
    report = _wait_report(worker, incident, "resolved")
    assert verify(report)
    cause = report["cause"]
    assert (cause["kind"], cause["rule_id"]) == ("dependency", "dependency_signal")
    kinds = {row["kind"] for row in report["evidence"]}
    assert kinds == {"incident", "deploy", "dependency", "runtime", "alert"}
    assert report["runtime"][0]["pod"] == "checkout-7d9f"
    # The same bytes on the topic, in DuckDB, over HTTP and from the CLI.
    _, api_bytes = get(worker, f"/v1/incidents/{incident}/report?format=json")
    topic = [r.value for r in read_topic(worker.bootstrap, flow["reports_topic"])
             if json.loads(r.value)["report_hash"] == report["report_hash"]]
    stored = worker.query("SELECT body FROM triage_reports WHERE report_hash = "
                          f"'{report['report_hash']}'")[0]["body"].encode()
    cli = subprocess.run([sys.executable, "-P", "-m", "tocsin", "report", incident,
                          "--db", str(flow["db"]), "--format", "json"],
                         capture_output=True, timeout=60, env=dict(os.environ))
    assert cli.returncode == 0, cli.stderr
    assert topic == [api_bytes] and stored == api_bytes and cli.stdout == api_bytes


def test_renderings_escape_untrusted_text(flow: dict[str, Any]) -> None:
    worker = flow["worker"]
    incident = worker.query("SELECT incident_id FROM incidents")[0]["incident_id"]
    _wait_report(worker, incident, "resolved")
    code, md = get(worker, f"/v1/incidents/{incident}/report?format=md")
    assert code == 200 and b"<!channel>" not in md and b"&lt;\\!channel&gt;" in md
    code, slack = get(worker, f"/v1/incidents/{incident}/report?format=slack")
    assert code == 200 and b"<!channel>" not in slack
    code, note = get(worker, f"/v1/incidents/{incident}/report?format=pagerduty")
    assert code == 200 and b"Likely cause: dependency (high)" in note
    assert get(worker, f"/v1/incidents/{incident}/report?format=pdf")[0] == 400
    assert get(worker, "/v1/incidents/inc_nope/report")[0] == 404


def test_incidents_endpoint_lists_cause_and_hash(flow: dict[str, Any]) -> None:
    code, body = get(flow["worker"], "/v1/incidents?status=resolved")
    assert code == 200
    incidents = json.loads(body)["incidents"]
    assert len(incidents) == 1 and incidents[0]["cause_kind"] == "dependency"
    assert get(flow["worker"], "/v1/incidents?status=sleeping")[0] == 400


SNIPPETS = {"pod-status-lastState-oomkilled-k8s-docs.json"}
FIXTURE_FILES = sorted(
    p for d in ("alertmanager", "grafana", "pagerduty", "kubernetes")
    for p in (FIXTURES / d).glob("*.json"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_provider_fixture_goes_through_the_http_intake(flow: dict[str, Any], path: Path
                                                             ) -> None:
    status, body, _ = post(flow["worker"], "/v1/signals", path.read_bytes())
    if path.name in SNIPPETS:  # not a whole object (SOURCES.md): refused, saying why
        assert status == 400 and "Expected one of" in body["error"], body
        return
    assert status == 202, body
    assert body["provider"] in path.parent.name or (path.parent.name, body["provider"]) in {
        ("alertmanager", "alertmanager")}
    if body["signal_ids"]:
        on_topic = {decode_signal(r.value).signal_id for r in
                    read_topic(flow["worker"].bootstrap, flow["signals_topic"])}
        assert set(body["signal_ids"]) <= on_topic


def test_unknown_and_malformed_payloads_get_4xx_with_a_message(flow: dict[str, Any]) -> None:
    worker = flow["worker"]
    status, body, _ = post(worker, "/v1/signals", {"hello": "world"})
    assert status == 400 and "expected" in body["error"].lower()
    status, body, _ = post(worker, "/v1/signals", b"{nope")
    assert status == 400 and "not JSON" in body["error"]
    status, body, _ = post(worker, "/v1/signals/alertmanager", {"version": "4"})
    assert status == 422 and "alerts" in body["error"]
    status, body, _ = post(worker, "/v1/signals/splunk", {})
    assert status == 404 and "alertmanager" in body["providers"]
    status, body, _ = post(worker, "/v1/signals", b"x" * (2 * 1024 * 1024))
    assert status == 413


def test_signals_after_the_events_give_the_same_final_report_bytes(
        flow: dict[str, Any], broker: str, tmp_path: Path) -> None:
    """Invariant 1 across topics: here the signals arrive after the incident resolved
    (in arrival order; their event times are the same), against the flow above where they
    arrived before any event."""
    first = flow["worker"]
    incident = first.query("SELECT incident_id FROM incidents")[0]["incident_id"]
    expected = json.dumps(_wait_report(first, incident, "resolved"), sort_keys=True)
    names = Names.fresh("late")
    worker = WorkerProc(broker, names, tmp_path / "late.duckdb", extra_env={
        "TOCSIN_TOPICS__SIGNALS": f"sig-{names.app_id}",
        "TOCSIN_TOPICS__REPORTS": f"rep-{names.app_id}"}).start()
    try:
        log = spike_log()
        produce_events(broker, names.events, log)
        worker.wait_projected(len(log))
        _wait_report(worker, incident, "resolved")
        for s in reversed(DEMO_SIGNALS):
            assert post(worker, "/v1/signals/native", s)[0] == 202
        deadline = __import__("time").monotonic() + 30
        while __import__("time").monotonic() < deadline:
            report = _wait_report(worker, incident, "resolved")
            if len(report["evidence"]) == 5:
                break
            __import__("time").sleep(0.2)
        _, api_bytes = get(worker, f"/v1/incidents/{incident}/report?format=json")
    finally:
        assert worker.stop() == 0
    assert json.dumps(json.loads(api_bytes), sort_keys=True) == expected
    _, first_bytes = get(first, f"/v1/incidents/{incident}/report?format=json")
    assert api_bytes == first_bytes
