"""OTLP payloads into normalized spans (ADR 0011), from the real fixtures in
shared/fixtures/otel: the Collector Kafka exporter's records, the official OTLP/JSON
examples (uppercase hex ids), and garbage that must be refused with a reason."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

from tocsin.processors.otlp import (
    OtlpError,
    decode_batch,
    decode_spans,
    sniff,
    trace_id_from_key,
)

OTEL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "otel"
BATCH_PB = (OTEL / "trace-3svc-batch.pb").read_bytes()
BATCH_JSON = (OTEL / "trace-3svc-batch.json").read_bytes()
TRACE_ID = "6762b34f4e26ea8e603235a1e58e1b1c"
SERVICES = ("frontend", "checkout", "payment")


def per_service_records() -> dict[str, bytes]:
    """The per-service record values of trace-3svc.kafka-records.json.

    The folder ships the batch but not the ``trace-3svc-<service>.pb`` files the record list
    names. ``make_traces.py`` encodes each service's spans on their own; that is the batch
    split per resource, byte for byte (checked by :func:`test_generator_reproduces_fixtures`).
    """
    batch = TracesData.FromString(BATCH_PB)
    out: dict[str, bytes] = {}
    for rs in batch.resource_spans:
        name = next(kv.value.string_value for kv in rs.resource.attributes
                    if kv.key == "service.name")
        one = TracesData()
        one.resource_spans.append(rs)
        out[f"trace-3svc-{name}.pb"] = one.SerializeToString(deterministic=True)
    return out


def record_value(value_file: str) -> bytes:
    path = OTEL / value_file
    return path.read_bytes() if path.exists() else per_service_records()[value_file]


def test_batch_proto_and_json_decode_to_the_same_spans() -> None:
    proto = decode_batch(BATCH_PB)
    as_json = decode_batch(BATCH_JSON)
    assert (proto.encoding, as_json.encoding) == ("otlp_proto", "otlp_json")
    assert proto.rejected == as_json.rejected == ()
    assert proto.spans == as_json.spans
    assert [(s.service, s.kind, s.name) for s in proto.spans] == [
        ("payment", "server", "POST /api/charge"),
        ("checkout", "client", "POST"),
        ("checkout", "server", "POST /api/checkout"),
        ("frontend", "client", "POST"),
        ("frontend", "server", "GET /cart/checkout"),
    ]


def test_batch_span_fields() -> None:
    spans = {s.span_id: s for s in decode_spans(BATCH_PB)}
    pay = spans["34ba5acef0867ff7"]
    assert pay.trace_id == TRACE_ID
    assert pay.parent_span_id == "8698e95fb8d058ea"
    assert pay.parent_is_remote is True  # flags 768: the parent is checkout's client span
    assert (pay.env, pay.service_version, pay.scope) == (
        "production", "0.9.4", "heldout.fixtures.make_traces")
    assert (pay.start_ms, pay.end_ms, pay.duration_ms) == (1714564800012, 1714564800056, 44.0)
    assert (pay.status, pay.http_method, pay.http_route, pay.http_status) == (
        "error", "POST", "/api/charge", 500)
    assert pay.exception_type == "__main__.PaymentDeclinedError"
    assert pay.exception_message == "card processor returned 'do_not_honor' for amount=4999"
    assert (pay.error, pay.error_code) == (True, "PaymentDeclinedError")
    assert pay.error_message == "card processor returned 'do_not_honor' for amount=4999"
    root = spans["8661abe05b1b90b4"]
    assert (root.parent_span_id, root.parent_is_remote) == (None, False)
    client = spans["8698e95fb8d058ea"]
    assert client.peer is not None
    assert (client.peer.service, client.peer.endpoint, client.peer.kind) == (
        "payment", "/api/charge", "http")
    assert (client.error_code, client.parent_is_remote) == ("HTTP_500", False)


def kafka_records() -> list[tuple[str, dict[str, object]]]:
    doc = json.loads((OTEL / "trace-3svc.kafka-records.json").read_text())
    return [(config, record) for config, body in doc.items() if isinstance(body, dict)
            for record in body["records"]]


@pytest.mark.parametrize(("config", "record"), kafka_records(),
                         ids=lambda v: v if isinstance(v, str) else str(v["value_file"]))
def test_every_kafka_record_decodes(config: str, record: dict[str, object]) -> None:
    value = record_value(str(record["value_file"]))
    decoded = decode_batch(value)  # sniffed: nothing in the record says which encoding
    assert decoded.encoding == ("otlp_json" if str(record["value_file"]).endswith(".json")
                                else "otlp_proto")
    assert decoded.rejected == ()
    assert decoded.spans and {s.trace_id for s in decoded.spans} == {TRACE_ID}
    key = record["key"]
    if key is not None:  # partition_traces_by_id: the key is the trace id as hex
        assert trace_id_from_key(str(key).encode()) == TRACE_ID
    else:
        assert trace_id_from_key(None) is None


def test_per_service_records_hold_the_batch() -> None:
    doc = json.loads((OTEL / "trace-3svc.kafka-records.json").read_text())
    spans = [s for r in doc["per_service_collectors"]["records"]
             for s in decode_spans(record_value(r["value_file"]))]
    assert sorted(spans, key=lambda s: s.span_id) == sorted(decode_spans(BATCH_PB),
                                                            key=lambda s: s.span_id)
    assert {s.service for s in spans} == set(SERVICES)


def test_generator_reproduces_fixtures(tmp_path: Path) -> None:
    """make_traces.py (official SDK + encoder) still writes the shipped bytes, and its
    per-service files are the batch split per resource."""
    shutil.copy(OTEL / "make_traces.py", tmp_path)
    subprocess.run([sys.executable, "make_traces.py"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    assert (tmp_path / "trace-3svc-batch.pb").read_bytes() == BATCH_PB
    assert (tmp_path / "trace-3svc-batch.json").read_bytes() == BATCH_JSON
    for name, value in per_service_records().items():
        assert (tmp_path / name).read_bytes() == value
        assert decode_spans((tmp_path / name.replace(".pb", ".json")).read_bytes()) == \
            decode_spans(value)


def test_official_example_with_uppercase_hex_ids() -> None:
    decoded = decode_batch((OTEL / "proto-examples" / "otlp-proto-examples-trace.json")
                           .read_bytes())
    (span,) = decoded.spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173")
    assert (span.service, span.kind, span.name, span.scope) == (
        "my.service", "server", "I'm a server span", "my.library")
    assert (span.start_ms, span.end_ms, span.duration_ms) == (1544712660000, 1544712661000,
                                                              1000.0)
    assert (span.env, span.status, span.error, span.parent_is_remote) == (
        None, "unset", False, None)


@pytest.mark.parametrize(("name", "signal"), [("logs", "resourceLogs"),
                                              ("events", "resourceLogs"),
                                              ("metrics", "resourceMetrics")])
def test_other_signals_are_refused_by_name(name: str, signal: str) -> None:
    data = (OTEL / "proto-examples" / f"otlp-proto-examples-{name}.json").read_bytes()
    with pytest.raises(OtlpError, match=f"OTLP {signal}, not traces"):
        decode_batch(data)


GARBAGE = [
    b"\x00\x01\x02\x03",
    b"hello world",
    b"\xff" * 16,
    b"{not json",
    b"[1, 2, 3]",
    b'"a string"',
    b'{"event_time_ms": 1, "service": "a wide event on the wrong topic"}',
    b'{"resourceSpans": {"not": "an array"}}',
    b'{"resourceSpans": [1]}',
    b'{"resourceSpans": [{"scopeSpans": "nope"}]}',
    BATCH_PB[: len(BATCH_PB) // 2],
    BATCH_JSON[: len(BATCH_JSON) // 2],
    random.Random(5).randbytes(512),
    random.Random(6).randbytes(64),
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_raises_otlp_error(data: bytes) -> None:
    with pytest.raises(OtlpError) as info:
        decode_batch(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(("otlp_proto: ", "otlp_json: "))


def test_tombstone_is_refused_and_empty_is_an_empty_request() -> None:
    with pytest.raises(OtlpError, match="tombstone"):
        decode_batch(None)
    assert decode_batch(b"").spans == ()
    assert decode_batch(b"{}").spans == ()


def test_forced_encoding() -> None:
    assert decode_batch(BATCH_JSON, "otlp_json").spans == decode_batch(BATCH_PB, "otlp_proto").spans
    with pytest.raises(OtlpError, match="otlp_json: not valid JSON"):
        decode_batch(BATCH_PB, "otlp_json")
    with pytest.raises(OtlpError, match="otlp_proto: "):
        decode_batch(BATCH_JSON, "otlp_proto")
    with pytest.raises(OtlpError, match="unknown encoding"):
        decode_batch(BATCH_PB, "jaeger_proto")  # type: ignore[arg-type]


def test_json_with_leading_newline_and_proto_that_starts_like_it() -> None:
    """0x0A is both a newline and TracesData's first tag: "\\n{" is JSON or a proto whose
    first ResourceSpans is 123 bytes long. Both must decode."""
    assert sniff(b"\n" + BATCH_JSON) == "otlp_proto"
    assert decode_batch(b"\n" + BATCH_JSON).spans == decode_batch(BATCH_JSON).spans
    span = Span(trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex("34ba5acef0867ff7"),
                name="x", kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1,
                end_time_unix_nano=2)
    rs = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    rs.scope_spans[0].spans[0].name += "x" * (123 - rs.ByteSize())
    assert rs.ByteSize() == 123
    message = TracesData(resource_spans=[rs])
    data = message.SerializeToString()
    assert data[:2] == b"\n{"
    (decoded,) = decode_spans(data)
    assert (decoded.span_id, decoded.kind) == ("34ba5acef0867ff7", "server")


def test_sniff() -> None:
    assert sniff(BATCH_PB) == "otlp_proto"
    assert sniff(BATCH_JSON) == "otlp_json"
    assert sniff(b"  {}") == "otlp_json"
    assert sniff(b"\xef\xbb\xbf{}") == "otlp_json"
    assert decode_batch(b"\xef\xbb\xbf" + BATCH_JSON).spans == decode_batch(BATCH_JSON).spans


@pytest.mark.parametrize(("key", "expected"), [
    (None, None),
    (TRACE_ID.encode(), TRACE_ID),
    (TRACE_ID.upper().encode(), TRACE_ID),
    (bytes.fromhex(TRACE_ID), TRACE_ID),  # 2021 exporters: the raw 16 bytes
    (b"checkout", None),
    (b"z" * 32, None),
])
def test_trace_id_from_key(key: bytes | None, expected: str | None) -> None:
    assert trace_id_from_key(key) == expected


def json_payload(*spans: dict[str, object]) -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "payment"}},
            {"key": "deployment.environment.name", "value": {"stringValue": "staging"}},
            {"key": "deployment.environment", "value": {"stringValue": "ignored"}},
        ]},
        "scopeSpans": [{"scope": {"name": "lib"}, "spans": list(spans)}],
    }]}).encode()


GOOD = {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
        "name": "charge", "startTimeUnixNano": "1544712660000000000",
        "endTimeUnixNano": 1544712660250000000}


def test_json_enum_names_and_numbers_as_numbers() -> None:
    (span,) = decode_spans(json_payload({
        **GOOD, "kind": "SPAN_KIND_CLIENT", "flags": "256", "parentSpanId": "",
        "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
        "attributes": [
            {"key": "rpc.system", "value": {"stringValue": "grpc"}},
            {"key": "rpc.service", "value": {"stringValue": "bank.Cards"}},
            {"key": "rpc.method", "value": {"stringValue": "Charge"}},
            {"key": "rpc.grpc.status_code", "value": {"intValue": 14}},
            {"key": "enduser.id", "value": {"stringValue": "u-1"}},
            {"key": "other", "value": {"kvlistValue": {"values": []}}},
        ],
        "unknownField": {"is": "ignored"},
    }))
    assert (span.kind, span.status, span.parent_span_id, span.parent_is_remote) == (
        "client", "error", None, False)
    assert (span.service, span.env, span.user_id, span.duration_ms) == (
        "payment", "staging", "u-1", 250.0)
    assert (span.grpc_status, span.error_code, span.error_message) == (14, "GRPC_14", "boom")
    assert span.peer is not None
    assert (span.peer.service, span.peer.endpoint, span.peer.kind) == (
        "bank.Cards", "bank.Cards/Charge", "grpc")


@pytest.mark.parametrize(("change", "reason"), [
    ({"traceId": "W4/v95gDgQPSabYzgT/GDA=="}, "traceId: must be 32 hex characters"),
    ({"traceId": "00000000000000000000000000000000"}, "traceId: all zeroes"),
    ({"spanId": "abc"}, "spanId: must be 16 hex characters"),
    ({"spanId": None}, "spanId: must be 16 hex characters"),
    ({"parentSpanId": 12}, "parentSpanId: must be 16 hex characters"),
    ({"startTimeUnixNano": "0"}, "startTimeUnixNano: required"),
    ({"endTimeUnixNano": None}, "endTimeUnixNano: required"),
    ({"endTimeUnixNano": "-5"}, "endTimeUnixNano: required"),
])
def test_bad_span_is_rejected_and_neighbours_kept(change: dict[str, object],
                                                  reason: str) -> None:
    decoded = decode_batch(json_payload(GOOD, {**GOOD, **change}, GOOD))
    assert len(decoded.spans) == 2
    (rejected,) = decoded.rejected
    assert rejected.path == "resourceSpans[0].scopeSpans[0].spans[1]"
    assert rejected.reason.startswith(reason)


def test_bad_proto_span_is_rejected_and_neighbours_kept() -> None:
    message = TracesData.FromString(BATCH_PB)
    message.resource_spans[1].scope_spans[0].spans[0].trace_id = b"\x01\x02"
    message.resource_spans[2].scope_spans[0].spans[1].end_time_unix_nano = 0
    decoded = decode_batch(message.SerializeToString())
    assert len(decoded.spans) == 3
    assert [(r.path, r.reason) for r in decoded.rejected] == [
        ("resourceSpans[1].scopeSpans[0].spans[0]", "traceId: must be 16 bytes, got 2"),
        ("resourceSpans[2].scopeSpans[0].spans[1]",
         "endTimeUnixNano: required, nanoseconds since the epoch"),
    ]


def test_missing_service_name_is_the_sdk_default() -> None:
    data = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [GOOD]}]}]}).encode()
    (span,) = decode_spans(data)
    assert (span.service, span.env, span.scope, span.kind) == (
        "unknown_service", None, None, "internal")


def test_the_span_fields_keep_their_order() -> None:
    # make_span, the by-trace wire and checkpoints build spans positionally, in this order
    from dataclasses import fields

    from tocsin.processors.otlp.spans import Span as TocsinSpan
    assert [f.name for f in fields(TocsinSpan)] == [
        "trace_id", "span_id", "parent_span_id", "parent_is_remote", "service", "env",
        "service_version", "scope", "name", "kind", "start_ms", "end_ms", "duration_ms",
        "status", "http_method", "http_route", "http_status", "grpc_status",
        "exception_type", "exception_message", "peer", "user_id", "error", "error_code",
        "error_message"]
