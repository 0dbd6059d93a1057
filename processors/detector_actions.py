"""Operator actions on a partition's detector (ADR 0016): acknowledge, mitigate, resolve,
reopen, notes, applied where they lie in the log among the family's events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tocsin.processors.actions import TRANSITIONS as ACTION_TRANSITIONS
from tocsin.processors.actions import Command, Refusal, check, next_phase
from tocsin.processors.detector_state import FamilyState
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import ACTIONS_KEPT, IncidentEvent, Kind, OpenIncident, event
from tocsin.processors.windows import bucket_index

if TYPE_CHECKING:
    from tocsin.processors.detector import PartitionDetector

# Resolved incidents a partition keeps for people's later actions (reopen, notes): for a
# week of its event time (and at most MAX_CLOSED of them, in the detector).
CLOSED_KEPT_MS = 7 * 24 * 3_600_000


def act(det: PartitionDetector, command: Command) -> list[IncidentEvent] | Refusal:
    """Apply an operator action to the incident it names (ADR 0016): the lifecycle
    event it publishes (none when this action was applied before), or why not.

    Read in log order among the family's events, so a replay decides it the same way.
    A person's resolve closes the incident for good; the family opens a new one only
    once its window has stopped qualifying. A reopened incident is held open: the
    machine no longer recovers or resolves it, and its family's errors count on it."""
    found = _incident(det, command)
    if isinstance(found, Refusal):
        return found
    family, incident, fs = found
    if command.action_id in incident.actions:
        det.counters.actions_repeated += 1
        return []
    refusal = check(command.action, incident.phase)
    if refusal is not None:
        return refusal
    if command.action == "reopen":
        if fs is None:  # the family was forgotten since: it starts again
            fs = det.new_family(family)
            if fs is None:
                return Refusal("detector.max_families",
                               "the partition tracks as many families as it may")
        if fs.incident is not None:
            return Refusal("lifecycle.one_open_per_family",
                           f"{fs.incident.incident_id} is open for this family: a "
                           "family has one open incident at a time")
    incident.phase = next_phase(command.action, incident.phase)
    incident.actions.append(command.action_id)
    del incident.actions[:-ACTIONS_KEPT]
    count, base, last_error_ms = 0, 0.0, incident.onset_ms
    if fs is not None and fs.incident is incident:  # open: the family's numbers now
        clock = det.clocks.get(family.service, command.at_ms)
        _, count, base = det.evaluate(fs, bucket_index(clock, det.config.bucket_ms))
        last_error_ms = fs.last_error_ms
    elif incident.closed_at is not None:  # resolved: its numbers when it resolved
        last_error_ms, count, base = incident.closed_at
    timeline = None
    if command.action == "resolve":
        if fs is not None and fs.incident is incident:
            det.timeline_resolved(incident.incident_id, command.at_ms)
            timeline = det.view(incident.incident_id)
        incident.status = "resolved"
        incident.status_since_ms = command.at_ms
        incident.held = False
        if fs is not None and fs.incident is incident:
            det.close(fs, incident, count, base)
            clock = det.clocks.get(family.service, command.at_ms)
            fs.armed = not det.holds(fs, bucket_index(clock, det.config.bucket_ms))
    elif command.action == "reopen":
        assert fs is not None
        del det.closed[incident.incident_id]
        incident.status = "active"
        incident.status_since_ms = command.at_ms
        incident.held = True
        incident.closed_at = None
        fs.incident = incident
        det.open_by_service.setdefault(family.service, set()).add(family)
        det.rewatch()
        clock = det.clocks.get(family.service, command.at_ms)
        _, count, base = det.evaluate(fs, bucket_index(clock, det.config.bucket_ms))
        last_error_ms = max(last_error_ms, fs.last_error_ms)
        det.timelines.reopened(family, incident.incident_id, command.at_ms)
        timeline = det.view(incident.incident_id)
    kind: Kind = ACTION_TRANSITIONS[command.action].kind  # type: ignore[assignment]
    return [event(incident, family, kind, command.at_ms, count, base, last_error_ms,
                  action_id=command.action_id, actor=command.actor, note=command.note,
                  title=command.title, hypothesis_status=command.hypothesis_status,
                  timeline=timeline)]

def _incident(det: PartitionDetector, command: Command
              ) -> tuple[Family, OpenIncident, FamilyState | None] | Refusal:
    """The incident a command names, open or kept resolved, with its family's state
    (None when the family was forgotten meanwhile)."""
    for family in sorted(det.open_by_service.get(command.service, ())):
        fs = det.families[family]
        if fs.incident is not None and fs.incident.incident_id == command.incident_id:
            return _same_env(command, family, fs.incident, fs)
    kept = det.closed.get(command.incident_id)
    if kept is None:
        return Refusal("incident.unknown",
                       f"{command.incident_id} is not held by the detector of "
                       f"{command.service}: unknown, or resolved more than "
                       f"{CLOSED_KEPT_MS // 3_600_000} h of event time ago")
    family, incident = kept
    if family.service != command.service:
        return Refusal("incident.service", f"{command.incident_id} belongs to "
                                           f"{family.service}, not {command.service}")
    return _same_env(command, family, incident, det.families.get(family))

def _same_env(command: Command, family: Family, incident: OpenIncident,
              fs: FamilyState | None
              ) -> tuple[Family, OpenIncident, FamilyState | None] | Refusal:
    if family.env != command.env:
        return Refusal("incident.env", f"{command.incident_id} belongs to env "
                                       f"{family.env}, not {command.env}")
    return family, incident, fs

