"""The incident timeline on a running worker (ADR 0019): drawn by detection from the events
on the embedded broker, complete 10 minutes (event time) after resolution, the same points
in the report served over HTTP and in DuckDB's incident_timeline, drawn by
``tocsin incident ID --plot``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.harness import T0_MS, Names, WorkerProc, event, produce_events

B = 30_000
SERVICES = ("checkout", "cart", "search")


def slow_spike_log(start_ms: int) -> list[dict[str, Any]]:
    """40 min of calm, 3 min where checkout's payment.charge fails on 2 of 3 calls after
    ~900 ms, then 30 min of calm again; every request carries its duration."""
    log = []
    for s in range(73 * 60):
        t = start_ms + s * 1000
        failing = 2400 <= s < 2580 and s % 3 != 0
        log.append(event(t, "checkout", "payment.charge", duration_ms=900.0 + s % 40,
                         error="PMT_502") if failing else
                   event(t, "checkout", "payment.charge", duration_ms=40.0 + s % 10))
        log.extend(event(t + 1 + i, svc, "GET /", duration_ms=5.0)
                   for i, svc in enumerate(SERVICES[1:]))
    return log


@pytest.fixture(scope="module")
def run(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    names = Names.fresh("tl")
    log = slow_spike_log(T0_MS)
    produce_events(broker, names.events, log, partitions=2)
    db = tmp_path_factory.mktemp("tl") / "tl.duckdb"
    worker = WorkerProc(broker, names, db, extra_env=names.side_topics()).start()
    worker.wait_ready(90)
    done = worker.wait_rows("SELECT incident_id, seq FROM incident_events "
                            "WHERE kind = 'timeline'", 120)[0]
    worker.wait_rows("SELECT 1 FROM triage_reports WHERE incident_id = "
                     f"'{done['incident_id']}' AND incident_seq = {done['seq']}", 90)
    yield {"worker": worker, "db": db, "log": log, "incident": done["incident_id"]}
    assert worker.stop() == 0


def report(worker: WorkerProc, incident_id: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.http_port}/v1/incidents/{incident_id}/report")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def test_the_timeline_is_what_the_events_were(run: dict[str, Any]) -> None:
    timeline = report(run["worker"], run["incident"])["timeline"]
    assert timeline["complete"] and not timeline["truncated"]
    onset, resolved = timeline["onset_ms"], timeline["resolved_ms"]
    assert timeline["from_ms"] == (onset - 300_000) // B * B
    assert timeline["to_ms"] == resolved + 600_000
    charges = [e for e in run["log"] if e["step"] == "payment.charge"]
    for point in timeline["points"]:
        inside = [e for e in charges if point["t_ms"] <= e["event_time_ms"] < point["t_ms"] + B]
        failed = sum(1 for e in inside if e.get("status") == "error")
        assert (point["requests"], point["errors"]) == (len(inside), failed)
        if failed:
            assert point["p95_ms"] >= 850  # the failing calls' ~900 ms, within a bin
    summary = timeline["summary"]
    assert summary["error_rate"]["start"] == 0.0 and summary["error_rate"]["end"] == 0.0
    assert summary["error_rate"]["max"] == pytest.approx(2 / 3, abs=0.04)
    assert summary["p95_ms"]["start"] < 60 and summary["p95_ms"]["max"] > 850


def test_duckdb_holds_the_same_points_and_summary(run: dict[str, Any]) -> None:
    worker, incident = run["worker"], run["incident"]
    timeline = report(worker, incident)["timeline"]
    rows = worker.wait_rows(
        "SELECT t_ms, errors, requests, error_rate, p50_ms, p95_ms FROM incident_timeline "
        f"WHERE incident_id = '{incident}' ORDER BY t_ms", 30)
    assert rows == [{k: p[k] for k in ("t_ms", "errors", "requests", "error_rate", "p50_ms",
                                       "p95_ms")} for p in timeline["points"]]
    head = worker.wait_rows("SELECT * FROM incident_timeline_summary WHERE incident_id = "
                            f"'{incident}'", 30)[0]
    assert head["complete"] is True and head["points"] == len(rows)
    assert head["peak_error_rate"] == timeline["summary"]["error_rate"]["max"]
    assert json.loads(head["summary"]) == timeline["summary"]


def test_the_cli_draws_it(run: dict[str, Any]) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "tocsin", "incident", run["incident"], "--plot",
         "--db", str(run["db"])], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "minutes from onset" in done.stdout and "\x1b" not in done.stdout
    assert "error rate 0% before, peak 6" in done.stdout
    unknown = subprocess.run(
        [sys.executable, "-P", "-m", "tocsin", "incident", "inc_0000000000000000", "--plot",
         "--db", str(run["db"])], capture_output=True, text=True, timeout=120, check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
