"""What the span intake publishes on the events topic for one translated wide event
(ADR 0015): the binary span event record (:mod:`.record`) whenever it carries the event
exactly, else the JSON wide event, as before the record existed.

JSON stays for the events the record cannot carry or would carry differently: one the
encoder refuses (:class:`~.record.RecordError`: the JSON path then dead-letters it at the
detector with the validator's reason, as it always did) and one whose record would be
longer than :data:`BINARY_MAX_BYTES`. An entry span's record is 80-150 bytes; a longer one
has strings tens of times longer than any real service, step or error code, and among
those the record's 64 KB cut on one string, the one place it would read differently from
the JSON path. So the detector sees the same event values either way, and a huge event
meets the detector's ``max_record_bytes`` check in its JSON form, as today.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tocsin.processors.otlp.record import RecordError, encode_span_event

BINARY_MAX_BYTES = 1_024


def event_value(event: Mapping[str, Any], source: str, offset: int, index: int) -> bytes:
    """The value to publish for ``event``, the ``index``-th wide event of the span record
    at ``offset`` of ``source`` (``"topic:partition"``): a span event record, or its JSON
    when the record cannot carry it exactly (module doc)."""
    try:
        data = encode_span_event(event, source, offset, index)
    except RecordError:
        return orjson.dumps(event)
    if len(data) > BINARY_MAX_BYTES:
        return orjson.dumps(event)
    return data
