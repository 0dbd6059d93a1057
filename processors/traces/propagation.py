"""Propagation: where the failure of one trace started and the path it took (ADR 0012).

The origin of a failing trace is the deepest error span whose children did not fail;
ties go to the earliest start, then the smallest span id. Depth is counted from the root.
In an incomplete trace a span whose parent is missing is placed at the least depth it
can have (one below a present root's child, or one below a missing root): a lower bound,
never an invented link. Such a trace's propagation has capture ``partial``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tocsin.processors.otlp import Span, is_entry, step_of
from tocsin.processors.traces.assembler import ClosedTrace

Capture = Literal["ok", "partial", "missing"]
MISSING: dict[str, Any] = {"capture": "missing", "origin": None, "path": [],
                           "sample_trace": None}


@dataclass(frozen=True, slots=True)
class Hop:
    """One span on the causal path. A gap (a parent that never arrived) has only its
    span id; its service, step and outcome are unknown, so they are None."""

    service: str | None
    step: str | None
    span_id: str
    error: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "step": self.step, "span_id": self.span_id,
                "error": self.error}

    @classmethod
    def of(cls, span: Span) -> Hop:
        return cls(span.service, step_of(span), span.span_id, span.error)


@dataclass(frozen=True, slots=True)
class Origin:
    service: str
    step: str
    span_id: str
    kind: str
    error_code: str | None
    downstream: str | None  # the peer an origin CLIENT/PRODUCER span called

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "step": self.step, "span_id": self.span_id,
                "kind": self.kind, "error_code": self.error_code,
                "downstream": self.downstream}


@dataclass(frozen=True, slots=True)
class Propagation:
    """The propagation of one failing trace. ``path`` runs root → origin through the entry
    spans (where the request entered each service) and ends at the origin."""

    trace_id: str
    capture: Capture  # ok | partial
    origin: Origin
    path: tuple[Hop, ...]

    def downstream_of(self, service: str) -> str | None:
        """The next service on the path after ``service``'s last hop: the failing
        dependency it called, as evidence for the classifier (ADR 0008)."""
        services = [h.service for h in self.path]
        for i in range(len(services) - 1, -1, -1):
            if services[i] == service:
                return next((s for s in services[i + 1:] if s is not None and s != service),
                            None)
        return None

    def dependency_of(self, service: str) -> str | None:
        """Where ``service``'s failure started, by this trace, when not in ``service``
        itself: the next service on the path after it, or, when ``service`` holds the
        origin, the peer its failing call named (an uninstrumented database or API).
        None when the failure started in ``service``'s own code or it is not on the path."""
        after = self.downstream_of(service)
        if after is not None:
            return after
        peer = self.origin.downstream
        if self.origin.service == service and peer is not None and peer != service:
            return peer
        return None

    def to_dict(self) -> dict[str, Any]:
        """Shaped for the report's ``snapshots.propagation``."""
        return {"capture": self.capture, "origin": self.origin.to_dict(),
                "path": [h.to_dict() for h in self.path], "sample_trace": self.trace_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Propagation:
        return cls(data["sample_trace"], data["capture"], Origin(**data["origin"]),
                   tuple(Hop(**h) for h in data["path"]))


def propagation(trace: ClosedTrace) -> Propagation | None:
    """The trace's propagation, or None when no span of it failed."""
    errors = [s for s in trace.spans if s.error]
    if not errors:
        return None
    by_id = {s.span_id: s for s in trace.spans}
    failing_child = {s.parent_span_id for s in errors if s.parent_span_id is not None}
    has_root = any(s.parent_span_id is None for s in trace.spans)
    depths = _depths(trace.spans, by_id, 2 if has_root else 1)
    origin = min((s for s in errors if s.span_id not in failing_child),
                 key=lambda s: (-depths[s.span_id], s.start_ms, s.span_id), default=None)
    if origin is None:  # every error span has a failing child: a parent cycle
        origin = min(errors, key=lambda s: (s.start_ms, s.span_id))
    chain = _chain(origin, by_id)
    top = chain[0]
    path: list[Hop] = []
    if top.parent_span_id is not None:  # the chain stops at a parent that never arrived
        root = next((s for s in trace.spans if s.parent_span_id is None), None)
        if root is not None:
            path.append(Hop.of(root))
        path.append(Hop(None, None, top.parent_span_id, None))
    path += [Hop.of(s) for s in chain if is_entry(s) or s is origin]
    peer = origin.peer.service if origin.peer is not None else None
    return Propagation(
        trace.trace_id, "ok" if trace.complete else "partial",
        Origin(origin.service, step_of(origin), origin.span_id, origin.kind,
               origin.error_code, peer),
        tuple(path))


def _chain(span: Span, by_id: dict[str, Span]) -> list[Span]:
    """``span`` and its present ancestors, root first; stops at a missing parent or a
    cycle."""
    chain = [span]
    seen = {span.span_id}
    while (parent := by_id.get(chain[-1].parent_span_id or "")) is not None \
            and parent.span_id not in seen:
        chain.append(parent)
        seen.add(parent.span_id)
    chain.reverse()
    return chain


def _depths(spans: tuple[Span, ...], by_id: dict[str, Span], orphan_depth: int
            ) -> dict[str, int]:
    """Depth of every span from the root; a span whose parent is missing (or that closes
    a parent cycle) gets ``orphan_depth``, the least depth it can have."""
    depths: dict[str, int] = {}
    for span in spans:
        chain: list[Span] = []
        on_chain: set[str] = set()
        current = span
        while current.span_id not in depths:
            if current.span_id in on_chain:
                depths[current.span_id] = orphan_depth
                break
            on_chain.add(current.span_id)
            chain.append(current)
            parent_id = current.parent_span_id
            parent = by_id.get(parent_id) if parent_id is not None else None
            if parent is None:
                depths[current.span_id] = 0 if parent_id is None else orphan_depth
                break
            current = parent
        for s in reversed(chain):  # each one's parent is known by now
            if s.span_id not in depths:
                depths[s.span_id] = depths[s.parent_span_id or ""] + 1
    return depths
