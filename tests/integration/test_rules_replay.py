"""A worker under a rules file (ADR 0022) on the embedded broker, then its input exported
and replayed offline under the same file (ADR 0023): the override silences the noisy
service's lift-3 spike, the latency rule opens its own family, every lifecycle change and
report says which rules made it, and the replay gives the same DuckDB rows and report
hashes as the live run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.integration.harness import Names, WorkerProc, dump, produce_events
from tocsin.processors.config import DetectorConfig
from tocsin.processors.rules import load_rules_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RULES = """version = 1

[[override]]            # search throws errors all day: open only at 4x its baseline
service = "search"
min_lift = 4

[[latency]]
service = "cart"
step = "GET /"
threshold_ms = 500
min_requests = 20
window = "5m"
"""


def workload() -> list[dict[str, Any]]:
    """examples/noisy-search's events, every request with a duration: 20-26 ms, and cart's
    900 ms from minute 30 to 36."""
    spec = importlib.util.spec_from_file_location("noisy_search", EXAMPLES / "noisy_search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events: list[dict[str, Any]] = module.noisy_log()
    t0 = module.T0_MS
    for i, e in enumerate(events):
        slow = e["service"] == "cart" and 30 * 60_000 <= e["event_time_ms"] - t0 < 36 * 60_000
        e["duration_ms"] = 900.0 if slow else 20.0 + i % 7
    return events


def latest_reports(db: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT incident_id, arg_max(report_hash, written_seq), "
                           "arg_max(body, written_seq) FROM triage_reports "
                           "GROUP BY incident_id").fetchall()
    finally:
        con.close()
    return {i: (h, json.loads(r)) for i, h, r in rows}


def rules_hashes(db: Path) -> set[str | None]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {h for (h,) in con.execute(
            "SELECT DISTINCT rules_hash FROM incident_events").fetchall()}
    finally:
        con.close()


@pytest.fixture(scope="module")
def live(broker: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("rules")
    rules = work / "rules.toml"
    rules.write_text(RULES)
    names = Names.fresh("rules")
    events = workload()
    produce_events(broker, names.events, events, partitions=6)
    db = work / "live.duckdb"
    worker = WorkerProc(broker, names, db, extra_env={"TOCSIN_RULES": str(rules)}).start()
    try:
        worker.wait_projected(len(events))
        worker.wait_triaged()
        worker.wait_caught_up()
    finally:
        assert worker.stop() == 0
    return {"names": names, "db": db, "rules": rules, "work": work}


def test_the_live_worker_decides_under_the_rules_and_says_so(live: dict[str, Any]) -> None:
    families = sorted(row[5] for row in dump(live["db"])["incidents"])
    # search's first incident (no baseline yet), checkout's, and cart's latency; search's
    # lift-3 spike is under the override's MIN_LIFT 4.
    assert families == ["cart:GET /:LATENCY", "checkout:payment.charge:PMT_502",
                        "search:GET /:SRCH_500"]
    expected = load_rules_file(live["rules"], base=DetectorConfig()).hash
    assert rules_hashes(live["db"]) == {expected}
    reports = latest_reports(live["db"])
    assert {r["incident"]["rules_hash"] for _, r in reports.values()} == {expected}


def test_its_export_replays_to_the_same_rows_and_hashes(broker: str, live: dict[str, Any]
                                                         ) -> None:
    env = {**os.environ, **live["names"].env()}
    out, db = live["work"] / "log", live["work"] / "replayed.duckdb"
    tocsin = [sys.executable, "-P", "-m", "tocsin"]
    done = subprocess.run([*tocsin, "export", "--broker", broker, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*tocsin, "replay", str(out), "--rules", str(live["rules"]),
                           "--db", str(db), "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    replayed = json.loads(done.stdout)
    live_reports = {i: h for i, (h, _) in latest_reports(live["db"]).items()}
    assert {r["id"]: r["report_hash"] for r in replayed["incidents"]} == live_reports
    assert dump(db) == dump(live["db"])
    # Without the rules the same log opens search's spike and no latency incident.
    done = subprocess.run([*tocsin, "what-if", str(out), "--rules", str(live["rules"]),
                           "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    diff = json.loads(done.stdout)
    assert [r["family"] for r in diff["only_baseline"]] == ["search:GET /:SRCH_500"]
    assert [r["family"] for r in diff["only_change"]] == ["cart:GET /:LATENCY"]
