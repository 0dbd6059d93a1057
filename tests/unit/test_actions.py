"""Operator actions, the pure part (ADR 0016): the transition table, the request checks,
action ids, the command record and the report's response section."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from tocsin.processors.actions import (
    MAX_ACTOR,
    MAX_NOTE,
    Command,
    CommandError,
    Refusal,
    action_id,
    check,
    decode_command,
    next_phase,
    request_fields,
)
from tocsin.processors.classify import IncidentFacts
from tocsin.processors.report import IncidentState, response_section

PHASES = ("triggered", "acknowledged", "investigating", "mitigated", "resolved")

# (action, phase) -> the phase after it, or None when the action is refused there.
# Written out by hand, row by row, from ADR 0016; not derived from TRANSITIONS.
EXPECTED: dict[tuple[str, str], str | None] = {
    ("acknowledge", "triggered"): "acknowledged",
    ("acknowledge", "acknowledged"): None,
    ("acknowledge", "investigating"): None,
    ("acknowledge", "mitigated"): None,
    ("acknowledge", "resolved"): None,
    ("investigate", "triggered"): "investigating",
    ("investigate", "acknowledged"): "investigating",
    ("investigate", "investigating"): None,
    ("investigate", "mitigated"): "investigating",
    ("investigate", "resolved"): None,
    ("mitigate", "triggered"): "mitigated",
    ("mitigate", "acknowledged"): "mitigated",
    ("mitigate", "investigating"): "mitigated",
    ("mitigate", "mitigated"): None,
    ("mitigate", "resolved"): None,
    ("resolve", "triggered"): "resolved",
    ("resolve", "acknowledged"): "resolved",
    ("resolve", "investigating"): "resolved",
    ("resolve", "mitigated"): "resolved",
    ("resolve", "resolved"): None,
    ("reopen", "triggered"): None,
    ("reopen", "acknowledged"): None,
    ("reopen", "investigating"): None,
    ("reopen", "mitigated"): None,
    ("reopen", "resolved"): "triggered",
    ("annotate", "triggered"): "triggered",
    ("annotate", "acknowledged"): "acknowledged",
    ("annotate", "investigating"): "investigating",
    ("annotate", "mitigated"): "mitigated",
    ("annotate", "resolved"): "resolved",
    ("hypothesis", "triggered"): "triggered",
    ("hypothesis", "acknowledged"): "acknowledged",
    ("hypothesis", "investigating"): "investigating",
    ("hypothesis", "mitigated"): "mitigated",
    ("hypothesis", "resolved"): "resolved",
}


# ------------------------------------------------------------------ the table


def test_the_expected_table_covers_seven_actions_by_five_phases() -> None:
    assert len(EXPECTED) == 35
    assert {a for a, _ in EXPECTED} == {"acknowledge", "investigate", "mitigate", "resolve",
                                        "reopen", "annotate", "hypothesis"}
    assert {p for _, p in EXPECTED} == set(PHASES)


@pytest.mark.parametrize(("action", "phase"), sorted(EXPECTED))
def test_check_and_next_phase_follow_the_table(action: str, phase: str) -> None:
    expected = EXPECTED[(action, phase)]
    refusal = check(action, phase)
    if expected is None:
        assert isinstance(refusal, Refusal)
        assert refusal.rule == f"lifecycle.{action}"
        assert f"this one is {phase}" in refusal.message
        assert action in refusal.message
    else:
        assert refusal is None
        assert next_phase(action, phase) == expected


def test_a_refusal_names_the_phases_the_action_applies_to() -> None:
    refusal = check("investigate", "resolved")
    assert refusal == Refusal(
        "lifecycle.investigate",
        "investigate applies to an incident that is triggered, acknowledged, mitigated; "
        "this one is resolved")


def test_an_unknown_action_is_refused_by_its_own_rule() -> None:
    refusal = check("escalate", "triggered")
    assert refusal is not None and refusal.rule == "action.unknown"
    assert "escalate" in refusal.message


# ------------------------------------------------------------------ request bodies


@pytest.mark.parametrize(("body", "expected"), [
    ({"action": "acknowledge", "by": "ana"},
     {"action": "acknowledge", "by": "ana", "note": None, "title": None, "status": None}),
    ({"action": "investigate", "by": " ana ", "note": "looking at the gateway"},
     {"action": "investigate", "by": "ana", "note": "looking at the gateway", "title": None,
      "status": None}),
    ({"action": "mitigate", "by": "bo", "note": "rolled back 1.5.0"},
     {"action": "mitigate", "by": "bo", "note": "rolled back 1.5.0", "title": None,
      "status": None}),
    ({"action": "resolve", "by": "cy", "note": "   "},
     {"action": "resolve", "by": "cy", "note": None, "title": None, "status": None}),
    ({"action": "reopen", "by": "cy"},
     {"action": "reopen", "by": "cy", "note": None, "title": None, "status": None}),
    ({"action": "annotate", "by": "ana", "note": "customers report failed payments"},
     {"action": "annotate", "by": "ana", "note": "customers report failed payments",
      "title": None, "status": None}),
    ({"action": "hypothesis", "by": "ana", "title": "bad deploy", "status": "proposed"},
     {"action": "hypothesis", "by": "ana", "note": None, "title": "bad deploy",
      "status": "proposed"}),
    ({"action": "hypothesis", "by": "bo", "title": "bad deploy", "status": "rejected",
      "note": "the rollback did not help"},
     {"action": "hypothesis", "by": "bo", "note": "the rollback did not help",
      "title": "bad deploy", "status": "rejected"}),
    ({"action": "annotate", "by": "b" * MAX_ACTOR, "note": "n" * MAX_NOTE},
     {"action": "annotate", "by": "b" * MAX_ACTOR, "note": "n" * MAX_NOTE, "title": None,
      "status": None}),
    # An action recorded after the fact carries its time.
    ({"action": "acknowledge", "by": "ana", "at_ms": 1_793_610_000_000},
     {"action": "acknowledge", "by": "ana", "note": None, "title": None, "status": None,
      "at_ms": 1_793_610_000_000}),
    ({"action": "mitigate", "by": "bo", "at_ms": 0},
     {"action": "mitigate", "by": "bo", "note": None, "title": None, "status": None,
      "at_ms": 0}),
])
def test_valid_request_bodies(body: dict[str, Any], expected: dict[str, Any]) -> None:
    fields = request_fields(body)
    # The five fields every action has; optional later ones stay unset when not given.
    assert {k: fields[k] for k in expected} == expected
    assert all(fields[k] is None for k in set(fields) - set(expected))


@pytest.mark.parametrize(("body", "message"), [
    (["acknowledge", "ana"], "JSON object"),
    ("acknowledge", "JSON object"),
    (None, "JSON object"),
    ({"action": "escalate", "by": "ana"}, "action must be one of"),
    ({"by": "ana"}, "action must be one of"),
    ({"action": "acknowledge"}, "by is required"),
    ({"action": "acknowledge", "by": "   "}, "by must not be empty"),
    ({"action": "acknowledge", "by": 7}, "by must be a string"),
    ({"action": "annotate", "by": "ana"}, "note is required"),
    ({"action": "annotate", "by": "ana", "note": " "}, "note must not be empty"),
    ({"action": "hypothesis", "by": "ana", "status": "proposed"}, "title is required"),
    ({"action": "hypothesis", "by": "ana", "title": "bad deploy"}, "status must be one of"),
    ({"action": "hypothesis", "by": "ana", "title": "bad deploy", "status": "maybe"},
     "status must be one of"),
    ({"action": "acknowledge", "by": "ana", "status": "confirmed"},
     "status belongs to a hypothesis"),
    ({"action": "annotate", "by": "ana", "note": "n", "title": "bad deploy"},
     "title belongs to a hypothesis"),
    ({"action": "acknowledge", "by": "ana", "severity": "high"}, "unknown field 'severity'"),
    ({"action": "annotate", "by": "ana", "note": "n" * (MAX_NOTE + 1)},
     "note is longer than 4000 characters"),
    ({"action": "acknowledge", "by": "b" * (MAX_ACTOR + 1)},
     "by is longer than 200 characters"),
    ({"action": "acknowledge", "by": "ana", "at_ms": -1}, "at_ms must be epoch milliseconds"),
    ({"action": "acknowledge", "by": "ana", "at_ms": 1.5}, "at_ms must be epoch milliseconds"),
    ({"action": "acknowledge", "by": "ana", "at_ms": "1793610000000"},
     "at_ms must be epoch milliseconds"),
    ({"action": "acknowledge", "by": "ana", "at_ms": True}, "at_ms must be epoch milliseconds"),
    ({"action": "acknowledge", "by": "ana", "at_ms": 2**53},
     "at_ms must be epoch milliseconds"),
])
def test_request_bodies_refused(body: Any, message: str) -> None:
    with pytest.raises(CommandError) as caught:
        request_fields(body)
    assert message in str(caught.value)


# ------------------------------------------------------------------ action ids

ACK = {"action": "acknowledge", "by": "ana", "note": None, "title": None, "status": None}
NOTE = {"action": "annotate", "by": "bo", "note": "hello", "title": None, "status": None}
ID_FORMAT = re.compile(r"act_[0-9a-f]{16}")


def test_the_same_idempotency_key_is_the_same_action_whatever_the_body() -> None:
    first = action_id("inc_1", "key-1", ACK, 3)
    assert action_id("inc_1", "key-1", NOTE, 3) == first
    assert action_id("inc_1", "key-1", ACK, 9) == first
    assert action_id("inc_1", "key-2", ACK, 3) != first
    assert action_id("inc_2", "key-1", ACK, 3) != first


def test_without_a_key_the_id_is_of_incident_sequence_and_fields() -> None:
    base = action_id("inc_1", None, ACK, 3)
    assert action_id("inc_1", None, dict(ACK), 3) == base
    assert action_id("inc_2", None, ACK, 3) != base
    assert action_id("inc_1", None, ACK, 4) != base
    assert action_id("inc_1", None, {**ACK, "by": "bo"}, 3) != base
    assert action_id("inc_1", None, NOTE, 3) != base
    assert action_id("inc_1", "key-1", ACK, 3) != base


def test_action_ids_have_one_format() -> None:
    ids = [action_id("inc_1", "key-1", ACK, 0), action_id("inc_1", None, NOTE, 12),
           action_id("inc_ü", "k€y", ACK, 2**40)]
    for act in ids:
        assert ID_FORMAT.fullmatch(act), act
    assert len(set(ids)) == 3


# ------------------------------------------------------------------ command records

COMMANDS = [
    Command("act_0123456789abcdef", "inc_1", "acknowledge", "ana", 1_793_610_000_000,
            "checkout", "prod"),
    Command("act_1", "inc_1", "annotate", "bo", 0, "checkout", "staging",
            note="customers report failed payments"),
    Command("act_2", "inc_9", "hypothesis", "cy", 2**53 - 1, "search", "prod",
            note="seen before", title="bad deploy", hypothesis_status="confirmed"),
    Command("act_3", "inc_9", "resolve", "dé", 5, "search", "prod", note="fixed"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.action)
def test_a_command_survives_its_bytes(command: Command) -> None:
    data = command.to_bytes()
    assert orjson.loads(data)["v"] == 1
    assert decode_command(data) == command


_DROP = object()  # a field _record leaves out


def _record(**change: Any) -> bytes:
    raw = orjson.loads(COMMANDS[0].to_bytes())
    for name, value in change.items():
        if value is _DROP:
            del raw[name]
        else:
            raw[name] = value
    return orjson.dumps(raw)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not an action command of version 1"),
    (b"null", "not an action command of version 1"),
    (_record(v=2), "not an action command of version 1"),
    (_record(v=_DROP), "not an action command of version 1"),
    (_record(action_id=_DROP), "action_id must be a non-empty string"),
    (_record(action_id=""), "action_id must be a non-empty string"),
    (_record(incident_id=_DROP), "incident_id must be a non-empty string"),
    (_record(incident_id=17), "incident_id must be a non-empty string"),
    (_record(service=_DROP), "service must be a non-empty string"),
    (_record(env=""), "env must be a non-empty string"),
    (_record(at_ms=-1), "at_ms must be a non-negative integer"),
    (_record(at_ms=1.5), "at_ms must be a non-negative integer"),
    (_record(at_ms="1793610000000"), "at_ms must be a non-negative integer"),
    (_record(at_ms=True), "at_ms must be a non-negative integer"),
    (_record(at_ms=_DROP), "at_ms must be a non-negative integer"),
    (_record(at_ms=2**53), "at_ms must be a non-negative integer"),
    (_record(action="escalate"), "action must be one of"),
    (_record(actor=""), "by must not be empty"),
    (_record(action="annotate"), "note is required"),
])
def test_a_record_that_is_not_a_command_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CommandError) as caught:
        decode_command(data)
    assert message in str(caught.value)


# ------------------------------------------------------------------ the response section

ONSET = 1_793_612_403_000
FACTS = IncidentFacts("inc_dd40b8528905eadf", "prod", "checkout", "payment.charge", "PMT_502",
                      ONSET, downstream="payment")


def state(status: str, phase: str) -> IncidentState:
    return IncidentState(FACTS, "checkout:payment.charge:PMT_502", status, 9, 5, 30, 30, 0.0,
                         None, ONSET + 30_000, phase=phase)


def act(kind: str, actor: str, at_ms: int, note: str | None = None, title: str | None = None,
        hypothesis_status: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "actor": actor, "at_ms": at_ms, "note": note, "title": title,
            "hypothesis_status": hypothesis_status}


SEQUENCE = [
    act("acknowledged", "ana", ONSET + 60_000),
    act("hypothesis", "ana", ONSET + 120_000, title="bad deploy",
        hypothesis_status="proposed"),
    act("hypothesis", "bo", ONSET + 180_000, title="bad deploy",
        hypothesis_status="confirmed"),
    act("annotated", "ana", ONSET + 200_000, note="rollback started"),
    act("mitigated", "bo", ONSET + 300_000),
    act("resolved", "cy", ONSET + 600_000),
]


def test_no_actions_no_response_section() -> None:
    assert response_section(state("active", "triggered"), []) is None


def test_the_response_section_sums_up_what_people_did() -> None:
    section = response_section(state("resolved", "resolved"), SEQUENCE)
    assert section == {
        "phase": "resolved",
        "acknowledged": {"by": "ana", "at_ms": ONSET + 60_000},
        "mitigated": {"by": "bo", "at_ms": ONSET + 300_000},
        "resolved": {"by": "cy", "at_ms": ONSET + 600_000},
        "notes": [{"kind": "annotated", "by": "ana", "at_ms": ONSET + 200_000,
                   "note": "rollback started"}],
        "notes_total": 1,
        "hypotheses": [{"title": "bad deploy", "status": "confirmed", "by": "bo",
                        "at_ms": ONSET + 180_000, "proposed_by": "ana"}],
        "actions": 6,
    }


def test_a_persons_resolve_counts_only_while_the_incident_is_resolved() -> None:
    section = response_section(state("active", "resolved"), SEQUENCE)
    assert section is not None
    assert section["resolved"] is None
    assert section["acknowledged"] == {"by": "ana", "at_ms": ONSET + 60_000}


def test_a_later_reopen_undoes_the_resolve() -> None:
    reopened = [*SEQUENCE, act("reopened", "dan", ONSET + 900_000, note="errors are back")]
    for status in ("active", "resolved"):
        section = response_section(state(status, "triggered"), reopened)
        assert section is not None
        assert section["resolved"] is None, status
        assert section["phase"] == "triggered"
        assert section["notes_total"] == 2
        assert [n["kind"] for n in section["notes"]] == ["annotated", "reopened"]
    resolved_again = [*reopened, act("resolved", "eve", ONSET + 1_200_000)]
    section = response_section(state("resolved", "resolved"), resolved_again)
    assert section is not None
    assert section["resolved"] == {"by": "eve", "at_ms": ONSET + 1_200_000}


def test_the_first_response_is_the_acknowledgement_whatever_its_kind() -> None:
    actions = [act("annotated", "ana", ONSET + 1, note="paging bo"),
               act("investigating", "bo", ONSET + 2),
               act("acknowledged", "cy", ONSET + 3)]
    section = response_section(state("active", "investigating"), actions)
    assert section is not None
    assert section["acknowledged"] == {"by": "bo", "at_ms": ONSET + 2}
    assert section["mitigated"] is None and section["hypotheses"] == []
