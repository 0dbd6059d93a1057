"""The timelines a partition's detector draws (ADR 0019): its open incidents', and its
resolved ones' until their window after resolution is over.

Drawing copies the family's and the step's absolute bucket counts into a timeline, so
drawing again only brings it up to date; the detector draws when it publishes a change,
before it trims buckets, and when a timeline completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tocsin.processors.family import Family
from tocsin.processors.timeline import Timeline, TimelineConfig


class IncidentTimelines:
    """Timelines by incident id, and the ids of each service's that await completion."""

    def __init__(self, config: TimelineConfig, bucket_ms: int) -> None:
        self.config = config
        self.bucket_ms = bucket_ms
        self.drawn: dict[str, tuple[Family, Timeline]] = {}
        self.due: dict[str, set[str]] = {}  # service -> ids resolved, not complete yet

    def start(self, family: Family, incident_id: str, since_ms: int) -> None:
        self.drawn[incident_id] = (family, Timeline.start(since_ms, self.config,
                                                          self.bucket_ms))

    def draw(self, incident_id: str, clock_ms: int, errors: Mapping[int, int] | None,
             cells: Mapping[int, list[Any]] | None) -> Timeline | None:
        """Bring a timeline up to ``clock_ms`` from the family's error buckets and the
        step's cells ([requests, errors, generation, duration histogram])."""
        drawn = self.drawn.get(incident_id)
        if drawn is None:
            return None
        timeline = drawn[1]
        timeline.advance(clock_ms // self.bucket_ms)
        if errors is not None:
            for index, count in errors.items():
                timeline.put_errors(index, count)
        if cells is not None:
            for index, cell in cells.items():
                timeline.put_step(index, cell[0], cell[3])
        timeline.settle()
        return timeline

    def resolved(self, incident_id: str, at_ms: int) -> bool:
        """The incident resolved: its timeline ends ``after_ms`` later. Whether it has one."""
        drawn = self.drawn.get(incident_id)
        if drawn is None:
            return False
        family, timeline = drawn
        timeline.resolve(at_ms)
        self.due.setdefault(family.service, set()).add(incident_id)
        return True

    def reopened(self, family: Family, incident_id: str, at_ms: int) -> None:
        """A person reopened: its timeline goes on, or (complete already) a new one starts
        from the reopening."""
        drawn = self.drawn.get(incident_id)
        if drawn is None:
            self.start(family, incident_id, at_ms)
            return
        drawn[1].reopen()
        due = self.due.get(family.service)
        if due is not None:
            due.discard(incident_id)
            if not due:
                del self.due[family.service]

    def complete(self, service: str, t_ms: int) -> list[tuple[str, Family, int]]:
        """The service's timelines whose last bucket is over at ``t_ms``, in id order:
        (incident id, family, the time it completed). The caller draws each one last with
        :meth:`draw`, then :meth:`forget` s it."""
        due = self.due.get(service)
        if due is None:
            return []
        out = []
        for incident_id in sorted(due):
            family, timeline = self.drawn[incident_id]
            due_ms = timeline.due_ms
            if due_ms is not None and t_ms >= due_ms:
                out.append((incident_id, family, due_ms))
        return out

    def forget(self, incident_id: str) -> None:
        family, _ = self.drawn.pop(incident_id)
        due = self.due.get(family.service)
        if due is not None:
            due.discard(incident_id)
            if not due:
                del self.due[family.service]

    def to_list(self) -> list[Any]:
        return [[incident_id, *family, timeline.to_list()]
                for incident_id, (family, timeline) in sorted(self.drawn.items())]

    def restore(self, raw: list[Any]) -> None:
        for incident_id, env, service, step, code, state in raw:
            timeline = Timeline.from_list(state, self.config, self.bucket_ms)
            self.drawn[incident_id] = (Family(env, service, step, code), timeline)
            if timeline.end is not None:
                self.due.setdefault(service, set()).add(incident_id)
