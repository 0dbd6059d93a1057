"""The span path's binary event record (processors/otlp/record.py): whatever the detector
reads from a decoded record equals what it reads from the JSON path
(``WideEventDecoder()(orjson.dumps(event))``), on events from the real OTLP fixtures, the
SDK workload and generated hostile strings; any bytes decode to an event or RecordError."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.family import failing_downstream, family_of
from tocsin.processors.otlp import decode_batch, wide_events
from tocsin.processors.otlp import record as rec
from tocsin.processors.otlp.mapping import detected_event, entries, to_wide_event
from tocsin.processors.otlp.pack import PACK_VERSION, decode_span_pack, encode_span_pack
from tocsin.processors.otlp.record import (
    HEAD_SIZE,
    MAX_STR_BYTES,
    RecordError,
    decode_span_event,
    encode_span_event,
)
from tocsin.processors.otlp.republish import BINARY_MAX_BYTES, event_records
from tocsin.schemas.codec import SchemaError, WideEventDecoder

OTEL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "otel"
DECODE_JSON = WideEventDecoder()
# What Detection._process reads of an event, and what family_of / failing_downstream read.
DETECTOR_FIELDS = ("event_time_ms", "service", "env", "step", "status", "service_version",
                   "trace_id", "error_code", "downstream", "duration_ms", "steps")


def json_path(event: dict[str, Any]) -> dict[str, Any]:
    return DECODE_JSON(orjson.dumps(event))


def detector_view(event: dict[str, Any]) -> tuple[Any, ...]:
    """Everything Detection._process passes on from one event, as it computes it."""
    family = family_of(event) if event["status"] != "suppressed" else None
    version = event.get("service_version")
    return (event["event_time_ms"], event["service"], event["env"], event["step"],
            event["status"], version if version else None, family,
            failing_downstream(event) if family is not None else None,
            event.get("trace_id"))


def assert_same_as_json(event: dict[str, Any], source: str = "otlp_spans:3",
                        offset: int = 12_345, index: int = 2) -> bytes:
    data = encode_span_event(event, source, offset, index)
    decoded, got_source, position = decode_span_event(data)
    expected = json_path(event)
    assert (got_source, position) == (source, (offset, index))
    assert set(decoded) == set(DETECTOR_FIELDS)
    for key in DETECTOR_FIELDS[:-1]:
        assert decoded[key] == expected.get(key), key
        assert type(decoded[key]) is type(expected.get(key)), key
    # steps: a span's event has [] (compared exactly on real events); None or a missing
    # key reads the same in family_of / failing_downstream, and decodes as [].
    assert decoded["steps"] == (expected.get("steps") or [])
    assert family_of(decoded) == family_of(expected)
    assert failing_downstream(decoded) == failing_downstream(expected)
    assert detector_view(decoded) == detector_view(expected)
    return data


# ---------------------------------------------------------------------- real spans


def fixture_payloads() -> list[tuple[str, bytes]]:
    """The Collector fixtures: the batch (proto and OTLP/JSON), each Kafka record of
    trace-3svc.kafka-records.json (per-service values split from the batch, as
    test_otlp_decode does, when the folder lacks them), the official OTLP/JSON example."""
    batch = (OTEL / "trace-3svc-batch.pb").read_bytes()
    out = [("batch.pb", batch), ("batch.json", (OTEL / "trace-3svc-batch.json").read_bytes()),
           ("official", (OTEL / "proto-examples" / "otlp-proto-examples-trace.json")
            .read_bytes())]
    split: dict[str, bytes] = {}
    for rs in TracesData.FromString(batch).resource_spans:
        one = TracesData()
        one.resource_spans.append(rs)
        name = next(kv.value.string_value for kv in rs.resource.attributes
                    if kv.key == "service.name")
        split[f"trace-3svc-{name}.pb"] = one.SerializeToString(deterministic=True)
    doc = json.loads((OTEL / "trace-3svc.kafka-records.json").read_text())
    for config, body in doc.items():
        if isinstance(body, dict):
            for record in body["records"]:
                path = OTEL / record["value_file"]
                value = path.read_bytes() if path.exists() else split[record["value_file"]]
                out.append((f"{config}/{record['value_file']}", value))
    return out


def sdk_events() -> list[dict[str, Any]]:
    """The OpenTelemetry SDK workload (tocsin/clients/otel_workload.py), some failing."""
    spans = workload(12, {2, 5, 11}, 1_714_564_800_000_000_000)
    return wide_events(decode_batch(proto(spans)).spans)


FIXTURE_EVENTS = [(f"{name}#{i}", event) for name, payload in fixture_payloads()
                  for i, event in enumerate(wide_events(decode_batch(payload).spans))]
ALL_REAL = FIXTURE_EVENTS + [(f"sdk#{i}", e) for i, e in enumerate(sdk_events())]


def test_real_events_cover_what_the_detector_distinguishes() -> None:
    events = [e for _, e in ALL_REAL]
    assert len(FIXTURE_EVENTS) >= 19
    assert {e["status"] for e in events} == {"ok", "error"}
    assert any(e["downstream"] for e in events)
    assert any(e["error_code"] and not e["downstream"] for e in events)
    assert any(e["service_version"] is None for e in events)  # the official example
    assert {json_path(e)["env"] for e in events} >= {"prod", "production"}


@pytest.mark.parametrize(("name", "event"), ALL_REAL, ids=[n for n, _ in ALL_REAL])
def test_real_event_reads_the_same_as_the_json_path(name: str, event: dict[str, Any]) -> None:
    data = assert_same_as_json(event)
    assert decode_span_event(data)[0]["steps"] == json_path(event)["steps"] == []
    assert 88 <= len(data) <= 158, len(data)


def test_typical_sizes() -> None:
    ok = next(e for _, e in ALL_REAL if e["status"] == "ok" and e["service_version"])
    failing = next(e for _, e in ALL_REAL if e["downstream"])
    assert len(encode_span_event(ok, "otlp_spans:3", 1 << 40, 7)) < 118
    assert len(encode_span_event(failing, "otlp_spans:3", 1 << 40, 7)) < 158
    assert len(encode_span_event(ok, "s:0", 0, 0)) < len(orjson.dumps(ok)) / 3


# ---------------------------------------------------------------------- generated events

OPTIONAL = st.none() | st.text(max_size=40)
REQUIRED = st.text(min_size=1, max_size=40)
HOSTILE = st.sampled_from(["\x00", "\x00\x01\x1f\x7f", "\n\r\t", "\u2028", "é", "日本語",
                           "\U0001f4a5", "\ufeff", "a\x00b", "x" * 10_000, "é" * 5_000])
TEXT = REQUIRED | HOSTILE


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    down = draw(st.none() | st.fixed_dictionaries({
        "service": TEXT, "endpoint": OPTIONAL | HOSTILE, "kind": OPTIONAL}))
    event = {
        "event_time_ms": draw(st.integers(0, (1 << 53) - 1)),
        "service": draw(TEXT), "step": draw(TEXT),
        "env": draw(st.none() | TEXT),
        "status": draw(st.sampled_from(rec.STATUSES)),
        "error_code": draw(OPTIONAL | HOSTILE),
        "service_version": draw(OPTIONAL | HOSTILE),
        "trace_id": draw(st.none() | st.binary(min_size=16, max_size=16).map(bytes.hex)
                         | OPTIONAL | st.just("6762B34F4E26EA8E603235A1E58E1B1C")
                         | st.just("6762b34f 4e26ea8e603235a1e58e1b1")),
        "downstream": down, "steps": draw(st.sampled_from([[], None])),
        "duration_ms": draw(st.none() | st.floats()),  # NaN and +-inf too: JSON's null
        "error_message": draw(OPTIONAL), "span_id": "00f067aa0ba902b7",
        "attributes": {"span.kind": "server"},
    }
    if draw(st.booleans()):
        del event["steps"]
    return event


@settings(max_examples=400, deadline=None)
@given(events(), st.text(max_size=30), st.integers(0, (1 << 64) - 1),
       st.integers(0, (1 << 32) - 1))
def test_generated_event_reads_the_same_as_the_json_path(
        event: dict[str, Any], source: str, offset: int, index: int) -> None:
    data = assert_same_as_json(event, source, offset, index)
    # The memos change nothing: cold and warm give the same bytes and the same event.
    warm = decode_span_event(data)
    rec._TAILS.clear()
    rec._STRINGS.clear()
    assert encode_span_event(event, source, offset, index) == data
    assert decode_span_event(data) == warm


@pytest.mark.parametrize("value", ["", "\x00", "\x00\x01\x02\x1b[31m\x7f", "x" * 10_000,
                                   "é" * 10_000, "\U0001f4a5" * 2_500, " \t\n"])
def test_hostile_strings_in_every_field(value: str) -> None:
    required = value or "-"
    assert_same_as_json({"event_time_ms": 1, "service": required, "step": required,
                         "env": required, "status": "error", "error_code": value,
                         "service_version": value, "trace_id": value,
                         "downstream": {"service": required, "endpoint": value,
                                        "kind": value}, "steps": []})


def test_none_optionals_and_defaults() -> None:
    event = {"event_time_ms": 5, "service": "s", "step": "GET /"}  # no env, status, ...
    decoded, _, _ = decode_span_event(encode_span_event(event, "t:0", 0, 0))
    assert decoded == {"event_time_ms": 5, "service": "s", "env": "prod", "step": "GET /",
                       "status": "ok", "service_version": None, "error_code": None,
                       "trace_id": None, "duration_ms": None, "downstream": None,
                       "steps": []}
    assert_same_as_json(event)
    partial = {"event_time_ms": 5, "service": "s", "step": "x", "status": "timeout",
               "downstream": {"service": "db"}}
    decoded, _, _ = decode_span_event(encode_span_event(partial, "t:0", 0, 0))
    assert decoded["downstream"] == {"service": "db", "endpoint": None, "kind": None}
    assert family_of(decoded) == family_of(json_path(partial))
    assert failing_downstream(decoded) == "db"


def test_over_long_strings_are_cut_at_a_character_boundary() -> None:
    long = "é" * 40_000  # 80,000 UTF-8 bytes
    event = {"event_time_ms": 1, "service": "s", "step": long, "status": "error",
             "error_code": "x" * 70_000}
    decoded, _, _ = decode_span_event(encode_span_event(event, "t:0", 0, 0))
    assert decoded["step"] == "é" * (MAX_STR_BYTES // 2)
    assert decoded["error_code"] == "x" * MAX_STR_BYTES
    assert encode_span_event(event, "t:0", 0, 0) == encode_span_event(event, "t:0", 0, 0)


def test_raw_trace_id_only_for_lowercase_hex() -> None:
    base = {"event_time_ms": 1, "service": "s", "step": "x"}
    lower = encode_span_event({**base, "trace_id": "ab" * 16}, "t:0", 0, 0)
    upper = encode_span_event({**base, "trace_id": "AB" * 16}, "t:0", 0, 0)
    assert len(upper) == len(lower) + 2 + 32  # the 16 raw bytes are there, zeros
    assert decode_span_event(upper)[0]["trace_id"] == "AB" * 16


VALID = {"event_time_ms": 1, "service": "s", "step": "x", "env": "e", "status": "error",
         "error_code": "E", "service_version": "1", "trace_id": "t", "duration_ms": 12.5,
         "downstream": {"service": "d", "endpoint": "/x", "kind": "http"}, "steps": []}
REFUSED = [
    ({"service": ""}, True), ({"service": None}, True), ({"service": 3}, True),
    ({"service": ["a"]}, True), ({"step": ""}, True), ({"env": ""}, True),
    ({"env": 1}, True), ({"status": "bogus"}, True), ({"status": None}, True),
    ({"status": ["ok"]}, True), ({"event_time_ms": True}, True),
    ({"event_time_ms": -1}, True), ({"event_time_ms": 1 << 53}, True),
    ({"event_time_ms": 1.5}, True), ({"event_time_ms": None}, True),
    ({"error_code": 5}, True), ({"service_version": {"a": 1}}, True),
    ({"trace_id": 7}, True), ({"downstream": "x"}, True), ({"downstream": {}}, True),
    ({"downstream": {"service": ""}}, True), ({"downstream": {"service": "d", "kind": 1}}, True),
    ({"duration_ms": "3"}, True), ({"duration_ms": True}, True),
    ({"duration_ms": [1.0]}, True),
    ({"duration_ms": 3}, False),  # valid, but the JSON path keeps an int an int
    ({"duration_ms": 1 << 60}, False),
    ({"steps": [{"name": "a", "status": "error"}]}, False),  # valid, but not a span's
    ({"service": "\ud800"}, False),  # orjson refuses to write it: the JSON path cannot either
]


@pytest.mark.parametrize(("change", "json_refuses"), REFUSED, ids=range(len(REFUSED)))
def test_encoder_refuses_what_it_cannot_carry(change: dict[str, Any], json_refuses: bool
                                              ) -> None:
    event = {**VALID, **change}
    with pytest.raises(RecordError) as info:
        encode_span_event(event, "t:0", 0, 0)
    assert info.value.reason and type(info.value) is RecordError
    if json_refuses:
        with pytest.raises(SchemaError):
            json_path(event)


@pytest.mark.parametrize(("offset", "index"), [(-1, 0), (0, -1), (1 << 64, 0), (0, 1 << 32),
                                               (True, 0), (0, 1.0), (None, 0)])
def test_encoder_refuses_positions_out_of_range(offset: Any, index: Any) -> None:
    with pytest.raises(RecordError, match=r"^offset, index: "):
        encode_span_event(VALID, "t:0", offset, index)


# ---------------------------------------------------------------------- hostile bytes

RECORD = encode_span_event(VALID, "otlp_spans:0", 99, 1)
RAW_RECORD = encode_span_event({**VALID, "trace_id": "ab" * 16}, "otlp_spans:0", 99, 1)


def as_version_1(data: bytes) -> bytes:
    """A version-3 record as an older intake wrote it: version 1, no duration_ms."""
    assert data[0] == rec.VERSION == 3
    return b"\x01" + data[1:rec.DURATION_AT] + data[HEAD_SIZE:]


V1_RECORD = as_version_1(RECORD)
V1_RAW_RECORD = as_version_1(RAW_RECORD)


@pytest.mark.parametrize("version", [v for v in range(256) if v not in (1, 3)])
def test_unknown_version_is_named(version: int) -> None:
    with pytest.raises(RecordError, match=f"unknown version {version} "):
        decode_span_event(bytes([version]) + RECORD[1:])


@pytest.mark.parametrize("data", [RECORD, RAW_RECORD, V1_RECORD, V1_RAW_RECORD],
                         ids=["v3", "v3-raw", "v1", "v1-raw"])
def test_every_truncation_and_any_trailing_byte_is_refused(data: bytes) -> None:
    for size in range(len(data)):
        with pytest.raises(RecordError, match="truncated"):
            decode_span_event(data[:size])
    for extra in (b"\x00", b"x", b"\x01" * 40):
        with pytest.raises(RecordError, match="trailing garbage"):
            decode_span_event(data + extra)


def test_non_canonical_and_invalid_fields_are_refused() -> None:
    def patched(at: int, value: bytes, data: bytes = RECORD) -> bytes:
        return data[:at] + value + data[at + len(value):]

    cases = {
        "unknown status 6": patched(HEAD_SIZE + 1, b"\x06"),
        "event_time_ms out of range": patched(1, (1 << 53).to_bytes(8, "little")),
        "trace id bytes set without": patched(21, b"\x01"),
        "invalid flags 0x[89a-f]": patched(HEAD_SIZE, bytes([RECORD[HEAD_SIZE] | 0x80])),
        "invalid flags 0x20": patched(HEAD_SIZE, b"\x20"),
        "invalid UTF-8": RECORD[:-1] + b"\xff",
    }
    for reason, data in cases.items():
        with pytest.raises(RecordError, match=reason):
            decode_span_event(data)
    with pytest.raises(RecordError, match="a record is bytes"):
        decode_span_event(None)  # type: ignore[arg-type]
    assert decode_span_event(bytearray(RECORD)) == decode_span_event(memoryview(RECORD))


def forge(strings: list[str], flags: int) -> bytes:
    """A record with RECORD's fixed part and status, the given flags and strings."""
    parts = [v.encode() for v in strings]
    return (RECORD[:HEAD_SIZE] + bytes([flags, RECORD[HEAD_SIZE + 1]])
            + rec.LENGTHS[len(parts)].pack(*map(len, parts)) + b"".join(parts))


def test_forged_strings_decode_as_written() -> None:
    flags = RECORD[HEAD_SIZE]
    strings = ["src", "svc", "env", "step", "1", "E", "t", "d", "/x", "http"]
    event, source, _ = decode_span_event(forge(strings, flags))
    assert (source, event["service"], event["downstream"]) == (
        "src", "svc", {"service": "d", "endpoint": "/x", "kind": "http"})


@pytest.mark.parametrize(("slot", "name"), [(1, "service"), (2, "env"), (3, "step"),
                                            (7, "downstream.service")])
def test_empty_required_string_in_the_bytes_is_refused(slot: int, name: str) -> None:
    strings = ["src", "svc", "env", "step", "1", "E", "t", "d", "/x", "http"]
    strings[slot] = ""
    with pytest.raises(RecordError, match=f"^{name}: must be non-empty"):
        decode_span_event(forge(strings, RECORD[HEAD_SIZE]))


def roundtrip_or_error(data: bytes) -> None:
    try:
        event, source, (offset, index) = decode_span_event(data)
    except RecordError as exc:
        assert exc.reason
        return
    again = decode_span_event(encode_span_event(event, source, offset, index))
    assert again == (event, source, (offset, index))


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_record_error(data: bytes) -> None:
    roundtrip_or_error(data)
    roundtrip_or_error(b"\x01" + data)
    roundtrip_or_error(b"\x03" + data)


@settings(max_examples=2_000, deadline=None)
@given(st.sampled_from([RECORD, RAW_RECORD, V1_RECORD, V1_RAW_RECORD]), st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200), st.binary(max_size=8))
def test_mutated_records_decode_or_raise_record_error(
        data: bytes, flips: list[tuple[int, int]], cut: int, extra: bytes) -> None:
    mutated = bytearray(data)
    for at, value in flips:
        if at < len(mutated):
            mutated[at] = value
    roundtrip_or_error(bytes(mutated[:cut]) + extra)
    roundtrip_or_error(bytes(mutated))


def test_random_garbage_seeded() -> None:
    rng = random.Random(11)
    for _ in range(20_000):
        roundtrip_or_error(bytes([rng.choice((1, 3))]) + rng.randbytes(rng.randrange(0, 120)))


def test_memos_stay_bounded() -> None:
    rec._TAILS.clear()
    rec._STRINGS.clear()
    sizes = []
    for i in range(rec.MEMO_ENTRIES + 10):
        data = encode_span_event({**VALID, "step": f"step {i}", "trace_id": "ab" * 16},
                                 "t:0", i, 0)
        decode_span_event(data)
        sizes.append((len(rec._TAILS), len(rec._STRINGS)))
    assert max(sizes) == (rec.MEMO_ENTRIES, rec.MEMO_ENTRIES)  # filled, then cleared
    assert sizes[-1] <= (20, 20)


def test_unique_values_are_not_memoized() -> None:
    """A text trace id is unique per event, a tail over MEMO_TAIL_BYTES rare: neither
    would ever hit."""
    rec._TAILS.clear()
    rec._STRINGS.clear()
    for i in range(50):
        decode_span_event(encode_span_event({**VALID, "trace_id": f"trace {i}"}, "t:0", i, 0))
        decode_span_event(encode_span_event({**VALID, "step": "x" * 600, "trace_id": None},
                                            "t:0", i, 0))
    assert (len(rec._TAILS), len(rec._STRINGS)) == (0, 0)


# ---------------------------------------------------------------------- duration, versions

DURATIONS = [44.0, 56.0, 0.1, 812.5, 123_456.789, 0.0, -0.0, -3.5, 1e-300, 5e-324,
             2.2250738585072014e-308, 1e308, sys.float_info.max, float(1 << 60), None,
             math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("duration", DURATIONS, ids=repr)
def test_duration_reads_back_as_the_json_path_gives_it(duration: float | None) -> None:
    event = {**VALID, "duration_ms": duration}
    data = assert_same_as_json(event)
    got = decode_span_event(data)[0]["duration_ms"]
    want = json_path(event)["duration_ms"]  # orjson writes NaN and +-inf as null
    if duration is None or not math.isfinite(duration):
        assert got is None and want is None
        assert data[rec.DURATION_AT:HEAD_SIZE] == bytes.fromhex("000000000000f87f")
    else:
        assert type(got) is float and got == want == duration
        assert math.copysign(1.0, got) == math.copysign(1.0, duration)  # -0.0 stays
        assert data[rec.DURATION_AT:HEAD_SIZE] == struct.pack("<d", duration)


def test_a_missing_duration_is_none_and_the_encoder_writes_version_3() -> None:
    event = {k: v for k, v in VALID.items() if k != "duration_ms"}
    data = encode_span_event(event, "t:0", 0, 0)
    assert data[0] == rec.VERSION == 3 and {1, 2, 3} <= rec.VERSIONS
    assert (HEAD_SIZE, rec.HEAD_1_SIZE) == (45, 37)
    assert decode_span_event(data)[0]["duration_ms"] is None
    assert data == encode_span_event({**event, "duration_ms": None}, "t:0", 0, 0)


@pytest.mark.parametrize("bits", ["000000000000f07f", "000000000000f0ff", "010000000000f87f",
                                  "000000000000f8ff", "010000000000f07f", "ffffffffffffff7f"])
def test_non_finite_bytes_other_than_none_are_refused(bits: str) -> None:
    """+inf, -inf, and every NaN but None's: no encoder writes them."""
    data = RECORD[:rec.DURATION_AT] + bytes.fromhex(bits) + RECORD[HEAD_SIZE:]
    with pytest.raises(RecordError, match=r"^duration_ms: "):
        decode_span_event(data)


@pytest.mark.parametrize(("v3", "v1"), [(RECORD, V1_RECORD), (RAW_RECORD, V1_RAW_RECORD)])
def test_a_version_1_record_still_decodes_with_no_duration(v3: bytes, v1: bytes) -> None:
    # Built as an older intake built it: its own head struct, then the same tail.
    _, t_ms, offset, index, raw, _ = rec.HEAD.unpack_from(v3)
    assert v1 == struct.pack("<BqQI16s", 1, t_ms, offset, index, raw) + v3[HEAD_SIZE:]
    assert len(v1) == len(v3) - 8
    event, source, position = decode_span_event(v1)
    new_event, new_source, new_position = decode_span_event(v3)
    assert (source, position) == (new_source, new_position) == ("otlp_spans:0", (99, 1))
    assert new_event["duration_ms"] == 12.5 and event["duration_ms"] is None
    assert event == {**new_event, "duration_ms": None}
    # Read again, it is written as version 3, with None's NaN.
    again = encode_span_event(event, source, *position)
    assert again[0] == 3 and decode_span_event(again) == (event, source, position)


def test_a_truncated_version_3_record_is_refused() -> None:
    """Cut anywhere, in the duration's 8 bytes too, a version-3 record is never read as
    the shorter version 1."""
    for size in (1, 21, rec.DURATION_AT, rec.DURATION_AT + 1, rec.DURATION_AT + 4,
                 HEAD_SIZE - 1, HEAD_SIZE, HEAD_SIZE + 1, HEAD_SIZE + 2, len(RECORD) - 1):
        with pytest.raises(RecordError, match=r"^truncated"):
            decode_span_event(RECORD[:size])
    with pytest.raises(RecordError, match=r"^truncated"):
        decode_span_pack(encode_span_pack([RECORD, RECORD[:-1]]))


def test_a_pack_mixing_version_1_and_3_records_decodes() -> None:
    records = [V1_RECORD, RECORD, V1_RAW_RECORD, RAW_RECORD,
               encode_span_event({**VALID, "duration_ms": None}, "otlp_spans:0", 99, 5)]
    data = encode_span_pack(records)
    assert data[0] == PACK_VERSION
    got = decode_span_pack(data)
    assert got == [decode_span_event(r) for r in records]
    assert [event["duration_ms"] for event, _, _ in got] == [None, 12.5, None, 12.5, None]
    assert got[0][0] == {**got[1][0], "duration_ms": None}


# ---------------------------------------------------------------------- detected events

def all_real_spans() -> list[Any]:
    payloads = [p for _, p in fixture_payloads()]
    payloads.append(proto(workload(12, {2, 5, 11}, 1_714_564_800_000_000_000)))
    payloads += [body for body, _ in span_records_of_scale()]
    return [decode_batch(p).spans for p in payloads]


def span_records_of_scale() -> list[tuple[bytes, Any]]:
    from bench import scale  # the bench's own span workload, failing traces included
    return list(itertools.islice(scale.span_records(400), 60))


def test_detected_events_are_what_the_record_of_the_whole_event_reads_back() -> None:
    """The span intake encodes and hands off detected_event(span, peer) in place of the
    whole wide event: the same record bytes, and the same event the bytes read back."""
    seen = 0
    for spans in all_real_spans():
        pairs = entries(spans)
        assert [to_wide_event(*pair) for pair in pairs] == wide_events(spans)
        for index, pair in enumerate(pairs):
            whole, lean = to_wide_event(*pair), detected_event(*pair)
            data = encode_span_event(whole, "otlp_spans:1", 7, index)
            assert encode_span_event(lean, "otlp_spans:1", 7, index) == data
            assert decode_span_event(data)[0] == lean
            seen += 1
    assert seen > 500


def test_an_event_a_record_cannot_carry_goes_as_its_whole_json() -> None:
    spans = next(s for s in all_real_spans() if s)
    pairs = entries(spans)
    long = [(dataclasses.replace(span, name="n" * (BINARY_MAX_BYTES + 1), http_route=None),
             peer) for span, peer in pairs]
    lean = [detected_event(*pair) for pair in long]
    out = event_records(lean, "t:0", 0, lambda key: 0, lambda i: to_wide_event(*long[i]))
    assert [orjson.loads(value) for _, _, value, _ in out] == \
        [to_wide_event(*pair) for pair in long]
