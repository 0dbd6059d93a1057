"""``tocsin gate`` and ``tocsin doctor`` against the real thing: the embedded broker, a
worker subprocess with a DuckDB file, and what goes wrong in practice (no broker at the
address, no worker at the URL, topics missing, a notification channel that does not
answer, records nobody can read). One worker serves the whole module: healthy first, then
set on fire."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from click.testing import CliRunner, Result

from tests.integration.harness import T0_MS, Names, WorkerProc, produce_events, steady
from tests.integration.test_actions import opening_log
from tocsin.clients.doctor import doctor_command
from tocsin.clients.gate import gate_command
from tocsin.sinks.duckdb_schema import SCHEMA_VERSION
from tocsin.streams.kafka.broker import free_port
from tocsin.streams.kafka.io import TopicSpec, ensure_topics, new_producer

SERVICES = ("checkout", "cart", "search")


def doctor(names: Names, *args: str) -> tuple[Result, dict[str, Any]]:
    """``tocsin doctor --json ARGS`` in the worker's environment (its app id and topics);
    the result and the checks by name."""
    result = CliRunner().invoke(doctor_command, [*args, "--json", "--timeout", "60"],
                                env=names.env())
    assert result.exit_code in (0, 1), (result.output, result.exception)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    return result, checks


def statuses(checks: dict[str, Any]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def gate(*args: str) -> Result:
    return CliRunner().invoke(gate_command, list(args))


@pytest.fixture(scope="module")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    """A healthy worker: steady traffic, nothing failing yet. Its webhook points at a
    closed port, one attempt: the first incident's notification fails."""
    names = Names.fresh("doc")
    produce_events(broker, names.events, steady(T0_MS, 60, SERVICES), partitions=6)
    db = tmp_path_factory.mktemp("doc") / "doc.duckdb"
    env = {**names.side_topics(),
           "TOCSIN_NOTIFY__WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook",
           "TOCSIN_NOTIFY__ATTEMPTS": "1", "TOCSIN_NOTIFY__BACKOFF_MS": "10",
           "TOCSIN_NOTIFY__TIMEOUT_MS": "1000", "TOCSIN_NOTIFY__REPORT_WAIT_MS": "0"}
    worker = WorkerProc(broker, names, db, extra_env=env).start()
    worker.wait_ready(90)
    worker.wait_settled(60)
    yield {"worker": worker, "names": names, "db": db, "broker": broker}
    assert worker.stop() == 0


def test_a_healthy_worker_passes_then_a_fire_fails_both(system: dict[str, Any]) -> None:
    worker, names, db = system["worker"], system["names"], str(system["db"])

    # Healthy: every check ok. Worker and broker are found through --db alone (the
    # worker's announcement beside the file).
    result, checks = doctor(names, "--db", db)
    assert result.exit_code == 0, result.stdout
    assert set(statuses(checks).values()) == {"ok"}, statuses(checks)
    assert list(checks) == ["broker", "topics", "worker", "lag:detect", "lag:spans",
                            "lag:traces", "lag:triage", "lag:projection", "lag:notifier",
                            "duckdb", "notifications", "dead-letters", "report-hash"]
    assert checks["broker"]["facts"]["bootstrap"] == system["broker"]
    assert checks["broker"]["facts"]["api_versions"]["Fetch"][1] >= 4
    assert checks["topics"]["facts"]["partitions"][names.events] == 6
    assert checks["worker"]["facts"]["role"] == "all"
    assert checks["duckdb"]["facts"]["schema_version"] == str(SCHEMA_VERSION)
    # The span intake's idle marks reach the events topic now and then: a few records
    # until the next checkpoint commits them, well under the threshold.
    assert checks["lag:detect"]["facts"]["max_lag"] == 10_000
    for service in SERVICES:
        assert gate("--service", service, "--db", db).exit_code == 0

    # On fire: checkout's payment.charge fails (an incident opens and stays open, its
    # webhook delivery fails), and two records nobody can read reach the events topic.
    produce_events(system["broker"], names.events,
                   [*opening_log(T0_MS + 120_000), b"\x00not json", b"{\"truncated"],
                   partitions=6)
    incident = worker.wait_rows("SELECT incident_id, family FROM incidents "
                                "WHERE service = 'checkout'", 90)[0]
    worker.wait_rows("SELECT * FROM notifications WHERE status = 'failed'", 60)
    worker.wait_for(lambda: len(worker.query("SELECT * FROM dead_letters")) >= 2, 60,
                    "two dead letters in DuckDB")
    worker.wait_rows("SELECT * FROM triage_reports WHERE incident_id = "
                     f"'{incident['incident_id']}'", 60)

    result, checks = doctor(names, "--worker", worker.base_url, "--broker",
                            system["broker"], "--db", db)
    assert result.exit_code == 1, result.stdout
    assert checks["notifications"]["status"] == "fail"
    assert checks["notifications"]["facts"]["failed_recent"]["webhook"] >= 1
    assert "webhook " in checks["notifications"]["detail"]
    assert "TOCSIN_NOTIFY__" in checks["notifications"]["fix"]
    assert checks["dead-letters"]["status"] == "warn"
    assert checks["dead-letters"]["facts"]["last_hour"] == 2
    assert checks["dead-letters"]["facts"]["stored"] == 2
    assert checks["dead-letters"]["fix"]
    assert {n: s for n, s in statuses(checks).items()
            if n not in ("notifications", "dead-letters") and s != "ok"} == {}
    # The text form: one line per check, the fix on the failing one.
    text = CliRunner().invoke(doctor_command, ["--db", db], env=names.env())
    assert text.exit_code == 1
    line = next(x for x in text.stdout.splitlines() if x.startswith("fail"))
    assert line.split()[1] == "notifications" and "  fix: " in line

    on_fire = gate("--service", "checkout", "--db", db)
    assert on_fire.exit_code == 1, on_fire.output
    (row,) = on_fire.stdout.splitlines()
    assert row.startswith(f"{incident['incident_id']}  {incident['family']}  prod  active  "
                          "triggered  cause=")
    assert "cause=-" not in row and "onset=2026-11-02T" in row
    answer = json.loads(gate("--service", "checkout", "--env", "prod", "--worker",
                             worker.base_url, "--json").stdout)
    assert answer["ok"] is False and answer["service"] == "checkout"
    assert [i["incident_id"] for i in answer["open"]] == [incident["incident_id"]]
    assert answer["open"][0]["cause_kind"] and answer["open"][0]["phase"] == "triggered"
    assert gate("--service", "checkout", "--env", "staging", "--db", db).exit_code == 0
    assert gate("--service", "cart", "--db", db).exit_code == 0


def test_nothing_at_the_addresses(tmp_path: Path) -> None:
    """No broker at that address, no worker at that URL: both fail with their fix, and
    the gate cannot tell (2). As a process: nothing but the summary on stderr."""
    broker, worker = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    db = str(tmp_path / "none.duckdb")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", "from tocsin.clients.doctor import doctor_command; "
         "doctor_command()", "--broker", broker, "--worker", worker, "--db", db],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")})
    assert out.returncode == 1, out
    assert time.monotonic() - started < 30
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert lines["broker"].startswith("fail") and broker in lines["broker"]
    assert "fix: start the broker" in lines["broker"]
    assert lines["worker"].startswith("fail") and f"no answer from {worker}" in \
        lines["worker"] and "fix:" in lines["worker"]
    assert lines["duckdb"].startswith("fail") and "no database" in lines["duckdb"]
    assert lines["report-hash"].startswith("ok")
    assert out.stderr.strip() == "doctor: 1 ok, 8 warn, 3 fail"

    cannot = gate("--service", "checkout", "--worker", worker)
    assert cannot.exit_code == 2 and cannot.stdout == ""
    assert "cannot tell" in cannot.stderr and "no answer from" in cannot.stderr


def test_missing_topics_and_dead_letters_by_their_time(broker: str, tmp_path: Path) -> None:
    """Only the dead-letter topic exists, with three letters from two hours ago and two
    from now: the topics check names the eight missing ones (and creates none of them),
    the dead letters of the last hour are the two recent ones."""
    names = Names.fresh("docmiss")
    dlq = names.dlq
    now_ms = int(time.time() * 1000)

    async def setup() -> None:
        await ensure_topics(broker, [TopicSpec(dlq, 2, 24 * 3_600_000)])
        producer = new_producer(broker)
        await producer.start()
        try:
            for i, at in enumerate([now_ms - 7_200_000] * 3 + [now_ms - 60_000] * 2):
                await producer.send_and_wait(
                    dlq, b"bad", partition=i % 2, timestamp_ms=at,
                    headers=[("tocsin.dlq.reason", f"reason {i}".encode()),
                             ("tocsin.dlq.source_topic", names.events.encode())])
        finally:
            await producer.stop()

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    asyncio.run(setup())
    result, checks = doctor(names, "--broker", broker, "--db", str(tmp_path / "x.duckdb"))
    assert result.exit_code == 1
    assert checks["broker"]["status"] == "ok"
    assert checks["topics"]["status"] == "fail"
    missing = [t for t in names.all_topics().values() if t != dlq]
    assert checks["topics"]["detail"].startswith("missing " + ", ".join(missing))
    assert "tocsin run" in checks["topics"]["fix"]
    assert checks["worker"]["status"] == "fail"
    assert "no running worker holds" in checks["worker"]["detail"]
    assert checks["dead-letters"]["status"] == "warn"
    assert checks["dead-letters"]["facts"]["last_hour"] == 2
    assert "reason 4" in checks["dead-letters"]["detail"]
    assert checks["lag:detect"]["status"] == "warn"  # no events topic: not measurable
    assert set(missing).isdisjoint(asyncio.run(topics()))
