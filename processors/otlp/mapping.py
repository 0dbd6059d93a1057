"""Normalized spans into wide events (``wide_event.v1`` dicts), so that the family, window
and incident logic that counts SDK wide events counts traced requests the same way
(ADR 0011).

One wide event per *entry span*: where a request enters a service (a SERVER or CONSUMER
span) or where a service's local work starts (a span without a parent, or whose parent is
remote). A request handled by a service is one request there, however many CLIENT and
INTERNAL spans it made; counting those too would count one failed request as several
errors in several families. They are not lost: the earliest failing CLIENT/PRODUCER span
under a failing entry names the entry's ``downstream`` (what the reference calls the
failing step's dependency), and trace assembly keeps every span for propagation.

The family is always the entry's own ``(env, service, step, error_code)``: it does not
depend on which other spans happened to arrive in the same payload. Only ``downstream``
(evidence, not identity) does, since the client span may come in another record; the
trace assembler fills it in later from the whole trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tocsin.processors.otlp.spans import Peer, Span

DEFAULT_ENV = "prod"  # ADR 0001's default, as for wide events sent without an env
ENTRY_KINDS = frozenset({"server", "consumer"})
CALL_KINDS = frozenset({"client", "producer"})

SpanKey = tuple[str, str]  # (trace_id, span_id)


def is_entry(span: Span) -> bool:
    """Where a request enters the span's service: SERVER/CONSUMER, a root, or a span whose
    parent is in another process (span flags say so; SDKs since 2024 set them)."""
    return span.kind in ENTRY_KINDS or span.parent_span_id is None or \
        span.parent_is_remote is True


def step_of(span: Span) -> str:
    """``http.route`` with its method (``POST /api/charge``), else the span name. The route
    is the low-cardinality template (``/users/{id}``); the semconv span name of an HTTP
    server span is the same text, but instrumentations without a route name spans freely."""
    if span.http_route is not None:
        method = span.http_method
        if method == "_OTHER":  # semconv: an unknown method; the span name uses HTTP then
            method = "HTTP"
        return f"{method} {span.http_route}" if method else span.http_route
    return span.name or "(unnamed span)"


def to_wide_event(span: Span, downstream: Peer | None = None) -> dict[str, Any]:
    """One span as a wide event. ``event_time_ms`` is the span's *end*: the outcome is
    known then, a span is exported only after it ends (so end time tracks arrival order
    best against the windows' grace), and an SDK wide event is emitted at the same moment.
    ``downstream`` is kept only when the span failed: it names the failing dependency."""
    attributes: dict[str, str] = {"span.kind": span.kind}
    if span.scope is not None:
        attributes["otel.scope.name"] = span.scope
    if span.status != "unset":
        attributes["otel.status_code"] = span.status.upper()
    if span.http_status is not None:
        attributes["http.response.status_code"] = str(span.http_status)
    if span.grpc_status is not None:
        attributes["rpc.grpc.status_code"] = str(span.grpc_status)
    if span.exception_type is not None:
        attributes["exception.type"] = span.exception_type
    return {
        "event_time_ms": span.end_ms,
        "service": span.service,
        "step": step_of(span),
        "env": span.env or DEFAULT_ENV,
        "status": "error" if span.error else "ok",
        "error_code": span.error_code,
        "error_message": span.error_message,
        "duration_ms": span.duration_ms,
        "service_version": span.service_version,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "user_id": span.user_id,
        "request_id": None,
        "downstream": downstream.to_dict() if downstream is not None and span.error
        else None,
        "steps": [],
        "attributes": attributes,
    }


def entry_of(span: Span, by_key: Mapping[SpanKey, Span]) -> Span | None:
    """The entry span a span belongs to, following local parents among ``by_key``; None
    when the chain leaves the known spans before reaching one (or loops)."""
    current = span
    for _ in range(len(by_key) + 1):
        if is_entry(current):
            return current
        parent = by_key.get((current.trace_id, current.parent_span_id or ""))
        if parent is None:
            return None
        current = parent
    return None


def failing_peers(spans: Iterable[Span]) -> dict[SpanKey, Peer]:
    """For each entry span among ``spans``: the peer of the earliest failing CLIENT or
    PRODUCER span under it (start time, then span id). The peer comes from the client
    span's attributes, else from the service of its SERVER/CONSUMER child when that child
    is among ``spans`` (the callee's own ``service.name``)."""
    spans = list(spans)
    if not any(s.error and s.kind in CALL_KINDS for s in spans):
        return {}  # most payloads: nothing failed, nothing to index
    by_key = {(s.trace_id, s.span_id): s for s in spans}
    callee: dict[SpanKey, str] = {}
    for s in spans:
        if s.kind in ENTRY_KINDS and s.parent_span_id is not None:
            callee.setdefault((s.trace_id, s.parent_span_id), s.service)
    first: dict[SpanKey, Span] = {}
    for s in spans:
        if not s.error or s.kind not in CALL_KINDS:
            continue
        entry = entry_of(s, by_key)
        if entry is None:
            continue
        key = (entry.trace_id, entry.span_id)
        seen = first.get(key)
        if seen is None or (s.start_ms, s.span_id) < (seen.start_ms, seen.span_id):
            first[key] = s
    peers: dict[SpanKey, Peer] = {}
    for key, s in first.items():
        peer = s.peer
        if peer is None and (s.trace_id, s.span_id) in callee:
            peer = Peer(callee[(s.trace_id, s.span_id)])
        if peer is not None:
            peers[key] = peer
    return peers


def entries(spans: Iterable[Span]) -> list[tuple[Span, Peer | None]]:
    """The entry spans of a collection of spans, in order, each with its failing peer (as
    :func:`wide_events` pairs them): ``to_wide_event(*pair)`` is its wide event."""
    spans = list(spans)
    peers = failing_peers(spans)
    return [(s, peers.get((s.trace_id, s.span_id))) for s in spans if is_entry(s)]


def detected_event(span: Span, downstream: Peer | None = None) -> dict[str, Any]:
    """The fields of ``to_wide_event(span, downstream)`` that detection reads, as a span
    event record carries them and reads them back (what ``record.decode_span_event`` gives
    for the record of that wide event, and the same bytes: unit-tested): the span intake
    encodes and hands off this, and builds the whole wide event only for the rare one a
    record cannot carry."""
    peer = downstream if downstream is not None and span.error else None
    return {
        "event_time_ms": span.end_ms, "service": span.service,
        "env": span.env or DEFAULT_ENV, "step": step_of(span),
        "status": "error" if span.error else "ok", "service_version": span.service_version,
        "error_code": span.error_code, "trace_id": span.trace_id, "steps": [],
        "duration_ms": span.duration_ms,
        "downstream": None if peer is None else
        {"service": peer.service, "endpoint": peer.endpoint, "kind": peer.kind},
    }


def wide_events(spans: Iterable[Span]) -> list[dict[str, Any]]:
    """The wide events of a collection of spans (one payload, or an assembled trace), in
    the spans' order: one per entry span, with ``downstream`` resolved within the
    collection. Same spans in the same order, same events."""
    spans = list(spans)
    peers = failing_peers(spans)
    return [to_wide_event(s, peers.get((s.trace_id, s.span_id)))
            for s in spans if is_entry(s)]
