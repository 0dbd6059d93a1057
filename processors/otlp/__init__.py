"""OpenTelemetry traces into Tocsin's model, the pure part (ADR 0011).

``decode_batch(data)`` reads one OTLP payload (``otlp_proto`` or ``otlp_json``, sniffed per
record) into normalized :class:`Span` records; ``wide_events(spans)`` turns a collection of
them into ``wide_event.v1`` dicts that the family and window logic counts like any other
wide event. No I/O, no clock: the same bytes always give the same spans and events.
"""

from __future__ import annotations

from tocsin.processors.otlp.decode import (
    Decoded,
    Encoding,
    OtlpError,
    Rejected,
    decode_batch,
    decode_spans,
    sniff,
    trace_id_from_key,
)
from tocsin.processors.otlp.mapping import (
    failing_peers,
    is_entry,
    step_of,
    to_wide_event,
    wide_events,
)
from tocsin.processors.otlp.spans import Peer, Span

__all__ = [
    "Decoded",
    "Encoding",
    "OtlpError",
    "Peer",
    "Rejected",
    "Span",
    "decode_batch",
    "decode_spans",
    "failing_peers",
    "is_entry",
    "sniff",
    "step_of",
    "to_wide_event",
    "trace_id_from_key",
    "wide_events",
]
