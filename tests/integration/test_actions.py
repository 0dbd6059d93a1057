"""Operator actions on a running worker (ADR 0016): real HTTP requests, commands on the
embedded broker's events topic, decisions by detection, rows in a real DuckDB file, the
CLI as a user runs it, and a replay of the same log that decides every action the same."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    event,
    incident_records,
    produce_events,
    steady,
)
from tests.integration.test_http_api import check as documented

SERVICES = ("checkout", "cart", "search")


def quiet_then_failing(start_ms: int, quiet_s: int) -> list[dict[str, Any]]:
    """``quiet_s`` seconds healthy, then 2 min where checkout's payment.charge fails, and
    nothing after (the incident stays open)."""
    log = steady(start_ms, quiet_s, SERVICES)
    for s in range(120):
        t = start_ms + quiet_s * 1000 + s * 1000
        log.append(event(t, "checkout", "payment.charge", error="PMT_502"))
        log.append(event(t + 1, "cart", "GET /"))
    return log


def opening_log(start_ms: int) -> list[dict[str, Any]]:
    """40 min healthy, then the family fails: it opens and stays open."""
    return quiet_then_failing(start_ms, 2400)


def calm_then_spike(start_ms: int) -> list[dict[str, Any]]:
    """20 quiet minutes (the window drains: the family re-arms), then it fails again."""
    return quiet_then_failing(start_ms, 1200)


def call(worker: WorkerProc, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.http_port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def act(worker: WorkerProc, incident_id: str, key: str, **body: Any
        ) -> tuple[int, dict[str, Any]]:
    """POST an action; its answer must be one the OpenAPI document describes."""
    status, answer = call(worker, "POST", f"/v1/incidents/{incident_id}/actions", body,
                          {"Idempotency-Key": key})
    documented("/v1/incidents/{incident_id}/actions", "POST", status,
               json.dumps(answer).encode())
    return status, answer


@pytest.fixture(scope="module")
def run(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    names = Names.fresh("act")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    db = tmp_path_factory.mktemp("act") / "act.duckdb"
    worker = WorkerProc(broker, names, db, extra_env=names.side_topics()).start()
    worker.wait_ready(90)
    rows = worker.wait_rows("SELECT incident_id, onset_ms FROM incidents", 90)
    yield {"worker": worker, "names": names, "db": db, "incident": rows[0]["incident_id"],
           "onset_ms": rows[0]["onset_ms"], "broker": broker}
    assert worker.stop() == 0


def test_actions_move_the_incident_and_land_in_duckdb_and_the_report(run: dict[str, Any]
                                                                     ) -> None:
    worker, inc = run["worker"], run["incident"]
    status, ack = act(worker, inc, "k-ack", action="acknowledge", by="ana", note="on it")
    assert status == 200, ack
    assert (ack["incident_id"], ack["status"], ack["phase"], ack["kind"], ack["by"]) == \
        (inc, "active", "acknowledged", "acknowledged", "ana")
    # The same request again (a retry): the same action, applied once.
    status, again = act(worker, inc, "k-ack", action="acknowledge", by="ana", note="on it")
    assert status == 200 and again["repeated"] is True and again["action_id"] == \
        ack["action_id"]
    # Another acknowledgement is an illegal transition: 409 naming the rule.
    status, refused = act(worker, inc, "k-ack2", action="acknowledge", by="bo")
    assert status == 409 and refused["rule"] == "lifecycle.acknowledge", refused
    for key, body in (("k-h1", {"action": "hypothesis", "by": "ana",
                                "title": "pool exhausted", "status": "proposed"}),
                      ("k-inv", {"action": "investigate", "by": "bo"}),
                      ("k-h2", {"action": "hypothesis", "by": "bo",
                                "title": "pool exhausted", "status": "confirmed"}),
                      ("k-note", {"action": "annotate", "by": "bo",
                                  "note": "<script>alert(1)</script> raised the pool"}),
                      ("k-mit", {"action": "mitigate", "by": "bo"}),
                      ("k-res", {"action": "resolve", "by": "cy", "note": "fixed"})):
        status, answer = act(worker, inc, key, **body)
        assert status == 200, (key, answer)
    assert (answer["status"], answer["phase"]) == ("resolved", "resolved")
    status, late = act(worker, inc, "k-mit2", action="mitigate", by="bo")
    assert status == 409 and late["rule"] == "lifecycle.mitigate"

    status, shown = call(worker, "GET", f"/v1/incidents/{inc}")
    assert status == 200
    documented("/v1/incidents/{incident_id}", "GET", status, json.dumps(shown).encode())
    assert [a["kind"] for a in shown["actions"]] == [
        "acknowledged", "hypothesis", "investigating", "hypothesis", "annotated",
        "mitigated", "resolved"]
    assert (shown["acknowledged_by"], shown["mitigated_by"], shown["resolved_by"]) == \
        ("ana", "bo", "cy")
    acts = {a["kind"]: a for a in shown["actions"]}
    assert shown["mtta_ms"] == acts["acknowledged"]["at_ms"] - run["onset_ms"]
    assert shown["mttr_ms"] == acts["resolved"]["at_ms"] - run["onset_ms"]
    assert len({a["action_id"] for a in shown["actions"]}) == 7
    view = worker.query("SELECT * FROM service_response WHERE service = 'checkout'")
    assert view[0]["incidents"] == 1 and view[0]["resolved_by_people"] == 1
    assert view[0]["median_mtta_ms"] == shown["mtta_ms"]

    # On the incidents topic: every action a lifecycle event, machine's seq order kept.
    events = [e for e in incident_records(run["broker"], run["names"].incidents)
              if e["incident_id"] == inc]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["kind"] for e in events if e["action_id"]] == [a["kind"]
                                                            for a in shown["actions"]]

    # The report says who did what, and keeps people's text as text.
    report = worker.wait_for(lambda: (r := worker.get_json(f"/v1/incidents/{inc}/report"))
                             .get("response", {}).get("resolved") and r, 30,
                             "a report with the resolve")
    response = report["response"]
    assert response["acknowledged"]["by"] == "ana" and response["resolved"]["by"] == "cy"
    assert response["hypotheses"] == [{"title": "pool exhausted", "status": "confirmed",
                                       "by": "bo", "proposed_by": "ana",
                                       "at_ms": acts["hypothesis"]["at_ms"]}]
    assert "<script>alert(1)</script> raised the pool" in [n["note"]
                                                            for n in response["notes"]]


def test_bad_requests_answer_4xx_with_a_message(run: dict[str, Any]) -> None:
    worker, inc = run["worker"], run["incident"]
    assert call(worker, "POST", "/v1/incidents/inc_0000000000000000/actions",
                {"action": "acknowledge", "by": "ana"})[0] == 404
    for body in (b"{not json", [1], {"action": "shout", "by": "ana"},
                 {"action": "acknowledge"}, {"action": "acknowledge", "by": " "},
                 {"action": "annotate", "by": "ana"},
                 {"action": "hypothesis", "by": "ana", "title": "x"},
                 {"action": "acknowledge", "by": "ana", "status": "confirmed"},
                 {"action": "acknowledge", "by": "ana", "extra": 1},
                 {"action": "annotate", "by": "ana", "note": "x" * 5000}):
        status, answer = call(worker, "POST", f"/v1/incidents/{inc}/actions", body)
        assert status == 400 and answer["error"], (body, answer)
    assert call(worker, "GET", "/v1/incidents/inc_0000000000000000")[0] == 404


def test_after_a_person_resolves_only_a_new_spike_opens_a_new_incident(run: dict[str, Any]
                                                                       ) -> None:
    worker, inc = run["worker"], run["incident"]
    worker.wait_rows(f"SELECT 1 FROM incidents WHERE incident_id = '{inc}' "
                     "AND status = 'resolved'", 60)
    produce_events(run["broker"], run["names"].events,
                   calm_then_spike(T0_MS + 2_520_000), partitions=3)
    rows = worker.wait_rows(f"SELECT incident_id FROM incidents WHERE incident_id <> '{inc}'",
                            90)
    assert len(rows) == 1
    newer = rows[0]["incident_id"]
    # One open incident per family: the old one cannot be reopened while this one is open.
    status, refused = act(run["worker"], inc, "k-reopen", action="reopen", by="ana")
    assert status == 409 and refused["rule"] == "lifecycle.one_open_per_family", refused
    assert newer in refused["error"]


def tocsin(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin", *args, "--db", str(db)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_shows_and_acts_through_the_worker(run: dict[str, Any]) -> None:
    worker, db = run["worker"], run["db"]
    opened = worker.wait_rows("SELECT incident_id FROM incidents WHERE status <> 'resolved'",
                              90)[0]["incident_id"]
    done = tocsin("incident", opened, "acknowledge", "--by", "dee", db=db)
    assert done.returncode == 0, done.stderr
    assert f"{opened}: acknowledged by dee" in done.stdout
    noted = tocsin("incident", opened, "note", "looking at the pool", "--by", "dee", db=db)
    assert noted.returncode == 0, noted.stderr
    shown = tocsin("incident", opened, db=db)
    assert shown.returncode == 0 and "phase acknowledged" in shown.stdout
    assert "annotated by dee" in shown.stdout and "looking at the pool" in shown.stdout
    again = tocsin("incident", opened, "acknowledge", "--by", "dee", db=db)
    assert again.returncode == 1 and "lifecycle.acknowledge" in again.stderr
    for bad in (("incident", opened, "acknowledge"), ("incident", opened, "dance"),
                ("incident", opened, "note", "--by", "x")):
        wrong = tocsin(*bad, db=db)
        assert wrong.returncode == 2 and "Usage:" in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr


def test_garbage_commands_are_dead_letters_and_detection_goes_on(run: dict[str, Any]
                                                                   ) -> None:
    """Anyone who can write the events topic can write a command: what is not one, or
    names no incident detection holds, is a dead letter with its reason."""
    from tests.integration.test_poison import publish
    from tocsin.processors.actions import Command
    from tocsin.streams.kafka.headers import ACTION

    worker = run["worker"]
    action = [(ACTION, b"1")]
    stranger = Command("act_00000000000000aa", "inc_00000000000000ff", "acknowledge",
                       "mallory", T0_MS, "checkout", "prod").to_bytes()
    publish(run["broker"], run["names"].events, [
        (b"checkout", b"\xff\x00 not json", action),
        (b"checkout", b'{"v": 1, "action": [], "actor": "x"}', action),
        (b"checkout", b'{"v": true, "action": "acknowledge"}', action),
        (b"checkout", stranger, action)])
    def letters() -> list[dict[str, Any]] | None:
        found = worker.query("SELECT reason FROM dead_letters WHERE reason LIKE "
                             "'action command:%' OR reason LIKE '%incident.unknown%'")
        return found if len(found) >= 4 else None

    rows = worker.wait_for(letters, 60, "four dead-lettered commands")
    reasons = [r["reason"] for r in rows]
    assert sum(r.startswith("action command: ") for r in reasons) == 3, reasons
    assert any("refused: incident.unknown" in r for r in reasons), reasons
    assert worker.health()["status"] == "ok"  # type: ignore[index]


TABLES_SQL = {
    "incident_events": "SELECT * FROM incident_events ORDER BY incident_id, seq",
    "incident_actions": "SELECT * FROM incident_actions ORDER BY incident_id, seq",
    "incidents": "SELECT * EXCLUDE (onset) FROM incidents ORDER BY incident_id",
    "dead_letters": "SELECT source_offset, source_partition, reason FROM dead_letters "
                    "ORDER BY source_partition, source_offset",
}
LATEST_REPORTS = ("SELECT incident_id, arg_max(report_hash, written_seq) AS report_hash "
                  "FROM triage_reports GROUP BY incident_id ORDER BY incident_id")


def test_a_replay_of_the_log_decides_every_action_the_same(
        run: dict[str, Any], tmp_path: Path) -> None:
    """The actions are on the events topic: a worker with fresh state that reads the same
    log gives the same lifecycle events (people's included), the same refusals, rows and
    report hashes."""
    worker = run["worker"]
    worker.wait_settled(90)
    names = Names.fresh("actreplay").with_topics(events=run["names"].events)
    replay = WorkerProc(run["broker"], names, tmp_path / "replay.duckdb",
                        extra_env=names.side_topics()).start()
    try:
        replay.wait_ready(90)
        replay.wait_settled(90)
        for table, sql in TABLES_SQL.items():
            assert replay.query(sql) == worker.query(sql), table
        assert len(worker.query(TABLES_SQL["incident_actions"])) >= 9
        # The reopen the API let through and detection refused is a dead letter, naming
        # the rule, in both.
        assert sorted(r["reason"].split(": ")[1]
                      for r in worker.query(TABLES_SQL["dead_letters"])
                      if "refused" in r["reason"]) == ["incident.unknown",
                                                       "lifecycle.one_open_per_family"]
        want = worker.query(LATEST_REPORTS)
        replay.wait_for(lambda: replay.query(LATEST_REPORTS) == want, 60,
                        "the replay's latest reports equal the run's")
    finally:
        assert replay.stop() == 0
