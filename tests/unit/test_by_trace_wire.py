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
from tocsin.processors.otlp.republish import (
    BY_TRACE_MAX_BYTES,
    by_trace_batches,
    by_trace_records,
    trace_partition,
)
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


def released_records(n: int = 12) -> list[tuple[str, int, list[Any]]]:
    """Span records of two sources, interleaved as a release gives them."""
    spans = spans_of(60, {3, 17, 31, 44})
    size = len(spans) // n
    return [(f"otlp_spans:{i % 2}", 100 + i, spans[i * size:(i + 1) * size])
            for i in range(n)]


@pytest.mark.parametrize("max_bytes", [BY_TRACE_MAX_BYTES, 4_000, 1])
def test_batches_carry_each_source_and_partitions_spans_in_record_order(max_bytes: int
                                                                         ) -> None:
    records = released_records()
    out = by_trace_batches(records, 6, max_bytes)
    # the same spans per (source, partition), in the same order, as one record each
    expected: dict[tuple[str, int], list[Any]] = {}
    for source, _, spans in records:
        for partition, _, group in by_trace_records(spans, 6):
            expected.setdefault((source, partition), []).extend(group)
    got: dict[tuple[str, int], list[Any]] = {}
    firsts: dict[tuple[str, int], list[int]] = {}
    for partition, source, first, value, handed in out:
        back = [span_from_wire(v) for v in orjson.loads(value)["spans"]]
        assert back == handed  # what the hand-off gives is what the bytes read back
        got.setdefault((source, partition), []).extend(back)
        firsts.setdefault((source, partition), []).append(first)
        if len(value) > max_bytes:  # only ever one span record's spans, alone
            assert len({o for s, o, spans in records if s == source
                        for x in handed if x in spans}) == 1
    assert got == expected
    assert all(f == sorted(f) for f in firsts.values())
    # the first offset names the first span record whose spans the batch holds
    for _, source, first, _, handed in out:
        holder = next(o for s, o, spans in records if s == source and handed[0] in spans)
        assert first == holder


def test_a_release_goes_out_in_fewer_records_than_one_per_span_record_and_partition() -> None:
    records = released_records()
    single = sum(len(by_trace_records(spans, 6)) for _, _, spans in records)
    batched = by_trace_batches(records, 6)
    assert len(batched) <= 12 < single  # at most one per (source, partition)
    cut = by_trace_batches(records, 6, 4_000)
    assert len(batched) < len(cut) <= single
