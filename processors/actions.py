"""Operator actions: what people on call do to an incident, as commands on the log (ADR 0016).

An action (acknowledge, investigate, mitigate, resolve, reopen, annotate, hypothesis) is a
:class:`Command` written to the events topic, keyed by the incident's service, so the
detector that owns the incident's family reads it in log order among that family's
events and decides it there, deterministically: a replay of the log decides every action
the same way. An applied action is a lifecycle event on the incidents topic; a refused one
is a dead letter naming the rule.

The incident carries two states side by side:

- ``status`` (``active | recovering | resolved``): what its errors say, as before, except
  that a person may resolve it;
- ``phase`` (``triggered | acknowledged | investigating | mitigated | resolved``): where
  the response stands, moved by people (and to ``resolved`` by the machine too).

:data:`TRANSITIONS` is the whole table; :func:`check` reads it and nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import orjson

Action = Literal["acknowledge", "investigate", "mitigate", "resolve", "reopen", "annotate",
                 "hypothesis"]
Phase = Literal["triggered", "acknowledged", "investigating", "mitigated", "resolved"]
HypothesisStatus = Literal["proposed", "confirmed", "rejected"]

PHASES: Final = ("triggered", "acknowledged", "investigating", "mitigated", "resolved")
OPEN_PHASES: Final = frozenset(PHASES[:-1])
HYPOTHESIS_STATUSES: Final = ("proposed", "confirmed", "rejected")
COMMAND_VERSION = 1
MAX_ACTOR = 200  # characters of a name
MAX_NOTE = 4_000  # characters of a note
MAX_TITLE = 300  # characters of a hypothesis title
MAX_KEY = 200  # characters of an Idempotency-Key


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table: from which phases an action is allowed, the phase it leaves
    the incident in (None: unchanged) and the lifecycle event kind it publishes."""

    allowed: frozenset[str]
    to: str | None
    kind: str


TRANSITIONS: Final[dict[str, Transition]] = {
    "acknowledge": Transition(frozenset({"triggered"}), "acknowledged", "acknowledged"),
    "investigate": Transition(frozenset({"triggered", "acknowledged", "mitigated"}),
                              "investigating", "investigating"),
    "mitigate": Transition(frozenset({"triggered", "acknowledged", "investigating"}),
                           "mitigated", "mitigated"),
    "resolve": Transition(OPEN_PHASES, "resolved", "resolved"),
    "reopen": Transition(frozenset({"resolved"}), "triggered", "reopened"),
    "annotate": Transition(frozenset(PHASES), None, "annotated"),
    "hypothesis": Transition(frozenset(PHASES), None, "hypothesis"),
}
ACTIONS: Final = tuple(TRANSITIONS)
# The first of these an incident receives is its acknowledgement, for MTTA.
RESPONDS: Final = frozenset({"acknowledge", "investigate", "mitigate", "resolve"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action cannot apply: ``rule`` names the table row or invariant."""

    rule: str
    message: str


def check(action: str, phase: str) -> Refusal | None:
    """None when ``action`` may apply to an incident in ``phase``, else the refusal."""
    row = TRANSITIONS.get(action)
    if row is None:
        return Refusal("action.unknown", f"unknown action {action!r}")
    if phase in row.allowed:
        return None
    allowed = ", ".join(p for p in PHASES if p in row.allowed)
    return Refusal(f"lifecycle.{action}",
                   f"{action} applies to an incident that is {allowed}; this one is {phase}")


def next_phase(action: str, phase: str) -> str:
    """The phase after an allowed action."""
    to = TRANSITIONS[action].to
    return phase if to is None else to


@dataclass(frozen=True, slots=True)
class Command:
    """One operator action, as written on the events topic and read by the detector.

    ``at_ms`` is the time the worker received it (the one clock of an action, taken at the
    edge and recorded, so a replay reads the same time). ``service`` and ``env`` name the
    incident's family's partition; the detector checks them against the incident it holds.
    """

    action_id: str
    incident_id: str
    action: str
    actor: str
    at_ms: int
    service: str
    env: str
    note: str | None = None
    title: str | None = None
    hypothesis_status: str | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": COMMAND_VERSION, **asdict(self)},
                            option=orjson.OPT_SORT_KEYS)


class CommandError(ValueError):
    """A command record that is not one (dead-lettered with this reason)."""


def _text(body: dict[str, Any], name: str, limit: int, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise CommandError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise CommandError(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise CommandError(f"{name} must not be empty")
    if len(value) > limit:
        raise CommandError(f"{name} is longer than {limit} characters")
    return value or None


MAX_AT_MS = 2**53  # an action's time: epoch milliseconds, as every time on the wire


def request_fields(body: Any) -> dict[str, Any]:
    """The fields of a ``POST /v1/incidents/{id}/actions`` body, checked (CommandError
    naming the first that is wrong): ``action``, ``by``, and ``note`` (required by
    ``annotate``), ``title`` and ``status`` (required by ``hypothesis``), and ``at_ms``
    (optional: when it happened, for an action recorded after the fact; None when the
    body has none, and the worker's clock dates it)."""
    if not isinstance(body, dict):
        raise CommandError('body must be a JSON object: {"action": ..., "by": ...}')
    unknown = sorted(set(body) - {"action", "by", "note", "title", "status", "at_ms"})
    if unknown:
        raise CommandError(f"unknown field {unknown[0]!r}")
    action = body.get("action")
    if type(action) is not str or action not in TRANSITIONS:
        raise CommandError(f"action must be one of {', '.join(ACTIONS)}")
    at_ms = body.get("at_ms")
    if at_ms is not None and (type(at_ms) is not int or not 0 <= at_ms < MAX_AT_MS):
        raise CommandError("at_ms must be epoch milliseconds, a non-negative integer")
    out: dict[str, Any] = {
        "action": action,
        "by": _text(body, "by", MAX_ACTOR, True),
        "note": _text(body, "note", MAX_NOTE, action == "annotate"),
        "title": _text(body, "title", MAX_TITLE, action == "hypothesis"),
        "status": None,
        "at_ms": at_ms,
    }
    status = body.get("status")
    if action == "hypothesis":
        if status not in HYPOTHESIS_STATUSES:
            raise CommandError(f"status must be one of {', '.join(HYPOTHESIS_STATUSES)}")
        out["status"] = status
    elif status is not None:
        raise CommandError("status belongs to a hypothesis")
    elif out["title"] is not None:
        raise CommandError("title belongs to a hypothesis")
    return out


def action_id(incident_id: str, key: str | None, fields: dict[str, Any], seq: int) -> str:
    """``act_`` + 16 hex of sha256: of the incident and the client's Idempotency-Key when
    there is one (a retry with the same key is the same action), else of the incident,
    the sequence it was asked at and the request's fields (a retry before the incident
    changed is the same action)."""
    if key is not None:
        material = orjson.dumps(["key", incident_id, key])
    else:
        material = orjson.dumps(["body", incident_id, seq, fields],
                                option=orjson.OPT_SORT_KEYS)
    return "act_" + hashlib.sha256(material).hexdigest()[:16]


def decode_command(data: bytes) -> Command:
    """A command record's value, checked as the API checks a request (CommandError)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict) or type(raw.get("v")) is not int \
            or raw["v"] != COMMAND_VERSION:
        raise CommandError(f"not an action command of version {COMMAND_VERSION}")
    fields = request_fields({"action": raw.get("action"), "by": raw.get("actor"),
                             "note": raw.get("note"), "title": raw.get("title"),
                             "status": raw.get("hypothesis_status")})
    for name in ("action_id", "incident_id", "service", "env"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise CommandError(f"{name} must be a non-empty string")
    at_ms = raw.get("at_ms")
    if type(at_ms) is not int or not 0 <= at_ms < MAX_AT_MS:
        raise CommandError("at_ms must be a non-negative integer")
    return Command(raw["action_id"], raw["incident_id"], str(fields["action"]),
                   str(fields["by"]), at_ms, raw["service"], raw["env"], fields["note"],
                   fields["title"], fields["status"])
