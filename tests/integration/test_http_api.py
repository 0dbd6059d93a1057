"""The HTTP API against its OpenAPI document, and the intake's guards (auth, size, rate)
over real requests to a running worker."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.harness import T0_MS, Names, WorkerProc

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "streams" / "web" / "openapi.json")
                     .read_text())
TOKENS = {"alertmanager": "am-secret-token", "ci": "ci-secret-token",
          "otlp": "otlp-secret-token"}
OPS = {"token": "ops-secret-token", "providers": ["native", "alertmanager", "grafana",
                                                 "pagerduty", "sentry", "kubernetes", "ci"]}
PAGER = {"token": "pager-secret-token", "providers": ["alertmanager"]}
LIMITED = {"token": "limited-secret-token", "providers": ["native"], "kinds": ["alert"]}
API = {"analyst": "analyst-secret-token"}
READ = API["analyst"]
SIGNAL = {"type": "alert", "service": "checkout", "env": "prod", "title": "x",
          "event_time_ms": T0_MS}
BURST = 20


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    names = Names.fresh("api")
    # A rate that does not refill during the test (0.01/s): each source has BURST signals.
    w = WorkerProc(broker, names, tmp_path_factory.mktemp("api") / "api.duckdb", extra_env={
        "TOCSIN_INTAKE_TOKENS": json.dumps({**TOKENS, "ops": OPS, "limited": LIMITED,
                                            "pager": PAGER}),
        "TOCSIN_API_TOKENS": json.dumps(API),
        "TOCSIN_INTAKE_RATE_PER_S": "0.01", "TOCSIN_INTAKE_BURST": str(BURST),
        "TOCSIN_INTAKE_MAX_BODY_BYTES": "4096",
        "TOCSIN_HTTP_BODY_TIMEOUT_MS": "1500", "TOCSIN_HTTP_HEADER_TIMEOUT_MS": "1500",
        **names.side_topics()}).start()
    w.wait_ready(90)
    yield w
    assert w.stop() == 0


def call(worker: WorkerProc, method: str, path: str, body: Any = None,
         token: str | None = None, extra: dict[str, str] | None = None
         ) -> tuple[int, bytes, dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}{path}", data=data,
                                 headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def check(template: str, method: str, status: int, body: bytes) -> None:
    """The answer is documented for this path, method and status, and fits its schema."""
    operation = OPENAPI["paths"][template][method.lower()]
    assert str(status) in operation["responses"], f"{status} undocumented for {template}"
    content = operation["responses"][str(status)].get("content", {})
    if "application/json" in content:
        schema = {**content["application/json"]["schema"],
                  "components": OPENAPI["components"]}
        jsonschema.validate(json.loads(body), schema)


def test_documented_answers_fit_their_schemas(worker: WorkerProc) -> None:
    ops = OPS["token"]
    cases = [
        ("GET", "/healthz", "/healthz", None, None, 200),
        ("GET", "/livez", "/livez", None, None, 200),
        ("GET", "/readyz", "/readyz", None, None, 200),
        ("GET", "/openapi.json", "/openapi.json", None, None, 200),
        ("GET", "/metrics", "/metrics", None, READ, 200),
        ("GET", "/metrics", "/metrics", None, None, 401),
        ("POST", "/v1/query", "/v1/query", {"sql": "SELECT 1 AS one"}, READ, 200),
        ("POST", "/v1/query", "/v1/query", {"sql": "SELECT 1 AS one"}, None, 401),
        ("POST", "/v1/query", "/v1/query", {"sql": "SELECT 1 AS one"}, ops, 401),
        ("POST", "/v1/query", "/v1/query", {"sql": "DROP TABLE incidents"}, READ, 400),
        ("GET", "/v1/incidents", "/v1/incidents", None, READ, 200),
        ("GET", "/v1/incidents", "/v1/incidents", None, None, 401),
        ("GET", "/v1/incidents", "/v1/incidents?status=nope", None, READ, 400),
        ("GET", "/v1/incidents/{incident_id}/report", "/v1/incidents/inc_x/report", None,
         READ, 404),
        ("GET", "/v1/incidents/{incident_id}/report", "/v1/incidents/inc_x/report", None,
         None, 401),
        ("GET", "/v1/incidents/{incident_id}/report",
         "/v1/incidents/inc_x/report?format=pdf", None, READ, 400),
        ("GET", "/v1/incidents/{incident_id}", "/v1/incidents/inc_x", None, READ, 404),
        ("GET", "/v1/incidents/{incident_id}", "/v1/incidents/inc_x", None, None, 401),
        # Operator actions are guarded by the API tokens; an intake token is not one.
        ("POST", "/v1/incidents/{incident_id}/actions", "/v1/incidents/inc_x/actions",
         {"action": "acknowledge", "by": "ana"}, None, 401),
        ("POST", "/v1/incidents/{incident_id}/actions", "/v1/incidents/inc_x/actions",
         {"action": "acknowledge", "by": "ana"}, ops, 401),
        ("POST", "/v1/incidents/{incident_id}/actions", "/v1/incidents/inc_x/actions",
         {"action": "acknowledge", "by": "ana"}, READ, 404),
        ("POST", "/v1/incidents/{incident_id}/actions", "/v1/incidents/inc_x/actions",
         {"action": "shrug", "by": "ana"}, READ, 400),
        ("POST", "/v1/signals", "/v1/signals", SIGNAL, ops, 202),
        ("POST", "/v1/signals", "/v1/signals", SIGNAL, READ, 401),
        ("POST", "/v1/signals", "/v1/signals", SIGNAL, TOKENS["ci"], 403),
        ("POST", "/v1/signals", "/v1/signals", {"what": 1}, ops, 400),
        ("POST", "/v1/signals/{provider}", "/v1/signals/alertmanager", {"version": "4"},
         TOKENS["alertmanager"], 422),
        ("POST", "/v1/signals/{provider}", "/v1/signals/ci", {"version": "4"},
         TOKENS["alertmanager"], 403),
        ("POST", "/v1/signals/{provider}", "/v1/signals/nagios", {}, ops, 404),
        # Microseconds where milliseconds belong: refused, not stored as year 58,000.
        ("POST", "/v1/signals", "/v1/signals", {**SIGNAL, "event_time_ms": T0_MS * 1000},
         ops, 422),
    ]
    for method, template, path, body, token, expected in cases:
        status, data, _ = call(worker, method, path, body, token)
        assert status == expected, (path, status, data)
        check(template, method, status, data)


def test_every_route_the_server_answers_is_documented(worker: WorkerProc) -> None:
    documented = set(OPENAPI["paths"])
    served = {"/healthz", "/livez", "/readyz", "/metrics", "/openapi.json", "/v1/query",
              "/v1/signals", "/v1/signals/{provider}", "/v1/incidents",
              "/v1/incidents/{incident_id}/report", "/v1/traces", "/v1/incidents/{incident_id}",
              "/v1/incidents/{incident_id}/actions", "/", "/incidents/{incident_id}",
              "/static/{name}", "/v1/stream", "/v1/requests/{request_id}", "/v1/blast"}
    assert served == documented
    status, body, _ = call(worker, "GET", "/openapi.json")
    assert status == 200 and json.loads(body) == OPENAPI


def test_bearer_tokens_are_required_and_checked(worker: WorkerProc) -> None:
    status, body, headers = call(worker, "POST", "/v1/signals", SIGNAL)
    assert status == 401 and "bearer" in json.loads(body)["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, body, _ = call(worker, "POST", "/v1/signals", SIGNAL, "am-secret-tokeX")
    assert status == 401 and "unknown" in json.loads(body)["error"]
    assert b"am-secret-tokeX" not in body, "header values are never echoed"
    check("/v1/signals", "POST", status, body)


def test_an_intake_token_is_bound_to_its_source(worker: WorkerProc) -> None:
    """An alerting source cannot post a deploy, however it shapes the payload."""
    deploy = {"type": "deploy", "service": "checkout", "env": "prod", "title": "v2",
              "version": "2", "event_time_ms": T0_MS}
    for token in (TOKENS["alertmanager"], LIMITED["token"]):
        status, body, _ = call(worker, "POST", "/v1/signals", deploy, token)
        assert status == 403, (token, status, body)
        check("/v1/signals", "POST", status, body)
    status, body, _ = call(worker, "POST", "/v1/signals/native", deploy, TOKENS["ci"])
    assert status == 403 and "native" in json.loads(body)["error"]
    # The traces endpoint is intake too: an OTLP token, never a signal source's.
    empty = b"{}"
    assert call(worker, "POST", "/v1/traces", empty, None)[0] == 401
    assert call(worker, "POST", "/v1/traces", empty, TOKENS["ci"])[0] == 403
    assert call(worker, "POST", "/v1/traces", empty, TOKENS["otlp"])[0] == 200


def test_body_size_limit(worker: WorkerProc) -> None:
    big = {**SIGNAL, "description": "x" * 8000}
    status, body, _ = call(worker, "POST", "/v1/signals", big, OPS["token"])
    assert status == 413
    check("/v1/signals", "POST", status, body)


def test_rate_limit_counts_signals_and_answers_429_with_retry_after(worker: WorkerProc
                                                                    ) -> None:
    def group(n: int) -> dict[str, Any]:
        return {"version": "4", "status": "firing", "receiver": "tocsin",
                "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                "externalURL": "http://am", "groupKey": "{}:{}", "alerts": [
                    {"status": "firing", "labels": {"alertname": f"A{i}", "service": "x"},
                     "annotations": {}, "startsAt": "2026-11-02T09:00:00Z",
                     "endsAt": "0001-01-01T00:00:00Z", "fingerprint": f"f{i}"}
                    for i in range(n)]}

    am = PAGER["token"]  # a source of its own: no other test spends its bucket
    status, body, _ = call(worker, "POST", "/v1/signals", group(BURST + 1), am)
    assert status == 413 and "burst" in json.loads(body)["error"]
    # 19 left after the refused request's own token; 12 more taken, 7 left: 1 taken for
    # the next request, then its 9 others do not fit.
    status, body, _ = call(worker, "POST", "/v1/signals", group(12), am)
    assert status == 202 and len(json.loads(body)["signal_ids"]) == 12
    status, body, headers = call(worker, "POST", "/v1/signals", group(10), am)
    assert status == 429 and int(headers["Retry-After"]) >= 1, (status, body)
    check("/v1/signals", "POST", 429, body)
    # Another source has its own bucket.
    assert call(worker, "POST", "/v1/signals", SIGNAL, LIMITED["token"])[0] == 202


def test_a_retried_delivery_is_answered_once_and_counted_once(worker: WorkerProc) -> None:
    signal = {**SIGNAL, "title": "retried", "dedup_key": "retried-once"}
    key = {"Idempotency-Key": "delivery-42"}
    first = call(worker, "POST", "/v1/signals", signal, OPS["token"], key)
    again = call(worker, "POST", "/v1/signals", signal, OPS["token"], key)
    assert first[0] == again[0] == 202
    assert json.loads(first[1]) == json.loads(again[1])
    assert again[2].get("Idempotent-Replayed") == "true"
    other = call(worker, "POST", "/v1/signals", signal, OPS["token"],
                 {"Idempotency-Key": "delivery-43"})
    assert other[0] == 202
    signal_id = json.loads(first[1])["signal_ids"][0]
    rows = worker.poll(f"SELECT occurrences FROM signals WHERE signal_id = '{signal_id}'",
                       lambda r: r and r[0]["occurrences"] >= 2)
    assert rows == [{"occurrences": 2}], "two deliveries, not three"


def test_the_cli_shows_its_api_token_to_the_worker(worker: WorkerProc) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    argv = [sys.executable, "-P", "-m", "tocsin", "query", "SELECT 42 AS answer",
            "--db", str(worker.db), "--format", "json"]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "TOCSIN_API_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
    taken = subprocess.run(argv, env={**env, "TOCSIN_API_TOKEN": READ}, capture_output=True,
                           text=True, timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout) == [{"answer": 42}]
