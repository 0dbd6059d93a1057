"""Trace assembly: spans grouped by trace id, closed by event-time inactivity (ADR 0012).

A :class:`TraceAssembler` is fed spans in log order with :meth:`TraceAssembler.add`; it
returns the traces that closed. Time is event time only: the assembler's watermark is the
largest span end seen, and a trace closes once the watermark passes its last span's end
plus ``idle_ms``. A replay of old spans therefore closes exactly as the live run did.

Memory is bounded by ``max_spans_per_trace`` times ``max_traces``; what does not fit is
dropped and counted, and the trace it belonged to is marked incomplete, never completed
by guesswork.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from tocsin.processors.otlp import Peer, Span
from tocsin.processors.otlp.spans import KINDS, STATUSES

SNAPSHOT_VERSION = 1
SPAN_FIELDS = [f.name for f in fields(Span)]  # a checkpoint names them: a change is refused
_PEER = SPAN_FIELDS.index("peer")


@dataclass(frozen=True, slots=True)
class ClosedTrace:
    """One assembled trace. ``spans`` are ordered by (start, span id), so the closed trace
    depends on which spans arrived, not on their arrival order. ``gaps`` says why the
    trace is incomplete (empty when ``complete``)."""

    trace_id: str
    spans: tuple[Span, ...]
    dropped_spans: int  # over max_spans_per_trace
    duplicate_spans: int  # same span id again (a Collector retry); ignored
    closed_early: bool  # evicted while max_traces were in flight
    gaps: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.gaps

    @property
    def failing(self) -> bool:
        return any(s.error for s in self.spans)

    @classmethod
    def close(cls, trace_id: str, spans: dict[str, Span], dropped: int, duplicates: int,
              early: bool) -> ClosedTrace:
        ordered = tuple(sorted(spans.values(), key=lambda s: (s.start_ms, s.span_id)))
        roots = sum(1 for s in ordered if s.parent_span_id is None)
        orphans = sum(1 for s in ordered
                      if s.parent_span_id is not None and s.parent_span_id not in spans)
        gaps: list[str] = []
        if dropped:
            gaps.append(f"{dropped} spans dropped over the per-trace cap")
        if early:
            gaps.append("closed early: too many traces in flight")
        if roots != 1:
            gaps.append(f"{roots} root spans")
        if orphans:
            gaps.append(f"{orphans} spans whose parent is missing")
        return cls(trace_id, ordered, dropped, duplicates, early, tuple(gaps))


@dataclass(slots=True)
class AssemblerCounters:
    """What the assembler dropped or cut short, for metrics; never silent."""

    spans_added: int = 0
    spans_dropped: int = 0  # over max_spans_per_trace
    duplicate_spans: int = 0
    late_spans_dropped: int = 0  # their trace had already closed by event time
    evicted_spans_dropped: int = 0  # their trace had been closed early
    traces_closed: int = 0
    traces_evicted: int = 0  # closed early, max_traces in flight
    traces_incomplete: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Open:
    spans: dict[str, Span] = field(default_factory=dict)  # by span id, arrival order
    last_end_ms: int = 0
    dropped: int = 0
    duplicates: int = 0


class TraceAssembler:
    """Open traces of one partition of span data. Not thread-safe; one owner."""

    def __init__(self, idle_ms: int = 30_000, max_spans_per_trace: int = 1_000,
                 max_traces: int = 10_000, external_watermark: bool = False) -> None:
        if idle_ms < 0 or max_spans_per_trace < 1 or max_traces < 1:
            raise ValueError("idle_ms >= 0, max_spans_per_trace >= 1, max_traces >= 1")
        self.idle_ms = idle_ms
        self.max_spans_per_trace = max_spans_per_trace
        self.max_traces = max_traces
        # With spans from several partitions, the caller knows better than the largest end
        # seen how far event time has surely come (the least of the partitions' marks): it
        # moves the watermark with flush(), and add() never does.
        self.external_watermark = external_watermark
        self.watermark_ms: int | None = None
        self.counters = AssemblerCounters()
        self._open: dict[str, _Open] = {}
        # (last_end_ms, trace_id) of open traces, min first; entries left behind when a
        # trace's last end moves are skipped when popped (lazy deletion).
        self._due: list[tuple[int, str]] = []
        # Ids of the last max_traces traces closed early, oldest first: their later spans
        # are dropped, or each would reopen a fragment that counts the request again.
        self._evicted: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def settings(self) -> list[int]:
        return [self.idle_ms, self.max_spans_per_trace, self.max_traces]

    def add(self, span: Span) -> list[ClosedTrace]:
        """Take one span; return the traces it closed, by (last end, trace id), those
        evicted to make room first."""
        out: list[ClosedTrace] = []
        wm = self.watermark_ms
        trace = self._open.get(span.trace_id)
        if trace is None:
            if wm is not None and span.end_ms + self.idle_ms < wm:
                # Its trace, if any, has closed already: a fragment of it would count the
                # request again as a trace of its own.
                self.counters.late_spans_dropped += 1
                return out
            if span.trace_id in self._evicted:
                self.counters.evicted_spans_dropped += 1
                return out
            while len(self._open) >= self.max_traces:
                self._close_next(out, early=True)
            trace = self._open[span.trace_id] = _Open(last_end_ms=span.end_ms)
            heapq.heappush(self._due, (span.end_ms, span.trace_id))
        self.counters.spans_added += 1
        if span.span_id in trace.spans:
            trace.duplicates += 1
            self.counters.duplicate_spans += 1
        elif len(trace.spans) >= self.max_spans_per_trace:
            trace.dropped += 1
            self.counters.spans_dropped += 1
        else:
            trace.spans[span.span_id] = span
        if span.end_ms > trace.last_end_ms:  # a dropped span is activity all the same
            trace.last_end_ms = span.end_ms
            heapq.heappush(self._due, (span.end_ms, span.trace_id))
        if not self.external_watermark and (wm is None or span.end_ms > wm):
            self.watermark_ms = span.end_ms
        self._close_due(out)
        return out

    def flush(self, watermark_ms: int) -> list[ClosedTrace]:
        """Move the watermark to ``watermark_ms`` (never back) and close what is due: for
        a partition that went quiet, the time its other partitions have reached."""
        if self.watermark_ms is None or watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        out: list[ClosedTrace] = []
        self._close_due(out)
        return out

    def close_all(self) -> list[ClosedTrace]:
        """Close every open trace (end of a finite replay), by (last end, trace id)."""
        out: list[ClosedTrace] = []
        while self._open:
            self._close_next(out, early=False)
        return out

    def _close_due(self, out: list[ClosedTrace]) -> None:
        if self.watermark_ms is None:
            return
        limit = self.watermark_ms - self.idle_ms
        due = self._due
        while due and due[0][0] < limit:
            last_end_ms, trace_id = due[0]
            trace = self._open.get(trace_id)
            if trace is None or trace.last_end_ms != last_end_ms:
                heapq.heappop(due)  # left behind by a later span of the trace
            else:
                self._close_next(out, early=False)

    def _close_next(self, out: list[ClosedTrace], early: bool) -> None:
        while True:
            last_end_ms, trace_id = heapq.heappop(self._due)
            trace = self._open.get(trace_id)
            if trace is not None and trace.last_end_ms == last_end_ms:
                break
        del self._open[trace_id]
        if early:
            self._evicted[trace_id] = None
            if len(self._evicted) > self.max_traces:
                del self._evicted[next(iter(self._evicted))]
        closed = ClosedTrace.close(trace_id, trace.spans, trace.dropped, trace.duplicates,
                                   early)
        self.counters.traces_closed += 1
        self.counters.traces_evicted += early
        self.counters.traces_incomplete += not closed.complete
        out.append(closed)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state; :meth:`restore` of it gives an equal assembler."""
        return {
            "v": SNAPSHOT_VERSION,
            "settings": self.settings(),
            "span_fields": SPAN_FIELDS,
            "watermark_ms": self.watermark_ms,
            "traces": [[tid, t.last_end_ms, t.dropped, t.duplicates,
                        [span_to_list(s) for s in t.spans.values()]]
                       for tid, t in sorted(self._open.items())],
            "evicted": list(self._evicted),
            "counters": self.counters.as_dict(),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], idle_ms: int = 30_000,
                max_spans_per_trace: int = 1_000, max_traces: int = 10_000
                ) -> TraceAssembler:
        asm = cls(idle_ms, max_spans_per_trace, max_traces)
        if (snap.get("v") != SNAPSHOT_VERSION or snap.get("settings") != asm.settings()
                or snap.get("span_fields") != SPAN_FIELDS):
            raise ValueError(
                "checkpoint was written by another snapshot version, assembler settings or"
                " span model; replay the input with a new state name instead of misreading"
                " it")
        asm.watermark_ms = snap["watermark_ms"]
        for tid, last_end_ms, dropped, duplicates, spans in snap["traces"]:
            restored = [span_from_list(s) for s in spans]
            asm._open[tid] = _Open({s.span_id: s for s in restored}, last_end_ms, dropped,
                                   duplicates)
            asm._due.append((last_end_ms, tid))
        heapq.heapify(asm._due)
        asm._evicted = dict.fromkeys(snap["evicted"])
        asm.counters = AssemblerCounters(**snap["counters"])
        return asm


_FIELDS_OF = attrgetter(*SPAN_FIELDS)


def span_to_list(span: Span) -> list[Any]:
    """A span as a JSON-able list, fields in :data:`SPAN_FIELDS` order (``astuple``
    deep-copies every value: 25 µs a span, 20 times this)."""
    values = list(_FIELDS_OF(span))
    if span.peer is not None:
        values[_PEER] = [span.peer.service, span.peer.endpoint, span.peer.kind]
    return values


def _at(names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(SPAN_FIELDS.index(n) for n in names)


_STR = _at(("trace_id", "span_id", "service", "name"))
_OPTIONAL_STR = _at(("parent_span_id", "env", "service_version", "scope", "http_method",
                     "http_route", "exception_type", "exception_message", "user_id",
                     "error_code"))
_INT = _at(("start_ms", "end_ms"))
_OPTIONAL_INT = _at(("http_status", "grpc_status"))
_DURATION, _KIND, _STATUS, _ERROR, _REMOTE = _at(
    ("duration_ms", "kind", "status", "error", "parent_is_remote"))
_KINDS, _STATUSES = frozenset(KINDS.values()), frozenset(STATUSES.values())


# Type signatures (the type of each field) already checked: most spans share a handful, so
# the per-field type checks run once per signature, not once per span. Bounded: past the
# cap a new signature is checked every time, never trusted unchecked.
_CHECKED: set[tuple[type, ...]] = set()
_CHECKED_MAX = 4096


def span_from_wire(values: Any) -> Span:
    """A span as the by-trace topic carries it, held to the types the assembler relies on
    (anything else written there raises ValueError, never a later TypeError)."""
    if type(values) is not list or len(values) != len(SPAN_FIELDS):
        raise ValueError(f"a span is a list of {len(SPAN_FIELDS)} fields")
    signature = tuple(map(type, values))
    if signature not in _CHECKED:
        _check_types(values)
        if len(_CHECKED) < _CHECKED_MAX:
            _CHECKED.add(signature)
    if values[_KIND] not in _KINDS or values[_STATUS] not in _STATUSES:
        raise ValueError("span field kind or status is not one of OTLP's")
    peer = values[_PEER]
    if peer is not None and not (1 <= len(peer) <= 3 and type(peer[0]) is str
                                 and all(v is None or type(v) is str for v in peer)):
        raise ValueError("span field peer must be a list of strings or null")
    return span_from_list(values)


def _check_types(values: list[Any]) -> None:
    """Each field's type, as :func:`span_from_wire` requires (ValueError naming the first
    field that is wrong)."""
    for i in _STR:
        if type(values[i]) is not str:
            raise ValueError(f"span field {SPAN_FIELDS[i]} must be a string")
    for i in _OPTIONAL_STR:
        if values[i] is not None and type(values[i]) is not str:
            raise ValueError(f"span field {SPAN_FIELDS[i]} must be a string or null")
    for i in _INT:
        if type(values[i]) is not int:
            raise ValueError(f"span field {SPAN_FIELDS[i]} must be an integer")
    for i in _OPTIONAL_INT:
        if values[i] is not None and type(values[i]) is not int:
            raise ValueError(f"span field {SPAN_FIELDS[i]} must be an integer or null")
    duration = values[_DURATION]
    if duration is not None and type(duration) is not int and type(duration) is not float:
        raise ValueError("span field duration_ms must be a number or null")
    if type(values[_KIND]) is not str or type(values[_STATUS]) is not str:
        raise ValueError("span field kind or status is not one of OTLP's")
    if type(values[_ERROR]) is not bool or (values[_REMOTE] is not None
                                             and type(values[_REMOTE]) is not bool):
        raise ValueError("span fields error and parent_is_remote must be booleans")
    if values[_PEER] is not None and type(values[_PEER]) is not list:
        raise ValueError("span field peer must be a list of strings or null")


def span_from_list(values: list[Any]) -> Span:
    """The span of :func:`span_to_list`'s list (a checkpoint's: trusted)."""
    peer = values[_PEER]
    if peer is None:
        return Span(*values)
    values = values.copy()
    values[_PEER] = Peer(*peer)
    return Span(*values)
