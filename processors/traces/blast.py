"""Blast radius of an incident, accumulated from its failing traces (ADR 0012).

:func:`summarize` reduces a closed trace to what the accumulators need; a
:class:`BlastRadius` (one per incident or family, the caller keys them) adds the summaries
of the failing traces routed to it. Everything it keeps is bounded: distinct users go
through :class:`~tocsin.processors.traces.sketch.DistinctCounter`, counted names (services,
families, origins) are capped at ``MAX_KEYS`` distinct keys each, samples at five.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tocsin.processors.classify import TraceFacts
from tocsin.processors.family import family_of
from tocsin.processors.otlp import wide_events
from tocsin.processors.traces.assembler import ClosedTrace
from tocsin.processors.traces.propagation import MISSING, Propagation, propagation
from tocsin.processors.traces.sketch import EXACT_LIMIT, DistinctCounter

SNAPSHOT_VERSION = 2  # 2: the service's failing dependencies
TOP = 5  # top services / families / origins shown
SAMPLES = 5  # sample traces: the smallest sha256(trace id)
MAX_KEYS = 1_000  # distinct names counted per kind; later new names are counted as overflow


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What blast radius and propagation read of one closed trace."""

    trace_id: str
    failing: bool
    complete: bool
    dropped_spans: int
    users: tuple[str, ...]  # distinct user ids of its spans, sorted
    services: tuple[str, ...]  # services with a failing span, sorted
    families: tuple[str, ...]  # keys of its failing entry spans' families, sorted
    propagation: Propagation | None


def summarize(trace: ClosedTrace) -> TraceSummary:
    families = {f.key for f in (family_of(e) for e in wide_events(trace.spans)) if f}
    return TraceSummary(
        trace_id=trace.trace_id,
        failing=trace.failing,
        complete=trace.complete,
        dropped_spans=trace.dropped_spans,
        users=tuple(sorted({s.user_id for s in trace.spans if s.user_id is not None})),
        services=tuple(sorted({s.service for s in trace.spans if s.error})),
        families=tuple(sorted(families)),
        propagation=propagation(trace),
    )


def trace_hash(trace_id: str) -> str:
    return hashlib.sha256(trace_id.encode()).hexdigest()


class BoundedCounts:
    """Counts per name, at most ``MAX_KEYS`` names; a new name beyond is only counted in
    ``overflowed``, so the top names stay exact unless one of them came late."""

    __slots__ = ("counts", "overflowed")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.overflowed = 0

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name in self.counts:
                self.counts[name] += 1
            elif len(self.counts) < MAX_KEYS:
                self.counts[name] = 1
            else:
                self.overflowed += 1

    def top(self, n: int = TOP) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class BlastRadius:
    """How far the failure behind one incident spread, from the failing traces given."""

    def __init__(self, key: str, service: str | None = None) -> None:
        self.key = key
        self.service = service  # the incident's service: whose failing dependency to name
        self.affected_requests = 0
        self.incomplete_traces = 0
        self.dropped_spans = 0
        self.users = DistinctCounter(EXACT_LIMIT)
        self.services = BoundedCounts()
        self.families = BoundedCounts()
        self.origins = BoundedCounts()  # "service\tstep" of each trace's origin
        self.samples: list[tuple[str, str]] = []  # (sha256, trace id), ascending
        self.propagation: Propagation | None = None  # of the best sample: ok, smallest hash
        self._propagation_rank: tuple[bool, str] | None = None
        self.traced = 0  # failing traces with a propagation
        # Per trace, the dependency where ``service``'s failure started (classifier
        # evidence, ADR 0008) and, per dependency, its smallest-hash trace to cite.
        self.dependencies = BoundedCounts()
        self.dependency_samples: dict[str, tuple[str, str]] = {}

    def add(self, summary: TraceSummary) -> bool:
        """Count one failing trace; a trace that did not fail is ignored (False)."""
        if not summary.failing:
            return False
        self.affected_requests += 1
        self.incomplete_traces += not summary.complete
        self.dropped_spans += summary.dropped_spans
        for user in summary.users:
            self.users.add(user)
        self.services.add(summary.services)
        self.families.add(summary.families)
        digest = trace_hash(summary.trace_id)
        entry = (digest, summary.trace_id)
        if entry not in self.samples and (len(self.samples) < SAMPLES
                                          or entry < self.samples[-1]):
            bisect.insort(self.samples, entry)
            del self.samples[SAMPLES:]
        p = summary.propagation
        if p is not None:
            self.traced += 1
            self.origins.add([f"{p.origin.service}\t{p.origin.step}"])
            dependency = p.dependency_of(self.service) if self.service else None
            if dependency is not None:
                self.dependencies.add([dependency])
                best = self.dependency_samples.get(dependency)
                if dependency in self.dependencies.counts and (best is None or entry < best):
                    self.dependency_samples[dependency] = entry
            rank = (p.capture != "ok", digest)
            if self._propagation_rank is None or rank < self._propagation_rank:
                self.propagation, self._propagation_rank = p, rank
        return True

    def trace_facts(self) -> TraceFacts | None:
        """The dependency most failing traces name for the service (ties: the smaller
        name), with its support, for the classifier; None when no trace names one."""
        top = self.dependencies.top(1)
        if not top:
            return None
        name, traces = top[0]
        return TraceFacts(name, traces, self.traced, self.dependency_samples[name][1])

    @property
    def capture(self) -> str:
        if not self.affected_requests:
            return "missing"
        return "partial" if self.incomplete_traces or self.dropped_spans else "ok"

    def to_dict(self) -> dict[str, Any]:
        """Shaped for the report's ``snapshots.blast``; counts are None, not zero, when
        no span data exists: nothing is claimed without evidence."""
        if not self.affected_requests:
            return {"capture": "missing", "affected_requests": None, "distinct_users": None,
                    "users_estimated": False, "affected_services": [], "top_services": [],
                    "top_families": [], "sample_traces": [], "incomplete_traces": 0}
        return {
            "capture": self.capture,
            "affected_requests": self.affected_requests,
            "distinct_users": self.users.count(),
            "users_estimated": self.users.estimated,
            "affected_services": sorted(self.services.counts),
            "top_services": [{"service": k, "requests": n} for k, n in self.services.top()],
            "top_families": [{"family": k, "requests": n} for k, n in self.families.top()],
            "sample_traces": [tid for _, tid in self.samples],
            "incomplete_traces": self.incomplete_traces,
        }

    def propagation_dict(self) -> dict[str, Any]:
        """The report's ``snapshots.propagation``: the propagation of the sample trace (a
        complete one when there is one, then the smallest sha256 of its id) and how many
        failing traces named each origin."""
        if self.propagation is None:
            return dict(MISSING, origins=[])
        origins = [{"service": k.split("\t", 1)[0], "step": k.split("\t", 1)[1],
                    "traces": n} for k, n in self.origins.top()]
        return dict(self.propagation.to_dict(), origins=origins)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state; :meth:`restore` of it gives an equal accumulator."""
        return {
            "v": SNAPSHOT_VERSION, "key": self.key, "service": self.service,
            "counts": [self.affected_requests, self.incomplete_traces, self.dropped_spans,
                       self.traced],
            "users": self.users.snapshot(),
            "named": [[sorted(c.counts.items()), c.overflowed]
                      for c in (self.services, self.families, self.origins,
                                self.dependencies)],
            "dependency_samples": sorted([d, t] for d, (_, t) in
                                         self.dependency_samples.items()),
            "samples": [tid for _, tid in self.samples],
            "propagation": self.propagation.to_dict() if self.propagation else None,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> BlastRadius:
        if snap.get("v") != SNAPSHOT_VERSION:
            raise ValueError("blast radius checkpoint of another snapshot version")
        blast = cls(snap["key"], snap["service"])
        blast.affected_requests, blast.incomplete_traces, blast.dropped_spans, \
            blast.traced = snap["counts"]
        blast.users = DistinctCounter.restore(snap["users"], EXACT_LIMIT)
        for counts, (items, overflowed) in zip(
                (blast.services, blast.families, blast.origins, blast.dependencies),
                snap["named"], strict=True):
            counts.counts = {k: int(n) for k, n in items}
            counts.overflowed = overflowed
        blast.samples = sorted((trace_hash(t), t) for t in snap["samples"])
        blast.dependency_samples = {d: (trace_hash(t), t)
                                    for d, t in snap["dependency_samples"]}
        if snap["propagation"] is not None:
            p = Propagation.from_dict(snap["propagation"])
            blast.propagation = p
            blast._propagation_rank = (p.capture != "ok", trace_hash(p.trace_id))
        return blast
