"""Evidence from traces, the pure part (ADR 0012).

``TraceAssembler`` groups normalized spans (``processors.otlp``) by trace id and closes a
trace after ``idle_ms`` of event-time inactivity, within fixed memory caps;
``propagation(trace)`` finds where a failing trace's failure started and the path it
took; ``summarize(trace)`` and ``BlastRadius`` count how far an incident spread;
``summary_records(trace)`` / ``decode_summary(value)`` carry a failing trace's summary from
trace assembly to triage (ADR 0015). No I/O, no clock, no randomness: a replay of the same
spans gives the same evidence.
"""

from __future__ import annotations

from tocsin.processors.traces.assembler import AssemblerCounters, ClosedTrace, TraceAssembler
from tocsin.processors.traces.blast import BlastRadius, TraceSummary, summarize, trace_hash
from tocsin.processors.traces.propagation import (
    MISSING,
    Capture,
    Hop,
    Origin,
    Propagation,
    propagation,
)
from tocsin.processors.traces.sketch import DistinctCounter, HyperLogLog
from tocsin.processors.traces.summary import (
    SummaryError,
    decode_summary,
    encode_summary,
    family_service,
    summary_keys,
    summary_records,
)

__all__ = [
    "MISSING",
    "AssemblerCounters",
    "BlastRadius",
    "Capture",
    "ClosedTrace",
    "DistinctCounter",
    "Hop",
    "HyperLogLog",
    "Origin",
    "Propagation",
    "SummaryError",
    "TraceAssembler",
    "TraceSummary",
    "decode_summary",
    "encode_summary",
    "family_service",
    "propagation",
    "summarize",
    "summary_keys",
    "summary_records",
    "trace_hash",
]
