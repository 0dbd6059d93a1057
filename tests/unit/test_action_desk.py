"""The actions desk without a broker: a lookup and a send of our own (the worker's are the
DuckDB sink and a Kafka producer, tested together in tests/integration/test_actions.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tocsin.processors.actions import decode_command
from tocsin.streams.kafka.headers import ACTION
from tocsin.streams.web.actions import ActionDesk, Answer

INCIDENT = {"incident_id": "inc_1", "env": "prod", "service": "checkout", "status": "active",
            "phase": "triggered", "seq": 1, "family": "checkout:pay:E"}


class Lookup:
    def __init__(self, incident: dict[str, Any] | None = INCIDENT,
                 applied: dict[str, Any] | None = None) -> None:
        self.incident_row = incident
        self.applied = applied

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        return self.incident_row if self.incident_row and \
            incident_id == self.incident_row["incident_id"] else None

    def action(self, action_id: str) -> dict[str, Any] | None:
        return self.applied


class Sent:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, topic: str, value: bytes, key: bytes,
                       headers: list[tuple[str, bytes]]) -> None:
        self.records.append((topic, value, key, headers))
        self.arrived.set()


def desk(lookup: Lookup | None = None, timeout_s: float = 5.0) -> tuple[ActionDesk, Sent]:
    sent = Sent()
    return ActionDesk(lookup or Lookup(), sent, "events", timeout_s=timeout_s,
                      clock=lambda: 1_234), sent


def submit(d: ActionDesk, body: Any, key: str | None = "k1",
           decide: Any = None, sent: Sent | None = None) -> Answer:
    async def go() -> Answer:
        task = asyncio.ensure_future(d.submit("inc_1", body, key))
        if decide is not None:
            assert sent is not None
            await sent.arrived.wait()  # the command is on the log: decide it
            decide(decode_command(sent.records[-1][1]))
        return await task
    return asyncio.run(go())


def test_an_applied_action_answers_200_with_the_new_state() -> None:
    d, sent = desk()

    def applied(cmd: Any) -> None:
        d.written([{"incident_id": "inc_1", "seq": 2, "status": "active",
                    "phase": "acknowledged", "action_id": cmd.action_id,
                    "kind": "acknowledged", "actor": cmd.actor, "at_ms": cmd.at_ms}], [])

    answer = submit(d, {"action": "acknowledge", "by": "ana"}, decide=applied, sent=sent)
    assert answer.status == 200
    assert answer.body["phase"] == "acknowledged" and answer.body["by"] == "ana"
    assert answer.body["at_ms"] == 1_234  # the desk's clock, taken at the edge
    topic, value, key, headers = sent.records[0]
    assert (topic, key, headers) == ("events", b"checkout", [(ACTION, b"1")])
    command = decode_command(value)
    assert (command.incident_id, command.service, command.env, command.action) == \
        ("inc_1", "checkout", "prod", "acknowledge")
    assert command.action_id == answer.body["action_id"]


def test_a_refusal_by_detection_answers_409_with_its_rule() -> None:
    d, sent = desk()

    def refused(cmd: Any) -> None:
        d.written([], [{"reason": f"action {cmd.action_id} refused: "
                                  "lifecycle.one_open_per_family: inc_2 is open"}])

    answer = submit(d, {"action": "resolve", "by": "ana"}, decide=refused, sent=sent)
    assert answer.status == 409
    assert answer.body == {"error": "inc_2 is open", "rule": "lifecycle.one_open_per_family"}


def test_no_decision_in_time_answers_202_with_the_action_id() -> None:
    d, sent = desk(timeout_s=0.05)
    answer = submit(d, {"action": "acknowledge", "by": "ana"})
    assert answer.status == 202 and answer.body["pending"] is True
    assert answer.body["action_id"] == decode_command(sent.records[0][1]).action_id


def test_requests_refused_before_the_log() -> None:
    d, sent = desk()
    assert submit(d, {"action": "acknowledge"}).status == 400
    assert submit(d, {"action": "acknowledge", "by": "a"}, key="\n").status == 400
    assert submit(desk(Lookup(incident=None))[0], {"action": "acknowledge", "by": "a"}
                  ).status == 404
    refused = submit(desk(Lookup(incident={**INCIDENT, "phase": "resolved"}))[0],
                     {"action": "mitigate", "by": "a"})
    assert refused.status == 409 and refused.body["rule"] == "lifecycle.mitigate"
    assert sent.records == []


def test_a_retry_of_an_applied_action_writes_nothing() -> None:
    d, sent = desk(Lookup(applied={"action_id": "act_x"}))
    answer = submit(d, {"action": "acknowledge", "by": "ana"})
    assert answer.status == 200 and answer.body["repeated"] is True
    assert answer.body["incident_id"] == "inc_1" and sent.records == []


def test_the_same_key_is_the_same_action_and_another_key_another() -> None:
    ids = []
    for key in ("k1", "k1", "k2"):
        d, sent = desk(timeout_s=0.01)
        submit(d, {"action": "acknowledge", "by": "ana"}, key=key)
        ids.append(orjson.loads(sent.records[0][1])["action_id"])
    assert ids[0] == ids[1] != ids[2]


def test_a_broker_that_does_not_take_the_command_is_a_503_and_nothing_waits() -> None:
    async def refuse(*_: Any) -> None:
        raise ConnectionError("broker away")

    d = ActionDesk(Lookup(), refuse, "events", timeout_s=5, clock=lambda: 1)
    answer = asyncio.run(d.submit("inc_1", {"action": "acknowledge", "by": "ana"}, "k"))
    assert answer.status == 503 and "could not be written" in answer.body["error"]
    assert d._waiting == {}


def test_a_decision_after_the_answer_timed_out_leaves_no_waiter_behind() -> None:
    d, _ = desk(timeout_s=0.01)
    answer = submit(d, {"action": "acknowledge", "by": "ana"})
    assert answer.status == 202 and len(d._waiting) == 1
    d.written([{"action_id": answer.body["action_id"], "incident_id": "inc_1", "seq": 2,
                "status": "active", "phase": "acknowledged", "kind": "acknowledged",
                "actor": "ana", "at_ms": 1}], [])
    assert d._waiting == {}
