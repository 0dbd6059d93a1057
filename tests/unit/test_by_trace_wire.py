"""The by-trace topic's span form read back: every span the span intake writes reads back
equal; anything else anyone writes there raises ValueError (the trace stage dead-letters
it), never a TypeError deeper in the assembler."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_traces import spans_of
from tocsin.processors.otlp.republish import by_trace_records, trace_partition
from tocsin.processors.traces import TraceAssembler
from tocsin.processors.traces.assembler import SPAN_FIELDS, span_from_wire, span_to_list

SPANS = spans_of(6, {1, 4})


def wire(values: list[Any]) -> Any:
    """Through JSON, as the topic carries it."""
    return orjson.loads(orjson.dumps(values))


def test_every_span_of_the_workload_reads_back_equal() -> None:
    assert SPANS and any(s.error for s in SPANS) and any(s.peer for s in SPANS)
    assert [span_from_wire(wire(span_to_list(s))) for s in SPANS] == SPANS


@pytest.mark.parametrize(("field", "value"), [
    ("trace_id", 7), ("span_id", None), ("service", ["a"]), ("name", {"x": 1}),
    ("start_ms", "12"), ("end_ms", 1.5), ("start_ms", True), ("error", "yes"),
    ("kind", "sideways"), ("status", 2), ("peer", ["a", "b", "c", "d"]), ("peer", [1]),
    ("peer", []), ("http_status", "500"), ("duration_ms", "3"), ("user_id", 5),
    ("parent_is_remote", "no"),
])
def test_a_field_of_the_wrong_type_is_refused_by_name(field: str, value: Any) -> None:
    values = wire(span_to_list(SPANS[0]))
    values[SPAN_FIELDS.index(field)] = value
    with pytest.raises(ValueError, match=field if field != "status" else "kind or status"):
        span_from_wire(values)


@pytest.mark.parametrize("values", [None, 3, "span", {}, [], [1, 2, 3],
                                    [None] * len(SPAN_FIELDS)])
def test_what_is_not_a_span_list_is_refused(values: Any) -> None:
    with pytest.raises(ValueError):
        span_from_wire(values)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON, min_size=len(SPAN_FIELDS), max_size=len(SPAN_FIELDS)))
def test_any_list_is_a_span_the_assembler_takes_or_a_value_error(values: list[Any]) -> None:
    try:
        span = span_from_wire(values)
    except ValueError:
        return
    assembler = TraceAssembler()
    assembler.add(span)
    assembler.flush(span.end_ms + 10**9)


def test_a_span_record_goes_out_once_per_partition_its_traces_land_on() -> None:
    spans = spans_of(40, {3, 17, 31})
    traces = {s.trace_id for s in spans}
    assert len(traces) > 6
    out = by_trace_records(spans, 6)
    partitions = [p for p, _, _ in out]
    assert len(partitions) == len(set(partitions)) and set(partitions) <= set(range(6))
    back = {p: [span_from_wire(v) for v in orjson.loads(value)["spans"]] for p, value, _ in out}
    assert all(back[p] == handed for p, _, handed in out)  # what the hand-off gives
    # every span once, in the record's order within its partition, on its trace's partition
    assert sorted((s.trace_id, s.span_id) for v in back.values() for s in v) == sorted(
        (s.trace_id, s.span_id) for s in spans)
    for p, got in back.items():
        assert got == [s for s in spans if trace_partition(s.trace_id, 6) == p]


def test_the_trace_placement_is_pinned() -> None:
    # CRC-32 of the lowercase hex id: every intake, any version, places a trace alike
    assert trace_partition("5b8efff798038103d269b633813fc60c", 6) == 3
    assert trace_partition("5b8efff798038103d269b633813fc60c", 1) == 0
    assert {trace_partition(f"{i:032x}", 6) for i in range(100)} == set(range(6))
