"""Wire contracts: Avro single-object encoding readable with only the .avsc, the Confluent
wire format, JSON validation errors that name the field."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import orjson
import pytest

from tocsin.processors.timeline import Timeline, TimelineConfig, duration_bin
from tocsin.schemas.codec import (
    AVRO_DIR,
    INCIDENT_EVENT,
    INCIDENT_EVENT_V1,
    INCIDENT_EVENT_V2,
    INCIDENT_EVENT_V3,
    WIDE_EVENT,
    AvroSchema,
    SchemaError,
    WideEventDecoder,
    avro_schema,
    decode_incident,
    encode_incident,
    schema_text,
    validate_wide_event,
)

EVENT = {"event_time_ms": 1_793_610_000_000, "service": "checkout", "step": "payment.charge",
         "status": "error", "error_code": "PMT_502", "env": "prod",
         "downstream": {"service": "payment", "endpoint": "/charge", "kind": "http"},
         "steps": [{"name": "payment.charge", "status": "error", "error_code": "PMT_502"}],
         "attributes": {"region": "eu-west-1"}}


def crc64_avro(data: bytes) -> int:
    """The Avro spec's CRC-64-AVRO, written out here as a reader in another language
    would, to check our header without trusting fastavro's fingerprint function."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_single_object_encoding_is_decodable_with_only_the_avsc() -> None:
    encoded = avro_schema(WIDE_EVENT).encode_soe(validate_wide_event(dict(EVENT)))
    schema = json.loads((AVRO_DIR / "wide_event.v1.avsc").read_text())
    parsed = fastavro.parse_schema(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    assert encoded[:2] == b"\xc3\x01"
    assert struct.unpack("<Q", encoded[2:10])[0] == crc64_avro(canonical.encode())
    value = fastavro.schemaless_reader(io.BytesIO(encoded[10:]), parsed, None)
    assert value["service"] == "checkout" and value["downstream"]["service"] == "payment"


@pytest.mark.parametrize("encoding", ["avro", "json"])
def test_wide_event_round_trips_through_the_decoder(encoding: str) -> None:
    event = validate_wide_event(dict(EVENT))
    data = avro_schema(WIDE_EVENT).encode_soe(event) if encoding == "avro" \
        else orjson.dumps(EVENT)
    decoded = WideEventDecoder()(data)
    same = [k for k in EVENT if k != "steps"]
    assert {k: decoded[k] for k in same} == {k: event[k] for k in same}
    # Avro fills the defaults of nested records; what was sent reads back the same.
    assert [{k: s[k] for k in ("name", "status", "error_code")} for s in decoded["steps"]] == \
        EVENT["steps"]


def test_confluent_wire_format_uses_the_registry_lookup() -> None:
    schema = avro_schema(WIDE_EVENT)
    body = schema.encode_body(validate_wide_event(dict(EVENT)))
    data = b"\x00" + (42).to_bytes(4, "big") + body
    seen: list[int] = []

    def lookup(schema_id: int) -> AvroSchema:
        seen.append(schema_id)
        return schema

    assert WideEventDecoder(lookup)(data)["error_code"] == "PMT_502"
    assert seen == [42]
    with pytest.raises(SchemaError, match="no schema registry"):
        WideEventDecoder()(data)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"service": "a", "step": "b"}, "event_time_ms"),
        ({"event_time_ms": True, "service": "a", "step": "b"}, "event_time_ms"),
        ({"event_time_ms": 1, "service": "", "step": "b"}, "service"),
        ({"event_time_ms": 1, "service": "a"}, "step"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "env": 3}, "env"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "status": "fine"}, "status"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "error_code": 502}, "error_code"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "duration_ms": "5"}, "duration_ms"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "downstream": {}},
         "downstream.service"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "steps": [{"status": "ok"}]},
         "steps[0].name"),
        ({"event_time_ms": 1, "service": "a", "step": "b", "attributes": []}, "attributes"),
        ({"timestamp": "yesterday", "service": "a", "step": "b"}, "timestamp"),
        ({"timestamp": "2026-11-02T09:00:00", "service": "a", "step": "b"}, "timestamp"),
    ],
)
def test_invalid_wide_events_name_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        validate_wide_event(record)
    assert info.value.field == field


def test_rfc3339_timestamp_is_accepted_in_json() -> None:
    event = validate_wide_event({"timestamp": "2026-11-02T09:00:00Z", "service": "a",
                                 "step": "b", "attributes": {"n": 3}})
    assert event["event_time_ms"] == 1_793_610_000_000
    assert event["attributes"] == {"n": "3"} and event["env"] == "prod"


def test_encoding_errors_are_schema_errors_naming_the_field() -> None:
    with pytest.raises(SchemaError) as info:
        avro_schema(WIDE_EVENT).encode_soe({"event_time_ms": "x", "service": "a", "step": "b"})
    assert info.value.field == "event_time_ms"


def test_garbage_is_a_schema_error_never_a_library_exception() -> None:
    decoder = WideEventDecoder()
    for data in (b"", None, b"\xc3\x01" + avro_schema(WIDE_EVENT).fingerprint + b"\xff",
                 b"\x00\x00", b"\xff\xfe", b"[]", b"null"):
        with pytest.raises(SchemaError):
            decoder(data)


@pytest.mark.parametrize("encoding", ["avro", "json"])
def test_incident_events_round_trip(encoding: str) -> None:
    record = {"incident_id": "inc_0123456789abcdef", "seq": 1, "kind": "opened",
              "status": "active", "env": "prod", "service": "s", "step": "p",
              "error_code": "E", "family": "s:p:E", "onset_ms": 5, "at_ms": 5,
              "window_count": 5, "baseline": 0.0, "lift": None, "peak_count": 5,
              "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": "payment",
              "sample_trace_ids": ["4bf92f3577b34da6a3ce929d0e0e4736"], "phase": "triggered",
              "action_id": None, "actor": None, "note": None, "title": None,
              "hypothesis_status": None, "added": [], "removed": [],
              "news_signature": None, "news_cause": None, "report_hash": None,
              "timeline": None, "rules_hash": None}
    assert decode_incident(encode_incident(record, encoding)) == record  # type: ignore[arg-type]
    assert avro_schema(INCIDENT_EVENT).fields == list(record)
    ruled = {**record, "rules_hash": "sha256:" + "1" * 64}  # decided under a rules file
    assert decode_incident(encode_incident(ruled, encoding)) == ruled  # type: ignore[arg-type]
    action = {**record, "seq": 2, "kind": "hypothesis", "phase": "investigating",
              "action_id": "act_0123456789abcdef", "actor": "ana", "note": "pool size?",
              "title": "the pool is too small", "hypothesis_status": "proposed"}
    assert decode_incident(encode_incident(action, encoding)) == action  # type: ignore[arg-type]
    news = {**record, "seq": 3, "kind": "updated", "added": ["alert:sig_1"],
            "removed": ["deploy:sig_2"], "news_signature": "news_0123456789abcdef",
            "news_cause": "deploy/deploy_before_onset -> dependency/dependency_signal",
            "report_hash": "sha256:" + "0" * 64}
    assert decode_incident(encode_incident(news, encoding)) == news  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ["avro", "json"])
def test_a_timeline_travels_whole_and_a_v2_reader_sees_its_event_as_updated(encoding: str
                                                                            ) -> None:
    """The timeline (ADR 0019) round-trips in both encodings, floats staying floats; a
    reader of incident_event.v2 reads the `timeline` event as `updated`, which it skips."""
    timeline = Timeline.start(600_000, TimelineConfig(), 30_000)
    timeline.advance(25)
    for i in range(10, 26):
        timeline.put_errors(i, i - 10)
        timeline.put_step(i, 40, {duration_bin(120.0 + i): 30, duration_bin(900.0): 10})
    timeline.resolve(700_000)
    record = {"incident_id": "inc_0123456789abcdef", "seq": 4, "kind": "timeline",
              "status": "resolved", "env": "prod", "service": "s", "step": "p",
              "error_code": "E", "family": "s:p:E", "onset_ms": 600_000, "at_ms": 1_320_000,
              "window_count": 0, "baseline": 0.0, "lift": None, "peak_count": 5,
              "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": None,
              "sample_trace_ids": [], "phase": "resolved", "action_id": None, "actor": None,
              "note": None, "title": None, "hypothesis_status": None, "added": [],
              "removed": [], "news_signature": None, "news_cause": None,
              "report_hash": None, "timeline": timeline.view(complete=True),
              "rules_hash": None}
    data = encode_incident(record, encoding)  # type: ignore[arg-type]
    assert decode_incident(data) == record
    assert decode_incident(data)["timeline"]["summary"]["errors"]["max"] == 15.0
    if encoding == "avro":
        v2 = fastavro.parse_schema(json.loads(schema_text(INCIDENT_EVENT_V2)))
        old = fastavro.schemaless_reader(io.BytesIO(data[10:]), avro_schema(
            INCIDENT_EVENT).parsed, v2)
        assert isinstance(old, dict)
        assert old["kind"] == "updated" and "timeline" not in old


def test_incident_events_written_as_v2_read_with_no_timeline() -> None:
    v2 = {"incident_id": "inc_0123456789abcdef", "seq": 1, "kind": "acknowledged",
          "status": "active", "env": "prod", "service": "s", "step": "p",
          "error_code": "E", "family": "s:p:E", "onset_ms": 5, "at_ms": 5,
          "window_count": 5, "baseline": 0.0, "lift": None, "peak_count": 5,
          "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": None,
          "sample_trace_ids": [], "phase": "acknowledged", "action_id": "act_1",
          "actor": "ana", "note": None, "title": None, "hypothesis_status": None,
          "added": [], "removed": [], "news_signature": None, "news_cause": None,
          "report_hash": None}
    data = avro_schema(INCIDENT_EVENT_V2).encode_soe(v2)
    assert decode_incident(data) == {**v2, "timeline": None, "rules_hash": None}


def test_incident_events_written_as_v1_read_as_v2_reads_them() -> None:
    """A log written before operator actions (incident_event.v1) still reads: the machine's
    changes, with v2's defaults for what v1 had not (ADR 0016)."""
    v1 = {"incident_id": "inc_0123456789abcdef", "seq": 1, "kind": "opened",
          "status": "active", "env": "prod", "service": "s", "step": "p",
          "error_code": "E", "family": "s:p:E", "onset_ms": 5, "at_ms": 5,
          "window_count": 5, "baseline": 0.0, "lift": None, "peak_count": 5,
          "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": None,
          "sample_trace_ids": []}
    data = avro_schema(INCIDENT_EVENT_V1).encode_soe(v1)
    assert data[:10] != avro_schema(INCIDENT_EVENT).header
    assert decode_incident(data) == {**v1, "phase": "triggered", "action_id": None,
                                     "actor": None, "note": None, "title": None,
                                     "hypothesis_status": None, "added": [], "removed": [],
                                     "news_signature": None, "news_cause": None,
                                     "report_hash": None, "timeline": None,
                                     "rules_hash": None}


def test_incident_events_written_as_v3_read_with_no_rules_hash() -> None:
    """A log written before the rules file (incident_event.v3) reads with rules_hash null:
    decided under the built-in settings (ADR 0022)."""
    v3 = {"incident_id": "inc_0123456789abcdef", "seq": 1, "kind": "opened",
          "status": "active", "env": "prod", "service": "s", "step": "p",
          "error_code": "E", "family": "s:p:E", "onset_ms": 5, "at_ms": 5,
          "window_count": 5, "baseline": 0.0, "lift": None, "peak_count": 5,
          "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": None,
          "sample_trace_ids": [], "phase": "triggered", "action_id": None, "actor": None,
          "note": None, "title": None, "hypothesis_status": None, "added": [],
          "removed": [], "news_signature": None, "news_cause": None, "report_hash": None,
          "timeline": None}
    data = avro_schema(INCIDENT_EVENT_V3).encode_soe(v3)
    assert data[:10] != avro_schema(INCIDENT_EVENT).header
    assert decode_incident(data) == {**v3, "rules_hash": None}


def test_single_object_header_matches_the_avro_spec_example() -> None:
    # The Avro specification's example: the schema "int" has header C3 01 8F 5C 39 3F 1A D5 75 72.
    assert (0x7275D51A3F395C8F).to_bytes(8, "little") == bytes.fromhex("8f5c393f1ad57572")
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F
