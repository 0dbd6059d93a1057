"""Notifications from a running worker to local HTTP receivers (ADR 0017): Slack, PagerDuty
Events v2 (its URL pointed here) and a signed webhook; a receiver that fails, one that
answers 429 with Retry-After, one that refuses for good, one that hangs, and a SIGKILL
between a receiver's answer and the worker's record. The receivers are real HTTP servers
in this process; only Slack's and PagerDuty's own services are stood in for."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import T0_MS, Names, WorkerProc, event, produce_events, steady
from tocsin.processors.notify import verify
from tocsin.testing import wait_for

SECRET = "whsec-test"


class Receiver:
    """A local HTTP server recording every POST; ``script`` answers a request (path,
    body, headers) with (status, headers, delay in seconds)."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.script: Callable[[str, dict[str, Any], dict[str, str]],
                              tuple[int, dict[str, str], float]] = \
            lambda *_: (200, {}, 0.0)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items()}
                entry = {"path": self.path, "raw": raw, "body": json.loads(raw),
                         "headers": headers, "at": time.monotonic()}
                with receiver.lock:
                    receiver.got.append(entry)
                status, extra, delay = receiver.script(self.path, entry["body"], headers)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [g for g in self.got if g["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def opening_log(start_ms: int, service: str = "checkout") -> list[dict[str, Any]]:
    log = steady(start_ms, 2400, (service, "cart"))
    for s in range(120):
        log.append(event(start_ms + 2_400_000 + s * 1000, service, "payment.charge",
                         error="PMT_502"))
    return log


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def notify_env(r: Receiver, **extra: str) -> dict[str, str]:
    return {"TOCSIN_NOTIFY__SLACK_WEBHOOK_URL": r.url("/slack"),
            "TOCSIN_NOTIFY__PAGERDUTY_ROUTING_KEY": "routing-key-1",
            "TOCSIN_NOTIFY__PAGERDUTY_URL": r.url("/pd"),
            "TOCSIN_NOTIFY__WEBHOOK_URL": r.url("/hook"),
            "TOCSIN_NOTIFY__WEBHOOK_SECRET": SECRET,
            "TOCSIN_NOTIFY__BACKOFF_MS": "200", "TOCSIN_NOTIFY__BACKOFF_CAP_MS": "2000",
            "TOCSIN_NOTIFY__TIMEOUT_MS": "1500", **extra}


def start(broker: str, names: Names, db: Path, env: dict[str, str]) -> WorkerProc:
    worker = WorkerProc(broker, names, db, extra_env={**names.side_topics(), **env})
    return worker.start().wait_ready(90)  # type: ignore[return-value]


def wait(worker: WorkerProc, fact: Callable[[], Any], what: str, timeout_s: float = 60
         ) -> Any:
    return worker.wait_for(fact, timeout_s, what)


def test_lifecycle_changes_reach_every_channel_in_order(broker: str, tmp_path: Path,
                                                        receiver: Receiver) -> None:
    names = Names.fresh("ntf")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    worker = start(broker, names, tmp_path / "n.duckdb", notify_env(receiver))
    try:
        trigger = wait(worker, lambda: receiver.on("/pd"), "a PagerDuty trigger")[0]["body"]
        inc = trigger["dedup_key"]
        assert (trigger["event_action"], trigger["routing_key"]) == ("trigger",
                                                                      "routing-key-1")
        assert trigger["payload"]["component"] == "checkout"
        # It waited for the report of the opening: the triage is in the details.
        assert trigger["payload"]["custom_details"]["report_hash"].startswith("sha256:")
        slack = wait(worker, lambda: receiver.on("/slack"), "a Slack message")[0]["body"]
        assert slack["blocks"][0]["text"]["text"].startswith("*Incident opened on ")
        hook = wait(worker, lambda: receiver.on("/hook"), "a webhook")[0]
        stamp = int(hook["headers"]["X-Tocsin-Timestamp"])
        assert verify(SECRET, stamp, hook["raw"], hook["headers"]["X-Tocsin-Signature"],
                      now_s=int(time.time()))
        assert hook["body"]["event"]["kind"] == "opened"
        assert hook["body"]["report"]["incident"]["id"] == inc
        assert hook["body"]["notification_id"] == hook["headers"]["X-Tocsin-Notification-Id"]

        reply = worker.request("POST", f"/v1/incidents/{inc}/actions",
                               {"action": "acknowledge", "by": "ana"})
        assert reply.status == 200, reply.body
        wait(worker, lambda: len(receiver.on("/pd")) >= 2, "a PagerDuty acknowledge")
        assert receiver.on("/pd")[1]["body"] == {"routing_key": "routing-key-1",
                                                 "event_action": "acknowledge",
                                                 "dedup_key": inc}
        wait(worker, lambda: len(receiver.on("/slack")) >= 2, "Slack told of the ack")
        assert receiver.on("/slack")[1]["body"]["blocks"][0]["text"]["text"] == \
            "*Acknowledged by ana: checkout:payment.charge:PMT_502*"
        rows = wait(worker, lambda: (r := worker.query(
            "SELECT channel, kind, status, attempts FROM notifications ORDER BY seq, channel"
        )) and all(x["status"] == "delivered" for x in r) and len(r) == 6 and r,
            "six delivered notifications in DuckDB")
        assert [(r["channel"], r["kind"]) for r in rows] == [
            ("pagerduty", "opened"), ("slack", "opened"), ("webhook", "opened"),
            ("pagerduty", "acknowledged"), ("slack", "acknowledged"),
            ("webhook", "acknowledged")]
        # One delivery per notification: no page twice.
        ids = [g["headers"]["X-Tocsin-Notification-Id"] for g in receiver.got]
        assert len(ids) == len(set(ids)) == 6
    finally:
        assert worker.stop() == 0


def test_retries_honour_retry_after_and_a_refusal_is_a_visible_failure(
        broker: str, tmp_path: Path, receiver: Receiver) -> None:
    """The webhook fails twice (503, then 429 asking for 1 s) and then takes it; PagerDuty
    refuses for good (400); Slack hangs past the attempt's time limit once. Detection goes
    on meanwhile: a second family's incident opens while they are retried."""
    answers = {"/hook": [(503, {}, 0.0), (429, {"Retry-After": "1"}, 0.0)],
               "/slack": [(200, {}, 3.0)]}

    def script(path: str, body: dict[str, Any], headers: dict[str, str]
               ) -> tuple[int, dict[str, str], float]:
        if path == "/pd":
            return 400, {}, 0.0
        queue = answers.get(path)
        return queue.pop(0) if queue else (200, {}, 0.0)

    receiver.script = script
    names = Names.fresh("ntfr")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    worker = start(broker, names, tmp_path / "r.duckdb",
                   notify_env(receiver, TOCSIN_NOTIFY__ATTEMPTS="5"))
    try:
        rows = worker.poll("SELECT channel, status, attempts, last_status, last_error, "
                           "next_try_ms FROM notifications ORDER BY channel",
                           lambda r: all(x["status"] != "pending" for x in r), 90)
        assert all(x["status"] != "pending" for x in rows), \
            (rows, [(g["path"], g["at"]) for g in receiver.got])
        by = {r["channel"]: r for r in rows}
        assert (by["webhook"]["status"], by["webhook"]["attempts"]) == ("delivered", 3)
        hooks = receiver.on("/hook")
        assert hooks[2]["at"] - hooks[1]["at"] >= 1.0  # Retry-After: 1 honoured
        assert len({h["headers"]["X-Tocsin-Notification-Id"] for h in hooks}) == 1
        assert (by["pagerduty"]["status"], by["pagerduty"]["attempts"],
                by["pagerduty"]["last_status"]) == ("failed", 1, 400)
        assert (by["slack"]["status"], by["slack"]["attempts"]) == ("delivered", 2)
        metrics = worker.health()["metrics"]["stages"]  # type: ignore[index]
        assert metrics["notifications_failed:pagerduty"] == 1
        assert metrics["notifications_retry:webhook"] == 2
    finally:
        assert worker.stop() == 0


def test_a_receiver_that_hangs_does_not_slow_detection(broker: str, tmp_path: Path,
                                                        receiver: Receiver) -> None:
    receiver.script = lambda *_: (200, {}, 30.0)  # every delivery hangs past its limit
    names = Names.fresh("ntfh")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    worker = start(broker, names, tmp_path / "h.duckdb",
                   notify_env(receiver, TOCSIN_NOTIFY__TIMEOUT_MS="20000"))
    try:
        worker.wait_rows("SELECT 1 FROM incidents", 60)
        wait(worker, lambda: len(receiver.got) >= 3, "three deliveries hanging")
        produce_events(broker, names.events, opening_log(T0_MS + 4_000_000, "search"),
                       partitions=3)
        began = time.monotonic()
        worker.wait_rows("SELECT 1 FROM incidents WHERE service = 'search'", 60)
        assert time.monotonic() - began < 20  # not behind the hanging deliveries
    finally:
        worker.kill()


def test_a_sigkill_between_answer_and_record_tells_it_again_with_the_same_id(
        broker: str, tmp_path: Path, receiver: Receiver) -> None:
    """The webhook receiver kills the worker as it takes the first delivery: the worker
    never records it. After a restart the same notification comes again, with the same id;
    nothing else is told twice."""
    names = Names.fresh("ntfk")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    db = tmp_path / "k.duckdb"
    env = notify_env(receiver)
    env.pop("TOCSIN_NOTIFY__SLACK_WEBHOOK_URL")
    env.pop("TOCSIN_NOTIFY__PAGERDUTY_ROUTING_KEY")
    worker = WorkerProc(broker, names, db, extra_env={**names.side_topics(), **env})
    killed = threading.Event()

    def script(path: str, body: dict[str, Any], headers: dict[str, str]
               ) -> tuple[int, dict[str, str], float]:
        if not killed.is_set():
            killed.set()
            os.kill(worker.pid, signal.SIGKILL)
        return 200, {}, 0.0

    receiver.script = script
    worker.start().wait_ready(90)
    try:
        wait_for(killed.is_set, 90, "the first delivery, and the kill")
        worker.proc.wait(timeout=30)  # type: ignore[union-attr]
        worker.start().wait_ready(90)
        rows = worker.wait_for(lambda: (r := worker.query(
            "SELECT notification_id, status FROM notifications")) and
            all(x["status"] == "delivered" for x in r) and r, 90, "delivered after restart")
        assert len(rows) == 1
        ids = [g["headers"]["X-Tocsin-Notification-Id"] for g in receiver.got]
        assert ids == [rows[0]["notification_id"]] * 2
    finally:
        worker.stop()


def test_news_on_an_open_incident_is_told_once(broker: str, tmp_path: Path,
                                               receiver: Receiver) -> None:
    """An alert correlated with an open incident is news: triage publishes an `updated`
    event naming it, Slack and the webhook are told, DuckDB keeps it; the same alert
    again (a re-evaluation) is not news (ADR 0018)."""
    names = Names.fresh("ntfn")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    env = notify_env(receiver)
    env.pop("TOCSIN_NOTIFY__PAGERDUTY_ROUTING_KEY")
    worker = start(broker, names, tmp_path / "news.duckdb", env)
    try:
        inc = worker.wait_rows("SELECT incident_id, onset_ms FROM incidents", 60)[0]
        wait(worker, lambda: len(receiver.on("/hook")) >= 1, "the opening told")
        alert = {"type": "alert", "service": "checkout", "env": "prod",
                 "title": "checkout 5xx above 5%", "event_time_ms": inc["onset_ms"] + 60_000}
        for _ in range(2):  # the second is the same alert again: occurrences, not news
            assert worker.request("POST", "/v1/signals", alert).status == 202
        hooks = wait(worker, lambda: [h for h in receiver.on("/hook")
                                      if h["body"]["event"]["kind"] == "updated"],
                     "an updated event told")
        event = hooks[0]["body"]["event"]
        assert event["incident_id"] == inc["incident_id"]
        assert [line.split(":")[0] for line in event["added"]] == ["alert"]
        slack = wait(worker, lambda: [s for s in receiver.on("/slack")
                                      if "New evidence" in s["body"]["text"]],
                     "Slack told of the news")
        assert "1 added" in slack[0]["body"]["blocks"][0]["text"]["text"]
        rows = worker.wait_rows("SELECT added, news_signature FROM incident_updates", 30)
        assert rows[0]["added"] == event["added"]
        worker.wait_settled(60)
        assert len([h for h in receiver.on("/hook")
                    if h["body"]["event"]["kind"] == "updated"]) == 1
        assert len(worker.query("SELECT * FROM incident_updates")) == 1
    finally:
        assert worker.stop() == 0


def test_a_first_start_tells_what_happens_from_then_on_not_the_history(
        broker: str, tmp_path: Path, receiver: Receiver) -> None:
    """A channel added to a Tocsin that already has incidents: the old ones are not told
    (no flood of stale pages); the next change is."""
    names = Names.fresh("ntff")
    produce_events(broker, names.events, opening_log(T0_MS), partitions=3)
    db = tmp_path / "f.duckdb"
    before = start(broker, names, db, {})
    inc = before.wait_rows("SELECT incident_id FROM incidents", 60)[0]["incident_id"]
    before.wait_settled(60)
    assert before.stop() == 0
    env = notify_env(receiver)
    env.pop("TOCSIN_NOTIFY__SLACK_WEBHOOK_URL")
    env.pop("TOCSIN_NOTIFY__PAGERDUTY_ROUTING_KEY")
    worker = start(broker, names, db, env)
    try:
        reply = worker.request("POST", f"/v1/incidents/{inc}/actions",
                               {"action": "acknowledge", "by": "ana"})
        assert reply.status == 200, reply.body
        told = wait(worker, lambda: receiver.on("/hook"), "the acknowledgement told")
        worker.wait_settled(60)
        assert [h["body"]["event"]["kind"] for h in receiver.on("/hook")] == \
            ["acknowledged"], told
    finally:
        assert worker.stop() == 0
