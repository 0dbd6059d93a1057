"""The pure parts of ``tocsin doctor`` and ``tocsin gate``, without a broker: the lines and
the JSON, the verdict and exit codes, the lag math, the dead-letter binary search, each
check's judgement and its fix, the report self-test, the gate's SQL (parameters, run on a
real DuckDB with the projection's schema) and the gate against a stub worker."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from tocsin.clients import doctor, gate
from tocsin.clients.doctor import (
    BrokerFacts,
    Check,
    DeadLetterFacts,
    Lag,
    as_json,
    broker_check,
    dead_letter_check,
    exit_code,
    first_since,
    format_line,
    format_report,
    lag_check,
    lag_of,
    notifications_check,
    partition_lag,
    report_selftest,
    schema_check,
    topics_check,
    worker_check,
)
from tocsin.streams.kafka.broker import free_port

NOW = 1_800_000_000_000
HOUR = 3_600_000

# ---------------------------------------------------------------------- lines, verdict


def test_a_line_is_status_name_detail_and_the_fix_when_there_is_one() -> None:
    checks = [Check("broker", "ok", "up"),
              Check("notifications", "fail", "2 failed", "check the URL")]
    assert format_line(checks[0], 13) == "ok    broker         up"
    assert format_report(checks).splitlines() == [
        "ok    broker         up",
        "fail  notifications  2 failed  fix: check the URL"]


@pytest.mark.parametrize(("statuses", "code"), [
    ((), 0), (("ok", "ok"), 0), (("ok", "warn"), 0), (("warn", "fail", "ok"), 1),
    (("fail",), 1)])
def test_exit_code_is_zero_only_when_nothing_fails(statuses: tuple[Any, ...],
                                                   code: int) -> None:
    checks = [Check(f"c{i}", s, "x") for i, s in enumerate(statuses)]
    assert exit_code(checks) == code
    answer = as_json(checks)
    assert answer["ok"] is (code == 0)
    assert sum(answer["counts"].values()) == len(checks)
    assert [c["name"] for c in answer["checks"]] == [c.name for c in checks]
    assert set(answer["checks"][0] if checks else {"name", "status", "detail", "fix",
                                                    "facts"}) == \
        {"name", "status", "detail", "fix", "facts"}
    json.dumps(answer)  # serialisable as it is


# ---------------------------------------------------------------------- lag


@pytest.mark.parametrize(("end", "committed", "start", "lag"), [
    (100, 100, 0, 0), (100, 60, 0, 40), (100, None, 0, 100), (100, None, 30, 70),
    (100, 10, 30, 70),  # committed below a truncated log's start: from the start
    (5, 80, 0, 0),  # committed past the end (a restarted log): nothing counted behind
    (0, None, 0, 0)])
def test_partition_lag(end: int, committed: int | None, start: int, lag: int) -> None:
    assert partition_lag(end, committed, start) == lag


def test_lag_of_one_topic_names_partitions_by_number() -> None:
    lag = lag_of({"ev": {0: 100, 1: 50, 2: 0, 3: 10}},
                 {("ev", 0): 90, ("ev", 1): None, ("ev", 3): 20})
    assert (lag.behind, lag.partitions) == (60, 4)
    assert lag.worst == ("1", 50)
    assert lag.uncommitted == ["1"]  # partition 2 is empty: nothing to commit
    assert lag.past_end == ["3"]


def test_lag_of_several_topics_names_topic_and_partition() -> None:
    lag = lag_of({"inc": {0: 4}, "win": {0: 7, 1: 3}},
                 {("inc", 0): 4, ("win", 0): 2, ("win", 1): 3}, {"win": {0: 1}})
    assert lag == Lag(5, 3, [], [], ("win[0]", 5))


def test_lag_check_warns_over_the_threshold_and_on_a_restarted_log() -> None:
    small = lag_of({"ev": {0: 10}}, {("ev", 0): 5})
    ok = lag_check("lag:detect", "ev", small, 100, "group g")
    assert ok.status == "ok" and ok.fix is None
    assert ok.detail.startswith("5 behind on ev (1 partitions; group g)")
    big = lag_check("lag:detect", "ev", small, 4, "group g")
    assert big.status == "warn" and "over 4" in big.detail and "add workers" in str(big.fix)
    reset = lag_check("lag:detect", "ev", lag_of({"ev": {0: 3}}, {("ev", 0): 9}), 100, "g")
    assert reset.status == "warn" and "restarted" in reset.detail and reset.fix


# ---------------------------------------------------------------------- dead letters


def probe_of(records: list[tuple[int, int]]) -> tuple[Any, list[int]]:
    """A probe over (offset, timestamp) records, and the offsets it was asked for."""
    asked: list[int] = []

    async def probe(offset: int) -> tuple[int, int] | None:
        asked.append(offset)
        return next(((o, t) for o, t in records if o >= offset), None)

    return probe, asked


@pytest.mark.parametrize(("stamps", "cutoff", "first"), [
    ([], 50, 0),
    ([10, 20, 30], 50, 3),  # all older: none in the window
    ([60, 70], 50, 0),  # all newer
    ([10, 20, 30, 60, 70], 50, 3),
    ([10, 50, 50, 50], 50, 1),  # at the cutoff counts
    ([10] * 999 + [99], 50, 999),
    ([99], 50, 0), ([1], 50, 1)])
def test_first_since_finds_the_first_record_of_the_window(stamps: list[int], cutoff: int,
                                                           first: int) -> None:
    probe, asked = probe_of(list(enumerate(stamps)))
    assert asyncio.run(first_since(probe, 0, len(stamps), cutoff)) == first
    assert len(asked) <= 2 + max(len(stamps), 1).bit_length()  # a binary search


def test_first_since_with_gaps_and_a_truncated_start() -> None:
    records = [(100, 1), (105, 2), (130, 8), (131, 9), (170, 9)]
    probe, _ = probe_of(records)
    assert asyncio.run(first_since(probe, 100, 171, 8)) == 130
    assert asyncio.run(first_since(probe, 100, 171, 10)) == 171
    assert asyncio.run(first_since(probe, 100, 171, 0)) == 100


def test_dead_letter_check() -> None:
    none = dead_letter_check("dlq", DeadLetterFacts(), None, 7)
    assert none.status == "ok" and "none in the last hour" in none.detail
    assert "7 in DuckDB" in none.detail
    some = dead_letter_check("dlq", DeadLetterFacts(3, {0: 1, 4: 2}, NOW, "not JSON\n",
                                                    "events"), None, 3)
    assert some.status == "warn" and some.detail.startswith("3 in the last hour on dlq")
    assert "newest from events: not JSON" in some.detail and "dead_letters" in str(some.fix)
    assert some.facts["per_partition"] == {"0": 1, "4": 2}
    unknown = dead_letter_check("dlq", None, "the broker did not answer", None)
    assert unknown.status == "warn" and "not checked" in unknown.detail


# ---------------------------------------------------------------------- other checks


def test_broker_check() -> None:
    assert broker_check(None, None).status == "fail"
    down = broker_check("h:1", BrokerFacts(error="timed out"))
    assert down.status == "fail" and "timed out" in down.detail and down.fix
    apis = {k: (0, 9) for k in doctor.REQUIRED_APIS}
    up = broker_check("h:1", BrokerFacts(cluster_id="c1", brokers=3, api_versions=apis))
    assert up.status == "ok" and "cluster c1, 3 brokers" in up.detail
    assert "Fetch v9" in up.detail
    del apis[11]
    lacking = broker_check("h:1", BrokerFacts(cluster_id="c1", brokers=1, api_versions=apis))
    assert lacking.status == "fail" and "missing JoinGroup" in lacking.detail


def test_topics_check() -> None:
    expected = {"events": "ev", "dlq": "dl", "spans": "sp"}
    facts = BrokerFacts(topics={"ev": 6, "dl": 6, "other": 1})
    missing = topics_check(expected, facts, 6)
    assert missing.status == "fail" and missing.detail.startswith("missing sp")
    assert "tocsin run" in str(missing.fix)
    facts.topics["sp"] = 3
    present = topics_check(expected, facts, 6)
    assert present.status == "ok" and "ev 6, dl 6, sp 3" in present.detail
    assert topics_check(expected, BrokerFacts(error="x"), 6).status == "warn"


def test_worker_check() -> None:
    parts = {"broker": True, "projection": True}
    health = {"status": "ok", "role": "all", "parts": parts, "partitions": [0, 1, 2, 5],
              "projection_caught_up": True}
    ok = worker_check("http://w", None, (200, {"parts": parts}), health, None)
    assert ok.status == "ok" and "role all" in ok.detail and "partitions 0-2, 5" in ok.detail
    down = {"status": "degraded", "role": "all", "parts": {**parts, "projection": False}}
    bad = worker_check("http://w", None, (503, {}), down, None)
    assert bad.status == "fail" and "down: projection" in bad.detail and bad.fix
    assert worker_check(None, "no running worker holds x", None, None, None).status == \
        "fail"
    assert worker_check("http://w", None, None, None, "no answer").status == "fail"


def test_schema_check() -> None:
    assert schema_check("4", 4, "f", None).status == "ok"
    older = schema_check("3", 4, "f", None)
    assert older.status == "warn" and "migrates" in str(older.fix)
    assert schema_check("5", 4, "f", None).status == "warn"
    assert schema_check("x", 4, "f", None).status == "fail"
    assert schema_check(None, 4, "f", "no database at f", missing=True).status == "fail"
    assert schema_check(None, 4, "f", "refused (HTTP 401)").status == "warn"


def note_row(channel: str, status: str, n: int, recent: int, **extra: Any
             ) -> dict[str, Any]:
    return {"channel": channel, "status": status, "n": n, "recent": recent,
            "newest_ms": NOW, "oldest_ms": NOW, "last_error": None, "last_status": None,
            **extra}


def test_notifications_check() -> None:
    fine = notifications_check([note_row("slack", "delivered", 4, 4)], NOW, None)
    assert fine.status == "ok" and "4 delivered" in fine.detail
    failed = notifications_check([
        note_row("webhook", "failed", 2, 2, last_error="ClientConnectorError: refused"),
        note_row("pagerduty", "failed", 1, 1, last_status=400),
        note_row("slack", "delivered", 3, 3)], NOW, None)
    assert failed.status == "fail"
    assert "webhook 2 (last: ClientConnectorError: refused)" in failed.detail
    assert "pagerduty 1 (last: 400)" in failed.detail
    assert "TOCSIN_NOTIFY__" in str(failed.fix)
    old = notifications_check([note_row("webhook", "failed", 2, 0)], NOW, None)
    assert old.status == "ok" and "2 failed before the last 24 h" in old.detail
    stuck = notifications_check([note_row("slack", "pending", 1, 1,
                                          oldest_ms=NOW - 2 * HOUR)], NOW, None)
    assert stuck.status == "warn" and "slack" in stuck.detail
    assert notifications_check(None, NOW, "no database").status == "warn"


def test_report_selftest_passes_and_catches_a_drift(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    check = report_selftest()
    assert check.status == "ok", check
    assert check.facts["report_hash"] == doctor.PINNED_HASH
    monkeypatch.setattr(doctor, "PINNED_HASH", "sha256:" + "0" * 64)
    drift = report_selftest()
    assert drift.status == "fail" and "expected sha256:000" in drift.detail
    assert "reinstall" in str(drift.fix)


# ---------------------------------------------------------------------- gate: the SQL


@pytest.fixture
def projection() -> Iterator[duckdb.DuckDBPyConnection]:
    from tocsin.sinks.duckdb_schema import DDL

    con = duckdb.connect()
    con.execute(DDL)
    rows = [("inc_a", "checkout", "prod", "active", None, 30),
            ("inc_b", "checkout", "prod", "recovering", "acknowledged", 10),
            ("inc_c", "checkout", "prod", "resolved", "resolved", 5),
            ("inc_d", "checkout", "staging", "active", None, 20),
            ("inc_e", "cart", "prod", "active", None, 1),
            ("inc_f", "x' OR '1'='1", "prod", "active", None, 2)]
    for iid, service, env, status, phase, onset in rows:
        con.execute("INSERT INTO incidents (incident_id, family, env, service, status, phase, "
                    "onset_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [iid, f"{service}:s:E", env, service, status, phase, onset])
    con.execute("INSERT INTO triage_reports (incident_id, report_hash, cause_kind, "
                "written_seq) VALUES ('inc_a', 'h1', 'deploy', 1), ('inc_a', 'h2', "
                "'dependency', 2)")
    yield con
    con.close()


def open_rows(con: duckdb.DuckDBPyConnection, service: str, env: str | None
              ) -> list[tuple[Any, ...]]:
    return con.execute(gate.OPEN_INCIDENTS_SQL, [service, env]).fetchall()


def test_the_gate_sql_lists_open_incidents_oldest_first_with_the_latest_cause(
        projection: duckdb.DuckDBPyConnection) -> None:
    rows = open_rows(projection, "checkout", None)
    assert [(r[0], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("inc_b", "prod", "recovering", "acknowledged", None),
        ("inc_d", "staging", "active", "triggered", None),
        ("inc_a", "prod", "active", "triggered", "dependency")]
    assert [r[0] for r in open_rows(projection, "checkout", "prod")] == ["inc_b", "inc_a"]
    assert open_rows(projection, "search", None) == []


@pytest.mark.parametrize("hostile", ["x' OR '1'='1", "checkout' --", "'; DROP TABLE "
                                     "incidents; --", "checkout\\", "%", "*"])
def test_the_service_is_a_parameter_never_sql(projection: duckdb.DuckDBPyConnection,
                                              hostile: str) -> None:
    rows = open_rows(projection, hostile, None)
    assert all(r[1].startswith(hostile) for r in rows)  # only a service by that exact name
    assert projection.execute("SELECT count(*) FROM incidents").fetchone() == (6,)
    assert "{" not in gate.OPEN_INCIDENTS_SQL and "%s" not in gate.OPEN_INCIDENTS_SQL


def test_verdict_lines_and_exit_code() -> None:
    row = gate.incident_row({"incident_id": "inc_a", "family": "checkout:s:E", "env": "prod",
                             "status": "active", "phase": None, "cause_kind": None,
                             "onset_ms": 1793612403000})
    assert row["phase"] == "triggered" and row["onset"] == "2026-11-02T09:40:03.000Z"
    assert gate.incident_line(row) == ("inc_a  checkout:s:E  prod  active  triggered  "
                                       "cause=-  onset=2026-11-02T09:40:03.000Z")
    on_fire = gate.verdict("checkout", "prod", [row])
    assert (on_fire["ok"], gate.exit_code(on_fire)) == (False, 1)
    assert set(on_fire) == {"service", "env", "open", "ok"}
    assert gate.summary_line(on_fire) == "gate: checkout (prod): 1 open incident"
    calm = gate.verdict("checkout", None, [])
    assert (calm["ok"], gate.exit_code(calm)) == (True, 0)
    assert gate.summary_line(calm) == "gate: checkout: no open incident"


# ---------------------------------------------------------------------- gate: the command


@pytest.mark.parametrize("args", [
    [], ["--service", ""], ["--service", "  "], ["--service", "a\x00b"],
    ["--service", "x" * 300], ["--service", "a", "--env", ""],
    ["--service", "a", "--worker", "localhost:8077"], ["--service", "a", "--json", "x"]])
def test_gate_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(gate.gate_command, args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.stderr and "Traceback" not in result.output


def test_doctor_bad_arguments_are_usage_errors() -> None:
    for args in (["--broker", "nohost"], ["--broker", "h:0"], ["--worker", "ftp://x"],
                 ["--max-lag", "-1"], ["--timeout", "0"]):
        result = CliRunner().invoke(doctor.doctor_command, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Usage:" in result.stderr


class StubWorker(BaseHTTPRequestHandler):
    """Answers as the test sets: ``answers[path] = (status, body)``."""

    answers: dict[str, tuple[int, Any]] = {}
    seen: list[tuple[str, Any, str | None]] = []

    def _answer(self, body: Any) -> None:
        self.seen.append((self.path, body, self.headers.get("Authorization")))
        status, answer = self.answers.get(self.path, (404, {"error": "no"}))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    StubWorker.answers, StubWorker.seen = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubWorker)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


HEALTHY = {"status": "ok", "role": "all", "parts": {"broker": True},
           "projection_caught_up": True}
COLUMNS = ["incident_id", "family", "env", "status", "phase", "cause_kind", "onset_ms"]


def test_gate_lists_open_incidents_and_exits_1(stub: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOCSIN_API_TOKEN", "tok")
    StubWorker.answers = {"/healthz": (200, HEALTHY), "/v1/query": (200, {
        "columns": COLUMNS,
        "rows": [["inc_a", "checkout:s:E", "prod", "active", "acknowledged", "deploy",
                  1793612403000]]})}
    result = CliRunner().invoke(gate.gate_command, ["--service", "x' OR 1=1 --",
                                                    "--worker", stub])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "inc_a  checkout:s:E  prod  active  acknowledged  cause=deploy  "
        "onset=2026-11-02T09:40:03.000Z"]
    assert "1 open incident" in result.stderr
    path, body, auth = StubWorker.seen[-1]
    assert path == "/v1/query" and body["params"] == ["x' OR 1=1 --", None]
    assert body["sql"] == gate.OPEN_INCIDENTS_SQL and auth == "Bearer tok"
    result = CliRunner().invoke(gate.gate_command, ["--service", "checkout", "--env", "prod",
                                                    "--worker", stub, "--json"])
    answer = json.loads(result.stdout)
    assert result.exit_code == 1 and answer["ok"] is False and answer["env"] == "prod"
    assert answer["open"][0]["cause_kind"] == "deploy"


def test_gate_passes_with_no_open_incident(stub: str) -> None:
    StubWorker.answers = {"/healthz": (200, HEALTHY),
                          "/v1/query": (200, {"columns": COLUMNS, "rows": []})}
    result = CliRunner().invoke(gate.gate_command, ["--service", "checkout", "--worker",
                                                    stub, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"service": "checkout", "env": None, "open": [],
                                         "ok": True}


@pytest.mark.parametrize(("health", "query", "says"), [
    ((200, {**HEALTHY, "status": "starting", "parts": {"projection": False}}), None,
     "is starting (not up: projection)"),
    ((200, {**HEALTHY, "projection_caught_up": False}), None, "still catching up"),
    ((200, {**HEALTHY, "role": "detect"}), None, "role detect"),
    ((200, HEALTHY), (401, {"error": "unauthorized"}), "set TOCSIN_API_TOKEN"),
    ((200, HEALTHY), (429, {"error": "4 queries are running"}), "(HTTP 429)"),
    ((500, "oops"), None, "HTTP 500")])
def test_gate_cannot_tell_exits_2(stub: str, health: tuple[int, Any],
                                  query: tuple[int, Any] | None, says: str) -> None:
    StubWorker.answers = {"/healthz": health}
    if query is not None:
        StubWorker.answers["/v1/query"] = query
    result = CliRunner().invoke(gate.gate_command, ["--service", "checkout", "--worker",
                                                    stub])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "cannot tell" in result.stderr and says in result.stderr, result.stderr


def test_gate_without_a_worker_cannot_tell(tmp_path: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(gate.gate_command, ["--service", "a", "--worker", closed])
    assert result.exit_code == 2 and "no answer from" in result.stderr
    result = CliRunner().invoke(gate.gate_command, ["--service", "a", "--db",
                                                    str(tmp_path / "x.duckdb")])
    assert result.exit_code == 2 and "no running worker holds" in result.stderr
