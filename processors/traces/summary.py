"""The wire form of a failing trace's summary (ADR 0015, stage B → stage D).

Trace assembly, partitioned by trace id, publishes for each closed *failing* trace a
compact summary on ``tocsin.trace-summaries``, keyed by service; triage, partitioned by
service, feeds each decoded summary to :meth:`Triage.apply_summary
<tocsin.processors.triage.Triage.apply_summary>`. It is everything triage reads of a
trace: the :class:`~tocsin.processors.traces.blast.TraceSummary` and the trace's last
span end. Spans are not carried.

The value is canonical JSON (orjson, sorted keys, no whitespace), one object::

    {"v": 1,                      wire version; any other is refused
     "trace_id": "<hex>",         the identity (see below)
     "end_ms": 1714564801234,     latest span end: the trace's event time for triage
     "complete": true,            no gaps (ClosedTrace.complete)
     "dropped_spans": 0,          spans over the assembler's per-trace cap
     "users": ["user-1", ...],    distinct user ids, sorted, exact (≤ USERS_PER_TRACE)
     "users_cut": 3,              only when ids were cut (see USERS_PER_TRACE)
     "services": ["checkout", ...],   services with a failing span, sorted
     "families": ["checkout:POST /api/checkout:HTTP_502", ...],  failing entry families
     "propagation": {...} | null} Propagation.to_dict(): capture, origin, path, sample_trace

``failing`` is not on the wire: only failing traces are published, and
:func:`decode_summary` gives ``failing=True``.

**Identity.** Normalized spans (:class:`~tocsin.processors.otlp.Span`) carry no source
position (topic, partition, offset), so the identity is the trace id alone. Triage needs
no more: it keeps summaries by (end ms, trace id) and counts a trace once per incident, so
a replayed or duplicated record changes nothing.

**Users.** A trace's user ids are bounded by its spans (``max_spans_per_trace``, 1,000 by
default: one user id per span at most), and they are kept exact and raw: the blast
radius's distinct count hashes the raw id once past its exact limit, so a substitute (a
hash of the id) would change the estimate. A trace with more than
:data:`USERS_PER_TRACE` distinct ids (only possible with an assembler cap above 1,000)
keeps the smallest 1,000 and counts the rest in ``users_cut``; only then does a report
fed through the wire differ from one fed the closed trace (fewer distinct users).

No I/O, no clock: the same trace gives the same bytes.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from tocsin.processors.traces.assembler import ClosedTrace
from tocsin.processors.traces.blast import TraceSummary, summarize
from tocsin.processors.traces.propagation import Capture, Hop, Origin, Propagation
from tocsin.processors.traces.sketch import EXACT_LIMIT

VERSION = 1
USERS_PER_TRACE = EXACT_LIMIT  # 1,000: the assembler's default span cap never reaches it
MAX_INT = (1 << 63) - 1  # times and counts are int64 on every consumer

_FIELDS = frozenset({"v", "trace_id", "end_ms", "complete", "dropped_spans", "users",
                     "services", "families", "propagation"})
_OPTIONAL = frozenset({"users_cut"})
_PROPAGATION = frozenset({"capture", "origin", "path", "sample_trace"})
_ORIGIN = frozenset({"service", "step", "span_id", "kind", "error_code", "downstream"})
_HOP = frozenset({"service", "step", "span_id", "error"})
_CAPTURES: dict[str, Capture] = {"ok": "ok", "partial": "partial"}
_FAMILY_SERVICE = re.compile(r"(?:[^\\:]|\\.)*", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


class SummaryError(ValueError):
    """Bytes that are not a trace summary of this wire version (or a summary that cannot
    be written as one)."""


def family_service(key: str) -> str:
    """The service a family key (``service:step:code``, ``:`` and ``\\`` escaped, see
    :mod:`tocsin.processors.family`) starts with, unescaped: the triage partition key
    that owns the family."""
    head = _FAMILY_SERVICE.match(key)
    assert head is not None  # the pattern matches the empty string
    return _UNESCAPE.sub(r"\1", head.group())


def summary_keys(summary: TraceSummary) -> list[str]:
    """The services a failing trace's summary is published to, sorted: every service
    with a failing span (``summary.services``) and every service that owns one of its
    failing families (``summary.families``, by the service the key starts with).

    Triage is partitioned by service (an incident lives on the partition of its family's
    service), and a summary counts for an incident when the incident's family is among
    ``summary.families``, so each family's service must get a copy. A family comes from a
    failing entry span, whose service has a failing span, so the families' services are
    among ``services`` for a summarized trace; the union is taken anyway so the rule does
    not rest on that. A service with a failing span but no failing entry span (only its
    CLIENT span failed, say) gets a copy it does not strictly need: the ADR's "one copy per
    failing service"."""
    if not summary.failing:
        return []
    return sorted(set(summary.services) | {family_service(f) for f in summary.families})


def summary_records(trace: ClosedTrace) -> list[tuple[str, bytes]]:
    """For a closed trace: the (key, value) records to publish, one per service of
    :func:`summary_keys`, all with the same value; none for a trace that did not fail."""
    if not trace.failing:
        return []
    summary = summarize(trace)
    value = encode_summary(summary, max(s.end_ms for s in trace.spans))
    return [(service, value) for service in summary_keys(summary)]


def encode_summary(summary: TraceSummary, end_ms: int) -> bytes:
    """The canonical bytes of a failing trace's summary and its last span end."""
    if not summary.failing:
        raise SummaryError("only failing traces are published")
    for name, value in (("end_ms", end_ms), ("dropped_spans", summary.dropped_spans)):
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value <= MAX_INT:
            raise SummaryError(f"{name}: an integer in [0, 2^63), got {value!r}")
    users = summary.users
    doc: dict[str, Any] = {
        "v": VERSION,
        "trace_id": summary.trace_id,
        "end_ms": end_ms,
        "complete": summary.complete,
        "dropped_spans": summary.dropped_spans,
        "users": list(users[:USERS_PER_TRACE]),
        "services": list(summary.services),
        "families": list(summary.families),
        "propagation": summary.propagation.to_dict() if summary.propagation else None,
    }
    if len(users) > USERS_PER_TRACE:
        doc["users_cut"] = len(users) - USERS_PER_TRACE
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a hand-made string
        raise SummaryError(f"not encodable as JSON: {exc}") from None


def decode_summary(data: bytes) -> tuple[TraceSummary, int]:
    """(summary, end ms) of a record written by :func:`encode_summary`; any other input
    raises :class:`SummaryError`, never another exception."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SummaryError(f"a summary is bytes, got {type(data).__name__}")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SummaryError(f"not JSON: {exc}") from None
    _keys(doc, "summary", _FIELDS, _OPTIONAL)
    if type(doc["v"]) is not int or doc["v"] != VERSION:
        raise SummaryError(f"v: wire version {VERSION} expected, got {doc['v']!r}")
    if "users_cut" in doc:
        _int(doc["users_cut"], "users_cut", 1)
    raw = doc["propagation"]
    summary = TraceSummary(
        trace_id=_str(doc["trace_id"], "trace_id"),
        failing=True,
        complete=_bool(doc["complete"], "complete"),
        dropped_spans=_int(doc["dropped_spans"], "dropped_spans"),
        users=_strs(doc["users"], "users"),
        services=_strs(doc["services"], "services"),
        families=_strs(doc["families"], "families"),
        propagation=None if raw is None else _propagation(raw),
    )
    return summary, _int(doc["end_ms"], "end_ms")


# ---------------------------------------------------------------- validation


def _keys(value: Any, what: str, required: frozenset[str],
          optional: frozenset[str] = frozenset()) -> None:
    if not isinstance(value, dict):
        raise SummaryError(f"{what}: an object expected, got {type(value).__name__}")
    keys = value.keys()
    if not required <= keys or not keys <= required | optional:
        missing = sorted(required - keys)
        unknown = sorted(keys - required - optional)
        raise SummaryError(f"{what}: missing {missing}, unknown {unknown}")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise SummaryError(f"{what}: a string expected, got {type(value).__name__}")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SummaryError(f"{what}: a boolean expected, got {type(value).__name__}")
    return value


def _int(value: Any, what: str, least: int = 0) -> int:
    if type(value) is not int or not least <= value <= MAX_INT:
        raise SummaryError(f"{what}: an integer in [{least}, 2^63) expected, got {value!r}")
    return value


def _strs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise SummaryError(f"{what}: a list expected, got {type(value).__name__}")
    return tuple(_str(v, what) for v in value)


def _propagation(value: Any) -> Propagation:
    _keys(value, "propagation", _PROPAGATION)
    raw = value["capture"]
    capture = _CAPTURES.get(raw) if isinstance(raw, str) else None
    if capture is None:
        raise SummaryError(f"propagation.capture: ok or partial, got {raw!r}")
    origin = value["origin"]
    _keys(origin, "propagation.origin", _ORIGIN)
    path = value["path"]
    if not isinstance(path, list):
        raise SummaryError("propagation.path: a list expected")
    hops = []
    for hop in path:
        _keys(hop, "propagation.path[]", _HOP)
        error = hop["error"]
        if error is not None:
            _bool(error, "propagation.path[].error")
        hops.append(Hop(_opt_str(hop["service"], "propagation.path[].service"),
                        _opt_str(hop["step"], "propagation.path[].step"),
                        _str(hop["span_id"], "propagation.path[].span_id"), error))
    return Propagation(
        _str(value["sample_trace"], "propagation.sample_trace"), capture,
        Origin(_str(origin["service"], "propagation.origin.service"),
               _str(origin["step"], "propagation.origin.step"),
               _str(origin["span_id"], "propagation.origin.span_id"),
               _str(origin["kind"], "propagation.origin.kind"),
               _opt_str(origin["error_code"], "propagation.origin.error_code"),
               _opt_str(origin["downstream"], "propagation.origin.downstream")),
        tuple(hops))
