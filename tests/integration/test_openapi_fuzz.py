"""Schemathesis against a running worker: every operation of the OpenAPI document it serves.

Each operation gets a bounded number of generated requests (Schemathesis' examples,
coverage and fuzzing phases, valid and invalid data). A request to an operation under a
security scheme is sent three times: with a valid token of that scheme, with the other
kind of token, and with none. Every answer must be documented for its operation: no 5xx,
a documented status, Content-Type and headers, and a JSON body that fits the schema.

The document is streams/web/openapi.json, which the worker serves as /openapi.json
(test_the_worker_serves_the_fuzzed_document checks that they are the same). Schemathesis
reads it at collection, before any worker runs: ``schemathesis.pytest.from_fixture`` would
read it from the worker, but schemathesis 4.32's lazy loader reads ``Node._nodeid``, which
pytest 9.2 no longer has. (With pytest 9.2 every operation's test also gets the same node
id; the header of a failure names the operation, and its message has a curl command.)

Reproducible: Hypothesis runs with ``derandomize=True`` (no example database), so CI draws
the same requests on every run. To explore further, raise ``EXAMPLES`` and drop
``derandomize`` locally.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks

from tests.integration.harness import Names, WorkerProc, produce_events, spike_log

DOCUMENT = Path(__file__).resolve().parents[2] / "streams" / "web" / "openapi.json"
EXAMPLES = 50  # per operation, for the fuzzing phase (examples and coverage come on top)
PROVIDERS = ["native", "alertmanager", "grafana", "pagerduty", "sentry", "kubernetes", "ci"]
INTAKE = {"ops": {"token": "fuzz-intake-token", "providers": PROVIDERS, "traces": True}}
API = {"analyst": "fuzz-api-token"}
# A valid token for each security scheme of the document, and the other kind's token.
TOKENS = {"bearer": INTAKE["ops"]["token"], "apiToken": API["analyst"]}
OTHER = {"bearer": API["analyst"], "apiToken": INTAKE["ops"]["token"]}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_headers_conformance,
          checks.response_schema_conformance]
INCIDENT_IDS: list[str] = []  # filled once the worker has detected the spike

# OTLP protobuf bodies are bytes on the wire, as application/octet-stream's are.
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")
# The event stream never ends: tests/integration/test_page.py reads it.
schema = schemathesis.openapi.from_path(DOCUMENT).exclude(path="/v1/stream")

# Generated bodies and ids alone rarely reach a success answer (random SQL, random webhooks,
# ids of no incident): these strategies, drawn besides Schemathesis' own, do, so that the
# documented 200 and 202 schemas are checked too.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)
_TEXT = st.text(min_size=1, max_size=12)
_BODIES = {
    "/v1/query": st.fixed_dictionaries({"sql": st.sampled_from([
        "SELECT * FROM incidents", "SELECT * FROM incident_events",
        "SELECT * FROM step_windows LIMIT 20", "SELECT * FROM family_windows LIMIT 20",
        "SELECT * FROM triage_reports", "SELECT * FROM dead_letters"])})
    | st.fixed_dictionaries({"sql": st.just("SELECT $1 AS v"),
                             "params": st.lists(_JSON, min_size=1, max_size=1)}),
    # native signals: epoch ms from 2000-01-01 to 2026-01-01 (plausible), or any integer
    "/v1/signals": st.fixed_dictionaries(
        {"type": st.sampled_from(["alert", "runtime", "deploy", "dependency"]),
         "event_time_ms": st.integers(946_684_800_000, 1_767_225_600_000) | st.integers()},
        optional={"service": _TEXT, "env": _TEXT, "title": _TEXT,
                  "state": st.sampled_from(["firing", "resolved", "acknowledged"]),
                  "severity": st.sampled_from(["critical", "warning", "info"]),
                  "labels": st.dictionaries(_TEXT, _TEXT, max_size=3),
                  "exit_code": st.integers(), "occurrences": st.integers()}),
}
_BODIES["/v1/signals/{provider}"] = _BODIES["/v1/signals"]


@schema.hook
def before_generate_body(context: Any, strategy: Any) -> Any:
    extra = _BODIES.get(context.operation.path) if context.operation else None
    return strategy if extra is None else strategy | extra


@schema.hook
def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
    if context.operation is None or "{incident_id}" not in context.operation.path:
        return strategy
    known = st.deferred(lambda: st.fixed_dictionaries(
        {"incident_id": st.sampled_from(INCIDENT_IDS)}) if INCIDENT_IDS else st.nothing())
    return strategy | known


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    names = Names.fresh("fuzz")
    # A rate no fuzzing run reaches, so that answers are not all 429.
    w = WorkerProc(broker, names, tmp_path_factory.mktemp("fuzz") / "fuzz.duckdb", extra_env={
        "TOCSIN_INTAKE_TOKENS": json.dumps(INTAKE),
        "TOCSIN_API_TOKENS": json.dumps(API),
        "TOCSIN_INTAKE_RATE_PER_S": "10000", "TOCSIN_INTAKE_BURST": "10000",
        **names.side_topics()}).start()
    w.wait_ready(90)
    # One incident with its triage report, so incidents, reports and queries have rows.
    produce_events(broker, names.events, spike_log())
    rows = w.poll("SELECT DISTINCT incident_id FROM triage_reports", bool, 60)
    assert rows, f"no incident with a report; log: {w.tail()}"
    INCIDENT_IDS[:] = sorted({r["incident_id"] for r in rows})
    yield w
    INCIDENT_IDS.clear()
    assert w.stop() == 0


def header_sets(case: Any) -> list[dict[str, str]]:
    """A valid token for the operation's security scheme, the other kind's, and none."""
    for requirement in case.operation.definition.raw.get("security", []):
        for scheme in requirement:
            return [{"Authorization": f"Bearer {TOKENS[scheme]}"},
                    {"Authorization": f"Bearer {OTHER[scheme]}"}, {}]
    return [{}]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: Any, worker: WorkerProc) -> None:
    base_url = f"http://127.0.0.1:{worker.http_port}"
    for headers in header_sets(case):
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers,
                               transport_kwargs={"base_url": base_url})


def test_the_worker_serves_the_fuzzed_document(worker: WorkerProc) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/openapi.json",
                                timeout=20) as resp:
        assert json.loads(resp.read()) == json.loads(DOCUMENT.read_text())
