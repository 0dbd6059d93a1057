"""``POST /v1/incidents/{id}/actions``: an operator action, from request to decision (ADR 0016).

The worker that keeps the DuckDB projection takes the request. It checks the body (400),
finds the incident on the projection (404) and checks the transition against the
incident's phase there (409), so the common refusals answer at once. It then writes the
action's command to the events topic, keyed by the incident's service, and waits for the
decision the detector makes where the command lies in the log: the applied action's
lifecycle event, or the dead letter that names the rule it broke (a race the projection
had not seen yet: 409 all the same). Both come back through the projection, which tells
this desk as it writes them; an answer that takes longer than ``timeout_s`` is 202 with
the action's id (it is on the log, and will be decided).

A retried request is the same action (its id is the Idempotency-Key's, or the request's
own at the incident's sequence, :func:`~tocsin.processors.actions.action_id`): one already
applied answers 200 with the incident as it is, and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tocsin.processors.actions import (
    Command,
    CommandError,
    Refusal,
    action_id,
    check,
    request_fields,
)
from tocsin.streams.kafka.headers import ACTION

log = logging.getLogger("tocsin.actions")

Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[Any]]
FUTURE_MS = 60_000  # how far past the worker's clock a given at_ms may lie
REFUSED = re.compile(r"^action (act_[0-9a-f]{16}) refused: (\S+): (.*)$", re.S)
INCIDENT_FIELDS = ("incident_id", "env", "service", "step", "error_code", "family",
                   "status", "phase", "seq", "onset_ms", "updated_ms", "resolved_ms",
                   "peak_count", "error_count", "acknowledged_by", "acknowledged_ms",
                   "mitigated_by", "mitigated_ms", "resolved_by", "mtta_ms", "mttr_ms")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


class Lookup(Protocol):
    """What the desk reads of the projection (the DuckDB sink), by key."""

    def incident(self, incident_id: str) -> dict[str, Any] | None: ...

    def action(self, action_id: str) -> dict[str, Any] | None: ...


class ActionDesk:
    """Takes operator actions, writes their commands, answers with their decisions."""

    def __init__(self, lookup: Lookup, send: Send, events_topic: str, *,
                 timeout_s: float = 10.0, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.lookup = lookup
        self.send = send
        self.events_topic = events_topic
        self.timeout_s = timeout_s
        self.clock = clock
        self._waiting: dict[str, asyncio.Future[Answer]] = {}

    async def submit(self, incident_id: str, body: Any, key: str | None) -> Answer:
        try:
            fields = request_fields(body)
        except CommandError as exc:
            return Answer(400, {"error": str(exc)})
        if key is not None and (len(key) > 200 or not key.isprintable()):
            return Answer(400, {"error": "Idempotency-Key must be printable, at most 200 "
                                         "characters"})
        incident = await asyncio.to_thread(self.lookup.incident, incident_id)
        if incident is None:
            return Answer(404, {"error": f"no incident {incident_id}"})
        act_id = action_id(incident_id, key, fields, int(incident["seq"]))
        done = await asyncio.to_thread(self.lookup.action, act_id)
        if done is not None:  # a retry of an applied action: the incident as it is now
            return Answer(200, {**_state(incident), "action_id": act_id, "repeated": True})
        refusal = check(str(fields["action"]), str(incident.get("phase") or "triggered"))
        if refusal is not None:
            return _refused(incident_id, refusal)
        now = self.clock()
        at_ms = fields["at_ms"] if fields["at_ms"] is not None else now
        if at_ms > now + FUTURE_MS:
            return Answer(400, {"error": f"at_ms is in the future (more than "
                                         f"{FUTURE_MS // 1000} s past the worker's clock)"})
        command = Command(act_id, incident_id, str(fields["action"]), str(fields["by"]),
                          at_ms, incident["service"], incident["env"],
                          fields["note"], fields["title"], fields["status"])
        waiter = self._waiting.get(act_id)
        if waiter is None or waiter.done():
            waiter = self._waiting[act_id] = asyncio.get_running_loop().create_future()
        try:
            await self.send(self.events_topic, command.to_bytes(),
                            incident["service"].encode(), [(ACTION, b"1")])
        except Exception as exc:  # noqa: BLE001 - the broker's refusal, whatever its class
            self._waiting.pop(act_id, None)
            log.warning("action %s not written: %s", act_id, exc)
            return Answer(503, {"error": f"the action could not be written to the log "
                                         f"({type(exc).__name__}); try again"})
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.timeout_s)
        except TimeoutError:
            return Answer(202, {"incident_id": incident_id, "action_id": act_id,
                                "pending": True, "status": incident["status"],
                                "phase": incident.get("phase") or "triggered",
                                "detail": "written to the log; not decided yet"})
        finally:
            if waiter.done():
                self._waiting.pop(act_id, None)

    def written(self, events: Sequence[Mapping[str, Any]],
                letters: Sequence[Mapping[str, Any]]) -> None:
        """The projection wrote these lifecycle events and dead letters: answer whoever
        waits for their actions. Called on the projection's loop, after its commit."""
        if not self._waiting:
            return
        for event in events:
            waiter = self._waiting.pop(str(event.get("action_id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(Answer(200, {
                    **{k: event.get(k) for k in ("incident_id", "status", "phase", "seq")},
                    "action_id": event["action_id"], "kind": event["kind"],
                    "by": event.get("actor"), "at_ms": event["at_ms"]}))
        for letter in letters:
            found = REFUSED.match(str(letter.get("reason") or ""))
            waiter = self._waiting.pop(found.group(1), None) if found else None
            if found and waiter is not None and not waiter.done():
                waiter.set_result(_refused(None, Refusal(found.group(2), found.group(3))))


def _state(incident: Mapping[str, Any]) -> dict[str, Any]:
    return {k: incident.get(k) for k in INCIDENT_FIELDS}


def _refused(incident_id: str | None, refusal: Refusal) -> Answer:
    body: dict[str, Any] = {"error": refusal.message, "rule": refusal.rule}
    if incident_id is not None:
        body["incident_id"] = incident_id
    return Answer(409, body)
