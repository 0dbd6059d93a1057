"""Property-based fuzz of every decoder: wide events (JSON, Avro single-object encoding,
Confluent framing), incident events, signal records, each webhook parser, OTLP protobuf
and OTLP/JSON, the span → wide event mapping, and the event field mapping (ADR 0013).

The contract under test: bad input is always the decoder's own typed error
(:class:`SchemaError`, :class:`IntakeError`, :class:`OtlpError`, :class:`MappingError`),
never a library or
arithmetic exception that would crash a worker or answer an HTTP 500; what decodes is well
typed (and, where the contract says so, encodes as its Avro schema).

Inputs: arbitrary bytes, and real payloads (``../shared/fixtures`` and the documented
shapes) mutated: values replaced by JSON of other types, keys dropped or added, deep
nesting, huge numbers, NaN-like and time-like strings, invalid UTF-8, truncation, bit flips
in the Avro and protobuf encodings.

The bugs found in ``processors/signals`` and ``streams/stages/triage.py`` (times past year 9999,
Sentry's ``timestamp`` of 1e308, integers beyond signal.v1's int and long, signal records
whose maps are not objects or whose JSON form has the wrong types) are fixed; their
reproducers are at the end of this file, and the fuzz tests tolerate none of them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

from tests.fixtures_io import FIXTURES
from tocsin.processors.mapping import (
    EventMapping,
    MappingError,
    load_mapping,
    mapped_decoder,
    parse_mapping,
)
from tocsin.processors.otlp import (
    Decoded,
    OtlpError,
    Peer,
    Span,
    decode_batch,
    trace_id_from_key,
    wide_events,
)
from tocsin.processors.otlp.decode import ENCODINGS
from tocsin.processors.otlp.spans import RESOURCE_WANTED, WANTED
from tocsin.processors.signals import PROVIDERS, IntakeError, Signal, intake
from tocsin.processors.signals.model import (
    RUNTIME_SUBTYPES,
    SEVERITIES,
    SIGNAL_TYPES,
    STATES,
    IntakeResult,
)
from tocsin.schemas.codec import (
    AVRO_DIR,
    INCIDENT_EVENT,
    SIGNAL,
    STATUSES,
    WIDE_EVENT,
    AvroSchema,
    SchemaError,
    WideEventDecoder,
    avro_schema,
    decode_incident,
    encode_incident,
    validate_wide_event,
)
from tocsin.schemas.signal_wire import decode_signal

settings.register_profile(
    "fuzz-decoders", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much])
FUZZ = settings.get_profile("fuzz-decoders")

RECEIVED = 1_793_610_000_000
OTEL = FIXTURES / "otel"
BATCH_PB = (OTEL / "trace-3svc-batch.pb").read_bytes()
BATCH_JSON = (OTEL / "trace-3svc-batch.json").read_bytes()
OTLP_EXAMPLE_JSON = (OTEL / "proto-examples" / "otlp-proto-examples-trace.json").read_bytes()

# ---------------------------------------------------------------------- JSON strategies

INT64 = (-(1 << 63), (1 << 63) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
ORJSON_INTS = st.integers(-(1 << 63), (1 << 64) - 1)  # what orjson reads as an int
EDGE_INTS = [0, -1, 1, 137, 500, (1 << 31) - 1, 1 << 31, -(1 << 31) - 1, 1 << 53,
             (1 << 63) - 1, 1 << 63, -(1 << 63), (1 << 64) - 1]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1e16, 1e300, -1e300, 1e308, -1e308, 5e-324, 2.0 ** 63,
               1_566_248_777.677]
EDGE_STRINGS = [
    "", " ", "NaN", "-NaN", "nan", "Infinity", "-Infinity", "inf", "1e999", "-0", "0x1F",
    "--1", "-", "+5", "007", "\u0661\u0662\u0663", "\uff11\uff12", "9" * 5000, "1" * 25,
    "18446744073709551616",
    "0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999999+00:00", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z",
    "2026-11-02T24:00:00Z", "2026-11-02T09:00:00", "2026-11-02 09:00:00 +0200",
    "2026-11-02T09:00:00.123456789+01:00", "2026-11-02T09:00:00+99:99", "1970-01-01T00:00:00Z",
    "\x00", "\u2028", "\U0010ffff", "ff" * 16, "FF" * 8, "00" * 16, "00" * 8, "null", "true",
    "{}", "[]", "a:b\\c", "firing", "resolved", "error", "critical", "OOMKilled",
    "CrashLoopBackOff", "incident.resolved", "deploy", "trigger", "Pod", "List",
]
TEXT = st.text(max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), ORJSON_INTS, st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EDGE_FLOATS),
    TEXT, st.sampled_from(EDGE_STRINGS),
)


def json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    """Any JSON value; object keys are often ones the decoders read."""
    key = st.sampled_from(keys) | TEXT if keys else TEXT
    return st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=4)), max_leaves=8)


def keys_of(doc: Any, out: set[str] | None = None) -> set[str]:
    out = set() if out is None else out
    if isinstance(doc, dict):
        out.update(doc)
        for value in doc.values():
            keys_of(value, out)
    elif isinstance(doc, list):
        for value in doc:
            keys_of(value, out)
    return out


def slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``doc``, in a stable order."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else \
            enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            out.append((node, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return out


def retyped(value: Any) -> Any:
    """The same content as another JSON type."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(n): v for n, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


MUTATIONS = ("replace", "drop", "nest", "edge", "retype", "add", "empty")


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Any], keys: list[str]) -> Any:
    """A seed document with a few structural mutations."""
    holder = [copy.deepcopy(draw(st.sampled_from(seeds)))]
    values = json_values(keys)
    for _ in range(draw(st.integers(0, 4))):
        parent, key = draw(st.sampled_from([(holder, 0), *slots(holder[0])]))
        op = draw(st.sampled_from(MUTATIONS))
        value = parent[key]
        if op == "replace":
            parent[key] = draw(values)
        elif op == "drop" and parent is not holder:
            del parent[key]
        elif op == "nest":
            for _ in range(draw(st.integers(1, 50))):  # orjson writes 254 levels at most
                value = [value] if draw(st.booleans()) else {draw(st.sampled_from(keys)): value}
            parent[key] = value
        elif op == "edge":
            parent[key] = draw(st.sampled_from(EDGE_STRINGS + EDGE_INTS + EDGE_FLOATS))
        elif op == "retype":
            parent[key] = retyped(value)
        elif op == "add" and isinstance(value, dict):
            value[draw(st.sampled_from(keys))] = draw(values)
        elif op == "empty":
            parent[key] = draw(st.sampled_from([None, "", [], {}, 0]))
    return holder[0]


INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                b"\\ud800", b"\x00", b"\xef\xbb\xbf"]


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as it is, or truncated, bit-flipped, with bytes inserted or overwritten."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(("flip", "flip", "flip", "truncate", "insert", "utf8",
                                   "delete", "varint")))
        at = draw(st.integers(0, len(buf)))
        if op == "flip" and at < len(buf):
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "utf8":
            buf[at:at] = draw(st.sampled_from(INVALID_UTF8))
        elif op == "delete":
            del buf[at:at + draw(st.integers(1, 16))]
        elif op == "varint":  # a huge length or count in Avro / protobuf
            buf[at:at + 1] = b"\xff" * draw(st.integers(1, 10)) + b"\x01"
    return bytes(buf)


def json_bytes(seeds: list[Any]) -> st.SearchStrategy[bytes]:
    """Mutated seeds as JSON; a third of them also damaged as bytes."""
    plain = mutated(seeds, sorted(keys_of(seeds))).map(orjson.dumps)
    return st.one_of(plain, plain, plain.flatmap(damaged))


def deep_json() -> st.SearchStrategy[bytes]:
    """Nesting beyond any parser's limit."""
    return st.integers(1, 4000).flatmap(lambda n: st.sampled_from([
        b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n, b"[" * n]))


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def opt(value: object, kind: type | tuple[type, ...]) -> bool:
    return value is None or isinstance(value, kind)


# ---------------------------------------------------------------------- wide events

WIDE_EVENT_SEEDS: list[dict[str, Any]] = [
    {"event_time_ms": 1_793_610_000_000, "service": "checkout", "step": "payment.charge",
     "status": "error", "error_code": "PMT_502", "env": "prod",
     "downstream": {"service": "payment", "endpoint": "/charge", "kind": "http"},
     "steps": [{"name": "payment.charge", "status": "error", "error_code": "PMT_502",
                "error_message": "declined", "duration_ms": 12.5,
                "downstream": {"service": "payment", "endpoint": None, "kind": None}}],
     "attributes": {"region": "eu-west-1", "retries": 2, "flags": ["a"]}},
    {"timestamp": "2026-11-02T09:00:00.5+01:00", "service": "a", "step": "b"},
    {"event_time_ms": 0, "service": "s", "step": "t", "status": "suppressed",
     "duration_ms": 3, "service_version": "1.2.3", "trace_id": "ab" * 16,
     "span_id": "cd" * 8, "parent_span_id": None, "user_id": "u1", "request_id": "r1",
     "error_message": "boom", "steps": [], "attributes": {}},
]
WIDE_AVRO = avro_schema(WIDE_EVENT)
WIDE_AVRO_SEEDS = [WIDE_AVRO.encode_soe(validate_wide_event(copy.deepcopy(e)))
                   for e in WIDE_EVENT_SEEDS]
OPT_STR_FIELDS = ("error_code", "error_message", "service_version", "trace_id", "span_id",
                  "parent_span_id", "user_id", "request_id")


def check_downstream(down: object, validated: bool) -> None:
    assert opt(down, dict)
    if isinstance(down, dict):
        assert isinstance(down["service"], str) and (down["service"] or not validated)
        assert opt(down.get("endpoint"), str) and opt(down.get("kind"), str)


def check_wide_event(event: object, validated: bool = True) -> None:
    """Well typed; ``validated``: also the rules JSON is held to (ADR 0001)."""
    assert isinstance(event, dict)
    t = event["event_time_ms"]
    assert is_int(t)
    for key in ("service", "step", "env"):
        assert isinstance(event[key], str) and (event[key] or not validated), key
    assert event["status"] in STATUSES
    for key in OPT_STR_FIELDS:
        assert opt(event.get(key), str), key
    duration = event.get("duration_ms")
    assert duration is None or (isinstance(duration, int | float)
                                and not isinstance(duration, bool))
    check_downstream(event.get("downstream"), validated)
    steps = event.get("steps")
    assert opt(steps, list)
    for step in steps or ():
        assert isinstance(step, dict) and isinstance(step["name"], str)
        assert step["name"] or not validated
        assert step["status"] in STATUSES
        assert opt(step.get("error_code"), str) and opt(step.get("error_message"), str)
        check_downstream(step.get("downstream"), validated)
    attributes = event.get("attributes")
    assert opt(attributes, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in (attributes or {}).items())
    if validated:
        assert 0 <= t < 1 << 53


def decode_wide(decoder: WideEventDecoder, data: bytes, validated: bool) -> None:
    try:
        decoded = decoder(data)
    except SchemaError as exc:
        assert str(exc)
        note_event(f"SchemaError on {exc.field or 'the record'}".split("[")[0])
        return
    note_event("decoded")
    check_wide_event(decoded, validated)
    if validated:  # what JSON or a registry's writer schema gave is a wide_event.v1 record
        WIDE_AVRO.encode_soe({k: v for k, v in decoded.items() if v is not None})  # null: absent


RELEASED_WIDE_AVRO = AvroSchema.from_text(
    "registry:2", (AVRO_DIR / "released" / f"{WIDE_EVENT}.avsc").read_text())


def registry_lookup(schema_id: int) -> AvroSchema:
    """A registry that knows the current wide_event.v1 (1) and the released one (2)."""
    if schema_id == 1:
        return WIDE_AVRO
    if schema_id == 2:
        return RELEASED_WIDE_AVRO
    raise SchemaError(f"schema id {schema_id} unknown to the registry")


WIDE_DECODER = WideEventDecoder(registry_lookup)


@FUZZ
@given(st.binary(max_size=600) | deep_json())
@example(b"\xc3\x01")
@example(b"\x00\x00\x00\x00\x01")
def test_wide_event_decoder_on_arbitrary_bytes(data: bytes) -> None:
    decode_wide(WideEventDecoder(), data, validated=True)
    decode_wide(WIDE_DECODER, data, validated=data[:1] != b"\xc3")


@FUZZ
@given(json_bytes(WIDE_EVENT_SEEDS))
@example(b'{"event_time_ms":1,"service":"a","step":"b","status":[]}')
@example(b'{"event_time_ms":1,"service":"a","step":"b","steps":[{"name":"x","status":{}}]}')
@example(b'{"event_time_ms":1,"service":"a","step":"b","steps":[{"name":"x","duration_ms":""}]}')
def test_wide_event_json_mutated(data: bytes) -> None:
    decode_wide(WIDE_DECODER, data, validated=True)


@st.composite
def valid_wide_events(draw: st.DrawFn) -> dict[str, Any]:
    text, some = st.text(min_size=1, max_size=10), st.none() | st.text(max_size=10)
    down = st.none() | st.fixed_dictionaries({"service": text, "endpoint": some, "kind": some})
    event = {
        "event_time_ms": draw(st.integers(0, (1 << 53) - 1)), "service": draw(text),
        "step": draw(text), "env": draw(text), "status": draw(st.sampled_from(sorted(STATUSES))),
        **{k: draw(some) for k in OPT_STR_FIELDS},
        "duration_ms": draw(st.none() | st.floats(allow_nan=False)),
        "downstream": draw(down),
        "steps": draw(st.lists(st.fixed_dictionaries({
            "name": text, "status": st.sampled_from(sorted(STATUSES)), "error_code": some,
            "error_message": some, "duration_ms": st.none() | st.floats(), "downstream": down,
        }), max_size=3)),
        "attributes": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                           max_size=3)),
    }
    return event


@FUZZ
@given(st.sampled_from(WIDE_AVRO_SEEDS) | valid_wide_events().map(WIDE_AVRO.encode_soe),
       st.data())
def test_wide_event_avro_single_object_bit_flips(valid: bytes, data: st.DataObject) -> None:
    # The single-object path is checked by the schema alone (ADR 0001): well typed, but an
    # empty service or a negative time is the schema's to allow.
    decode_wide(WIDE_DECODER, data.draw(damaged(valid)), validated=False)


@FUZZ
@given(st.sampled_from(WIDE_AVRO_SEEDS) | valid_wide_events().map(WIDE_AVRO.encode_soe),
       st.sampled_from([0, 1, 2, 3, 1 << 31]), st.data())
def test_wide_event_confluent_framing_bit_flips(valid: bytes, schema_id: int,
                                                data: st.DataObject) -> None:
    framed = b"\x00" + schema_id.to_bytes(4, "big") + valid[10:]
    decode_wide(WIDE_DECODER, data.draw(damaged(framed)), validated=True)
    decode_wide(WideEventDecoder(), framed, validated=True)


# ---------------------------------------------------------------------- incident events

INCIDENT = {"incident_id": "inc_0123456789abcdef", "seq": 1, "kind": "opened",
            "status": "active", "env": "prod", "service": "s", "step": "p",
            "error_code": "E", "family": "s:p:E", "onset_ms": 5, "at_ms": 5,
            "window_count": 5, "baseline": 0.0, "lift": None, "peak_count": 5,
            "error_count": 5, "last_error_ms": 5, "rule": "spike.v1", "downstream": "payment",
            "sample_trace_ids": ["4bf92f3577b34da6a3ce929d0e0e4736"], "phase": "triggered",
            "action_id": None, "actor": None, "note": None, "title": None,
            "hypothesis_status": None, "added": [], "removed": [], "news_signature": None,
            "news_cause": None, "report_hash": None, "timeline": None,
            "rules_hash": None}


def incident_lookup(schema_id: int) -> AvroSchema:
    if schema_id == 7:
        return avro_schema(INCIDENT_EVENT)
    raise SchemaError(f"schema id {schema_id} unknown to the registry")


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    json_bytes([INCIDENT]),
    st.just(encode_incident(INCIDENT, "avro")).flatmap(damaged),
    st.just(b"\x00\x00\x00\x00\x07" + encode_incident(INCIDENT, "avro")[10:]).flatmap(damaged),
))
def test_incident_event_decoder(data: bytes) -> None:
    for lookup in (None, incident_lookup):
        try:
            decoded = decode_incident(data, lookup)
        except SchemaError:
            note_event("SchemaError")
            continue
        note_event("decoded")
        assert isinstance(decoded, dict)
        assert all(isinstance(k, str) for k in decoded)


# ---------------------------------------------------------------------- webhook parsers


def fixture_payloads() -> list[Any]:
    docs: list[Any] = []
    for folder in ("alertmanager", "grafana", "pagerduty", "kubernetes"):
        for path in sorted((FIXTURES / folder).glob("*.json")):
            docs.append(orjson.loads(path.read_bytes()))
        for path in sorted((FIXTURES / folder).glob("*.ndjson")):
            docs.extend(orjson.loads(line) for line in path.read_bytes().splitlines()
                        if line.strip())
    return docs


# Providers without a shared fixture: their documented shapes (module docstrings).
SHAPE_SEEDS: list[Any] = [
    {"action": "triggered", "actor": {"id": "sentry"}, "data": {
        "triggered_rule": "rule", "event": {
            "issue_id": "1117540176", "title": "ReferenceError: heck", "level": "error",
            "datetime": "2019-08-19T21:06:17.677000Z", "timestamp": 1566248777.677,
            "type": "error", "culprit": "?(<anonymous>)", "environment": "prod",
            "hashes": ["29f7ffc4903a8a990408b80a3b4c95a2"],
            "url": "https://sentry.io/api/0/projects/test-org/front-end/events/e48/",
            "web_url": "https://sentry.io/organizations/test-org/issues/1117540176/",
            "exception": {"values": [{"type": "ReferenceError", "value": "heck",
                                      "mechanism": {"type": "onerror", "handled": False}}]},
            "contexts": {"trace": {"trace_id": "ab" * 16}},
            "metadata": {"type": "ReferenceError"},
            "tags": [["service", "front"], ["environment", "prod"], {"key": "k", "value": 1}],
        }}},
    {"action": "created", "installation": {"uuid": "x"}, "data": {"issue": {
        "id": "1170820242", "title": "Error: x", "culprit": "y", "level": "fatal",
        "status": "unresolved", "type": "error", "isUnhandled": True, "shortId": "P-1",
        "firstSeen": "2019-08-19T20:58:37.391000Z", "lastSeen": "2019-08-19T21:58:37Z",
        "project": {"slug": "front-end"}, "metadata": {"type": "Error"},
        "web_url": "https://sentry.io/i/1"}}},
    {"deployment_status": {"state": "success", "environment": "production",
                           "created_at": "2019-05-15T15:20:55Z", "target_url": "https://x",
                           "description": "ok"},
     "deployment": {"id": 145988746, "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                    "ref": "v1.2.3", "environment": "production", "task": "deploy",
                    "created_at": "2019-05-15T15:20:53Z", "creator": {"login": "octo"},
                    "payload": {"service": "checkout", "version": "1.2.3",
                                "tocsin_incident_id": "inc_1"}},
     "repository": {"name": "hello", "full_name": "octo/hello",
                    "html_url": "https://github.com/octo/hello"},
     "workflow_run": {"pull_requests": [{"number": 7}]}, "sender": {"login": "octo"}},
    {"object_kind": "deployment", "status": "success", "deployment_id": 15,
     "status_changed_at": "2021-04-28 21:50:00 +0200", "environment": "staging",
     "environment_tier": "staging", "deployable_url": "https://gitlab.example/jobs/1",
     "project": {"name": "test", "path_with_namespace": "group/test"},
     "short_sha": "279484c0", "commit_url": "https://gitlab.example/commit/279484c09f",
     "commit_title": "Add file", "user": {"username": "root"}},
    {"event": "deploy", "service": "checkout", "environment": "prod", "version": "1.8.0",
     "commit": "abc123", "pr_url": "https://x/pull/1", "author": "me", "url": "https://x",
     "status": "success", "id": "d-1", "timestamp": "2026-11-20T10:00:00Z",
     "started_at": "2026-11-20T09:58:00Z", "labels": {"team": "pay"}},
    {"type": "dependency", "service": "checkout", "downstream": "payment", "reason": "5xx",
     "event_time_ms": RECEIVED, "severity": "critical", "labels": {"region": "eu"},
     "annotations": {"tocsin_incident_id": "inc_1"}},
    {"type": "runtime", "runtime_subtype": "panic", "service": "api", "pod": "api-1",
     "timestamp": "2026-11-02T09:00:00Z", "exit_code": 2, "restart_count": 3,
     "occurrences": 2, "fingerprint": "fp"},
    {"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "p-1", "uid": "u"},
                                "status": {"containerStatuses": [{"name": "c"}]}}]},
    {"type": "MODIFIED", "object": {"involvedObject": {"kind": "Pod", "name": "web-1"},
                                    "reason": "Unhealthy", "message": "Liveness probe failed",
                                    "lastTimestamp": "2026-11-02T09:00:00Z"}},
]
PAYLOAD_SEEDS = fixture_payloads() + SHAPE_SEEDS

INT_RANGES = {"event_time_ms": INT64, "starts_at_ms": INT64, "ends_at_ms": INT64,
              "exit_code": INT32, "restart_count": INT32, "occurrences": INT32}
OPT_SIGNAL_STR = ("service", "env", "reason", "description", "fingerprint", "provider_url",
                  "incident_id", "trace_id", "error_code", "downstream", "pod", "container",
                  "node", "version", "commit", "pr_url", "author")


def check_signal(signal: object) -> None:
    """Well typed, and it encodes as signal.v1 (what the intake sends, the fold reads)."""
    assert isinstance(signal, Signal)
    assert re.fullmatch(r"sig_[0-9a-f]{16}", signal.signal_id)
    assert isinstance(signal.dedup_key, str) and signal.dedup_key
    assert signal.type in SIGNAL_TYPES and signal.state in STATES
    assert signal.severity in SEVERITIES
    assert isinstance(signal.source, str) and isinstance(signal.title, str)
    assert signal.runtime_subtype is None or signal.runtime_subtype in RUNTIME_SUBTYPES
    assert is_int(signal.event_time_ms) and is_int(signal.occurrences)
    for key in ("starts_at_ms", "ends_at_ms", "exit_code", "restart_count"):
        assert getattr(signal, key) is None or is_int(getattr(signal, key)), key
    for key in OPT_SIGNAL_STR:
        assert opt(getattr(signal, key), str), key
    for mapping in (signal.labels, signal.annotations):
        assert isinstance(mapping, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    for key, (lo, hi) in INT_RANGES.items():
        assert getattr(signal, key) is None or lo <= getattr(signal, key) <= hi, key
    record = signal.to_dict()
    assert avro_schema(SIGNAL).decode_soe(avro_schema(SIGNAL).encode_soe(record)) == record


def parse_signals(data: bytes, provider: str | None, received_ms: int | None) -> None:
    """What the HTTP intake does with a body: orjson, then the parsers."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        note_event("not JSON")
        return  # the intake's 400 "body is not JSON"
    try:
        result = intake(payload, provider, received_ms=received_ms)
    except IntakeError as exc:
        assert str(exc)
        note_event(f"IntakeError ({exc.provider})")
        return
    note_event(f"{result.provider}: {min(len(result.signals), 2)} signal(s)")
    assert isinstance(result, IntakeResult)
    assert result.provider in PROVIDERS
    assert isinstance(result.signals, tuple) and isinstance(result.skipped, tuple)
    assert all(isinstance(s, str) for s in result.skipped)
    assert is_int(result.truncated) and result.truncated >= 0
    for signal in result.signals:
        check_signal(signal)


PROVIDER_CHOICES = st.sampled_from([None, None, None, *PROVIDERS, "nope"])


@FUZZ
@given(st.binary(max_size=300) | deep_json()
       | json_values(sorted(keys_of(PAYLOAD_SEEDS))).map(orjson.dumps), PROVIDER_CHOICES)
def test_webhook_intake_on_arbitrary_bytes(data: bytes, provider: str | None) -> None:
    parse_signals(data, provider, RECEIVED)


@FUZZ
@given(json_bytes(PAYLOAD_SEEDS), PROVIDER_CHOICES, st.sampled_from([RECEIVED, None, 0]))
def test_webhook_payloads_mutated(data: bytes, provider: str | None,
                                  received_ms: int | None) -> None:
    parse_signals(data, provider, received_ms)


def sniffed(payload: dict[str, Any]) -> str | None:
    try:
        return intake(payload, None, RECEIVED).provider
    except IntakeError:
        return None


# Each parser's own seeds, so that every parser gets a fair share of the examples.
SEEDS_BY_PROVIDER = {p: [s for s in PAYLOAD_SEEDS if sniffed(s) == p] for p in PROVIDERS}
OWN_PAYLOADS = {p: json_bytes(seeds) for p, seeds in SEEDS_BY_PROVIDER.items() if seeds}


@FUZZ
@given(st.sampled_from(sorted(OWN_PAYLOADS)).flatmap(
    lambda p: st.tuples(st.just(p), OWN_PAYLOADS[p])))
def test_each_webhook_parser_on_its_own_payloads_mutated(case: tuple[str, bytes]) -> None:
    provider, data = case
    parse_signals(data, provider, RECEIVED)


# ---------------------------------------------------------------------- signal records


def seed_signals() -> list[Signal]:
    out: list[Signal] = []
    for payload in PAYLOAD_SEEDS:
        try:
            out.extend(intake(payload, None, RECEIVED).signals)
        except IntakeError:
            continue
    return out


SIGNAL_RECORDS = [s.to_dict() for s in seed_signals()]
SIGNAL_AVRO = [avro_schema(SIGNAL).encode_soe(r) for r in SIGNAL_RECORDS]


def decode_signal_record(data: bytes) -> None:
    try:
        signal = decode_signal(data)
    except SchemaError as exc:
        assert str(exc)
        note_event(f"SchemaError on {exc.field or 'the record'}")
        return
    note_event("decoded")
    check_signal(signal)  # the JSON form is held to signal.v1's types as the Avro form is


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.sampled_from(SIGNAL_AVRO).flatmap(damaged),
    json_bytes(SIGNAL_RECORDS),
))
def test_signal_record_decoder(data: bytes) -> None:
    decode_signal_record(data)


# ---------------------------------------------------------------------- OTLP

HEX = re.compile(r"[0-9a-f]+")


def check_span(span: object) -> None:
    assert isinstance(span, Span)
    assert len(span.trace_id) == 32 and HEX.fullmatch(span.trace_id)
    assert len(span.span_id) == 16 and HEX.fullmatch(span.span_id)
    assert span.parent_span_id is None or (len(span.parent_span_id) == 16
                                           and HEX.fullmatch(span.parent_span_id))
    assert isinstance(span.service, str) and span.service
    assert span.kind in ("internal", "server", "client", "producer", "consumer")
    assert span.status in ("unset", "ok", "error")
    assert is_int(span.start_ms) and is_int(span.end_ms) and span.start_ms >= 0
    assert 0 <= span.end_ms < 1 << 53
    assert opt(span.duration_ms, float) and isinstance(span.error, bool)
    for key in ("env", "service_version", "scope", "http_method", "http_route",
                "exception_type", "exception_message", "user_id", "error_code",
                "error_message"):
        assert opt(getattr(span, key), str), key
    assert isinstance(span.name, str)
    assert span.http_status is None or is_int(span.http_status)
    assert span.grpc_status is None or is_int(span.grpc_status)
    assert opt(span.parent_is_remote, bool)
    assert span.peer is None or (isinstance(span.peer, Peer) and isinstance(span.peer.service,
                                                                            str))


def check_mapping(spans: tuple[Span, ...]) -> None:
    """The span → wide event mapping: every event is a valid wide_event.v1, in JSON and
    Avro alike."""
    for event in wide_events(spans):
        check_wide_event(validate_wide_event(copy.deepcopy(event)), validated=True)
        assert WIDE_AVRO.decode_soe(WIDE_AVRO.encode_soe(event)) == event


def decode_otlp(data: bytes, encoding: str | None) -> None:
    try:
        decoded = decode_batch(data, encoding)  # type: ignore[arg-type]
    except OtlpError as exc:
        assert str(exc)
        note_event("OtlpError")
        return
    assert isinstance(decoded, Decoded)
    note_event(f"{decoded.encoding}: {min(len(decoded.spans), 2)} span(s), "
          f"{min(len(decoded.rejected), 1)} rejected")
    assert decoded.encoding in ENCODINGS
    for span in decoded.spans:
        check_span(span)
    assert all(isinstance(r.path, str) and isinstance(r.reason, str)
               for r in decoded.rejected)
    check_mapping(decoded.spans)


OTLP_ENCODINGS = st.sampled_from([None, None, "otlp_proto", "otlp_json", "zstd"])


def one_span_json(start: str = "1", attributes: list[Any] | None = None) -> bytes:
    span = {"traceId": "1" * 32, "spanId": "1" * 16, "startTimeUnixNano": start,
            "endTimeUnixNano": "2", "attributes": attributes or []}
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


@FUZZ
@given(st.binary(max_size=600) | deep_json() | st.binary().map(lambda b: b"\n{" + b),
       OTLP_ENCODINGS)
@example(b"", None)
@example(b"\n{}", None)
def test_otlp_on_arbitrary_bytes(data: bytes, encoding: str | None) -> None:
    decode_otlp(data, encoding)


OTLP_JSON_SEEDS = [orjson.loads(BATCH_JSON), orjson.loads(OTLP_EXAMPLE_JSON)]


@FUZZ
@given(json_bytes(OTLP_JSON_SEEDS), OTLP_ENCODINGS)
@example(one_span_json("--1"), None)  # int("--1"): ValueError
@example(one_span_json("1" * 5000), None)  # int() of over 4300 digits: ValueError
@example(one_span_json(attributes=[{"key": "http.status_code",
                                    "value": {"stringValue": "5" * 5000}}]), "otlp_json")
@example(one_span_json(attributes=[{"key": "http.status_code",
                                    "value": {"intValue": "--5"}}]), "otlp_json")
@example(one_span_json(attributes=[{"key": ["http.route"], "value": {}}]), None)  # unhashable
def test_otlp_json_mutated(data: bytes, encoding: str | None) -> None:
    decode_otlp(data, encoding)


def per_resource_records() -> list[bytes]:
    """The Collector's per-service records: the batch split per resource."""
    out = []
    for rs in TracesData.FromString(BATCH_PB).resource_spans:
        one = TracesData()
        one.resource_spans.append(rs)
        out.append(one.SerializeToString(deterministic=True))
    return out


PROTO_SEEDS = [BATCH_PB, *per_resource_records()]


@FUZZ
@given(st.sampled_from(PROTO_SEEDS).flatmap(damaged), OTLP_ENCODINGS)
def test_otlp_proto_bit_flips(data: bytes, encoding: str | None) -> None:
    decode_otlp(data, encoding)


ATTR_KEYS = sorted(WANTED | RESOURCE_WANTED | {"exception.type", "exception.message", "x"})


@st.composite
def any_values(draw: st.DrawFn, depth: int = 2) -> AnyValue:
    value = AnyValue()
    which = draw(st.sampled_from(("string", "int", "bool", "double", "array", "bytes",
                                  "kvlist", "unset")))
    if which == "string":
        value.string_value = draw(st.sampled_from(EDGE_STRINGS) | TEXT)
    elif which == "int":
        value.int_value = draw(st.integers(*INT64))
    elif which == "bool":
        value.bool_value = draw(st.booleans())
    elif which == "double":
        value.double_value = draw(st.floats())
    elif which == "bytes":
        value.bytes_value = draw(st.binary(max_size=8))
    elif which == "array" and depth:
        value.array_value.values.extend(draw(st.lists(any_values(depth - 1), max_size=3)))
    elif which == "kvlist" and depth:
        value.kvlist_value.values.extend(draw(st.lists(key_values(depth - 1), max_size=2)))
    return value


@st.composite
def key_values(draw: st.DrawFn, depth: int = 2) -> KeyValue:
    key = draw(st.sampled_from(ATTR_KEYS) | TEXT)
    kv = KeyValue(key=key)
    kv.value.CopyFrom(draw(any_values(depth)))
    return kv


BAD_IDS = st.binary(max_size=20) | st.sampled_from([b"\0" * 16, b"\0" * 8])
TRACE_IDS = st.one_of(*[st.binary(min_size=16, max_size=16)] * 9, BAD_IDS)
SPAN_IDS = st.one_of(*[st.binary(min_size=8, max_size=8)] * 9, BAD_IDS)
NANOS = st.one_of(st.integers(1, (1 << 64) - 1), st.sampled_from(
    [0, 1, 999_999, 1_544_712_660_000_000_000, (1 << 63), (1 << 64) - 1]))


@st.composite
def traces_data(draw: st.DrawFn) -> bytes:
    message = TracesData()
    for _ in range(draw(st.integers(0, 2))):
        rs = ResourceSpans()
        rs.resource.attributes.extend(draw(st.lists(key_values(), max_size=4)))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(TEXT)
            for _ in range(draw(st.integers(0, 3))):
                span = ss.spans.add()
                span.trace_id = draw(TRACE_IDS)
                span.span_id = draw(SPAN_IDS)
                span.parent_span_id = draw(st.just(b"") | SPAN_IDS)
                span.flags = draw(st.integers(0, (1 << 32) - 1))
                span.name = draw(TEXT)
                span.kind = draw(st.integers(0, 7))  # type: ignore[assignment]
                span.start_time_unix_nano = draw(NANOS)
                span.end_time_unix_nano = draw(NANOS)
                span.status.code = draw(st.integers(0, 4))  # type: ignore[assignment]
                span.status.message = draw(TEXT)
                span.attributes.extend(draw(st.lists(key_values(), max_size=6)))
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add()
                    event.name = draw(st.sampled_from(["exception", "log", ""]))
                    event.attributes.extend(draw(st.lists(key_values(), max_size=3)))
        message.resource_spans.append(rs)
    return message.SerializeToString()


@FUZZ
@given(traces_data(), st.data())
@example(TracesData(resource_spans=[ResourceSpans()]).SerializeToString(), None)
def test_otlp_proto_generated_requests_and_their_bit_flips(valid: bytes,
                                                           data: st.DataObject | None) -> None:
    decode_otlp(valid, "otlp_proto")
    decode_otlp(valid, None)
    if data is not None:
        decode_otlp(data.draw(damaged(valid)), None)


@FUZZ
@given(st.binary(max_size=40) | st.text("0123456789abcdefABCDEF", min_size=32, max_size=32)
       .map(str.encode) | st.none())
def test_trace_id_from_record_key(key: bytes | None) -> None:
    found = trace_id_from_key(key)
    assert found is None or (len(found) == 32 and HEX.fullmatch(found))


# ---------------------------------------------------------------------- event field mapping

EXAMPLE_MAPPINGS = Path(__file__).resolve().parents[2] / "examples" / "mappings"
# ADR 0013's nested-error example, with a [where] rule, an index from the end, a number.
ANCHORED_TOML = """version = 1
[fields]
event_time_ms = "at"
service = "app.name"
step = "route"
status = { from = "outcome", map = { failed = "error" } }
user_id = 'fields."user.id"'
duration_ms = "took"
[anchor]
name = "steps[].name"
error_code = "steps[].error.code"
downstream = { service = "steps[].error.dependency" }
[attributes]
first = "steps[0].name"
last = "steps[-1].name"
[where]
"steps[]" = { field = "status", not_in = ["ok", "success"] }
"""
ANCHORED_RECORD = {
    "at": "2026-11-02T09:40:00.120Z", "app": {"name": "checkout"}, "route": "POST /checkout",
    "outcome": "failed", "took": 12, "fields": {"user.id": "user-17"},
    "steps": [{"name": "auth", "status": "ok"},
              {"name": "payment.charge", "status": "failed",
               "error": {"code": "PMT_502", "dependency": "payment"}}]}
MAPPING_TOML = [*(p.read_text() for p in sorted(EXAMPLE_MAPPINGS.glob("*.toml"))),
                ANCHORED_TOML]
MAPPINGS = [*(load_mapping(p) for p in sorted(EXAMPLE_MAPPINGS.glob("*.toml"))),
            parse_mapping(ANCHORED_TOML, "anchored")]
MAPPED_RECORDS = [ANCHORED_RECORD, *(orjson.loads(line)
                                     for p in sorted(EXAMPLE_MAPPINGS.glob("*.ndjson"))
                                     for line in p.read_bytes().splitlines() if line.strip())]
MAPPED_DECODERS = [mapped_decoder(m, WIDE_DECODER) for m in MAPPINGS]


@FUZZ
@given(st.one_of(st.binary(max_size=300), deep_json(), json_bytes(MAPPED_RECORDS),
                 st.sampled_from(WIDE_AVRO_SEEDS).flatmap(damaged)),
       st.sampled_from(range(len(MAPPED_DECODERS))))
def test_event_field_mapping_on_mutated_records(data: bytes, which: int) -> None:
    decode_wide(MAPPED_DECODERS[which], data, validated=data[:1] != b"\xc3")


@FUZZ
@given(st.sampled_from(MAPPING_TOML).map(str.encode).flatmap(damaged))
def test_mapping_files_mutated(text: bytes) -> None:
    try:
        mapping = parse_mapping(text.decode("utf-8", "replace"), "fuzzed")
    except MappingError as exc:
        assert str(exc)
        note_event("MappingError")
        return
    note_event("compiled")
    assert isinstance(mapping, EventMapping)
    for record in MAPPED_RECORDS:
        decode_wide(mapped_decoder(mapping, WIDE_DECODER), orjson.dumps(record), True)


# ---------------------------------------------------------------------- reported bugs
# Reproducers of the bugs the fuzz tests found, fixed: each must keep passing.


def test_reported_time_past_year_9999_is_an_intake_error() -> None:
    payload = {"version": "4", "alerts": [{"status": "firing",
                                           "startsAt": "9999-12-31T23:59:59-01:00"}]}
    with pytest.raises(IntakeError):
        intake(payload)


def test_reported_sentry_huge_timestamp_is_an_intake_error() -> None:
    payload = orjson.loads(b'{"action": "triggered", "data": {"event": '
                           b'{"issue_id": "1", "timestamp": 1e308}}}')
    with pytest.raises(IntakeError):
        intake(payload)


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "Pod", "metadata": {"name": "p"}, "status": {
        "startTime": "2026-11-02T09:00:00Z", "containerStatuses": [{"name": "c", "state": {
            "terminated": {"reason": "OOMKilled", "exitCode": 1 << 31}}}]}}, "exit_code"),
    ({"type": "runtime", "event_time_ms": RECEIVED, "restart_count": 1 << 31},
     "restart_count"),
    ({"type": "alert", "event_time_ms": RECEIVED, "ends_at_ms": 1 << 63}, "ends_at_ms"),
    ({"type": "alert", "event_time_ms": RECEIVED, "occurrences": 1 << 31}, "occurrences"),
    ({"type": "alert", "event_time_ms": RECEIVED, "exit_code": -(1 << 31) - 1}, "exit_code"),
])
def test_reported_out_of_range_integers_are_intake_errors(payload: dict[str, Any],
                                                          field: str) -> None:
    with pytest.raises(IntakeError) as refused:
        intake(payload, received_ms=RECEIVED)
    assert refused.value.field == field and refused.value.provider is not None
    assert f"{field}: " in str(refused.value)


@pytest.mark.parametrize("labels", [["a"], None, "a", {"a": 1}])
@pytest.mark.parametrize("key", ["labels", "annotations"])
def test_reported_signal_record_with_a_list_of_labels_is_a_schema_error(
        key: str, labels: object) -> None:
    record = dict(SIGNAL_RECORDS[0], **{key: labels})
    with pytest.raises(SchemaError) as refused:
        decode_signal(orjson.dumps(record))
    assert refused.value.field == key


@pytest.mark.parametrize(("field", "value"), [
    ("event_time_ms", "soon"), ("event_time_ms", 1.5), ("event_time_ms", True),
    ("event_time_ms", 1 << 63), ("occurrences", None), ("exit_code", "137"),
    ("service", 7), ("type", "page"), ("title", None),
])
def test_reported_signal_record_json_with_a_text_time_is_a_schema_error(
        field: str, value: object) -> None:
    record = dict(SIGNAL_RECORDS[0], **{field: value})
    with pytest.raises(SchemaError) as refused:
        decode_signal(orjson.dumps(record))
    assert refused.value.field == field


def test_the_seeds_are_valid_inputs() -> None:
    # Mutations start from inputs that decode; a seed that stopped decoding would leave
    # its decoder fuzzed with garbage only.
    for event in WIDE_EVENT_SEEDS:
        check_wide_event(WIDE_DECODER(orjson.dumps(event)))
    for data in WIDE_AVRO_SEEDS:
        check_wide_event(WIDE_DECODER(data))
    assert set(OWN_PAYLOADS) == set(PROVIDERS)
    assert len(SIGNAL_RECORDS) >= len(PAYLOAD_SEEDS) // 2
    for data in SIGNAL_AVRO:
        check_signal(decode_signal(data))
    for data in [*PROTO_SEEDS, BATCH_JSON, OTLP_EXAMPLE_JSON]:
        assert decode_batch(data).spans
    for decode in MAPPED_DECODERS:
        assert any(not_refused(decode, orjson.dumps(r)) for r in MAPPED_RECORDS)
    assert decode_incident(encode_incident(INCIDENT, "avro")) == INCIDENT


def not_refused(decode: Any, data: bytes) -> bool:
    try:
        check_wide_event(decode(data))
    except SchemaError:
        return False
    return True
