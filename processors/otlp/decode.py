"""OTLP trace payloads (bytes) into normalized :class:`Span` records (ADR 0011).

Two encodings, as the OpenTelemetry Collector's Kafka exporter writes them and as an app
POSTs them to ``/v1/traces``:

- ``otlp_proto``: a serialized ``TracesData`` (the same wire bytes as
  ``ExportTraceServiceRequest``), parsed with the official ``opentelemetry-proto`` classes.
  Only the fields the rules need are read off the message objects (``MessageToDict`` of
  everything costs about twice this whole decoder, ADR 0011).
- ``otlp_json``: OTLP/JSON, walked as plain dicts after ``orjson.loads`` (never converted
  through protobuf). Ids are hex in either case, enums integers or their names, 64-bit
  integers strings or numbers; unknown fields are ignored, as the spec requires.

The encoding is sniffed per record (nothing in a Kafka record says which it is). A payload
Tocsin cannot read raises :class:`OtlpError` (the record goes to the dead-letter topic, the
HTTP answer is a 400); one bad span inside a readable payload is a :class:`Rejected` entry
beside the good spans (OTLP's partial success), never a reason to drop its neighbours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tocsin.processors.otlp.spans import (
    INT_KEYS,
    KIND_NAMES,
    RESOURCE_WANTED,
    STATUS_NAMES,
    WANTED,
    Attrs,
    Service,
    Span,
    SpanProblem,
    clean_attr,
    make_span,
    service_of,
)

Encoding = Literal["otlp_proto", "otlp_json"]
ENCODINGS: tuple[Encoding, ...] = ("otlp_proto", "otlp_json")

_HEX = re.compile(r"[0-9a-fA-F]+")
_JSON_START = frozenset(b"{ \t\r")  # a JSON object, possibly after whitespace
_OTHER_SIGNALS = ("resourceLogs", "resourceMetrics", "resourceProfiles")
_EXCEPTION_KEYS = frozenset({"exception.type", "exception.message"})
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class OtlpError(ValueError):
    """A payload that is not readable OTLP traces. The message names the encoding tried
    and what failed; it is the dead-letter reason and the HTTP 400 body."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A span left out of a decoded payload: where it was and why."""

    path: str  # e.g. resourceSpans[0].scopeSpans[1].spans[4]
    reason: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """One payload's spans in payload order, and the spans that were refused."""

    encoding: Encoding
    spans: tuple[Span, ...]
    rejected: tuple[Rejected, ...] = ()


def sniff(data: bytes) -> Encoding:
    """``otlp_json`` when the bytes start like a JSON object, else ``otlp_proto``.

    A serialized TracesData starts with 0x0A (field 1, length-delimited), which is also a
    newline: "\\n{" may be a proto whose first ResourceSpans is 123 bytes long. Such bytes
    are sniffed as proto and :func:`decode_batch` falls back to JSON when they do not parse.
    """
    head = data[:1]
    if (head and head[0] in _JSON_START) or data[:3] == b"\xef\xbb\xbf":
        return "otlp_json"
    return "otlp_proto"


def decode_batch(data: bytes | None, encoding: Encoding | None = None) -> Decoded:
    """Decode one payload (a Kafka record value or an HTTP body, already decompressed).

    ``encoding`` forces one (the topic's configured encoding, the HTTP Content-Type); None
    sniffs. An empty payload is a valid empty request; a missing value (a tombstone) is not.
    """
    if encoding is not None and encoding not in ENCODINGS:
        raise OtlpError(f"unknown encoding {encoding!r}: expected one of {ENCODINGS}")
    if data is None:
        raise OtlpError("no value (a Kafka tombstone): expected OTLP traces")
    if not data:
        return Decoded(encoding or "otlp_proto", ())
    if encoding == "otlp_json":
        return _from_json(data)
    if encoding == "otlp_proto":
        return _from_proto(data)
    if sniff(data) == "otlp_json":
        return _from_json(data)
    try:
        decoded = _from_proto(data)
    except OtlpError:
        if _json_like(data):
            return _from_json(data)
        raise
    if not decoded.spans and not decoded.rejected and _json_like(data):
        # "\n{...}" that happened to parse as unknown protobuf fields: JSON it is.
        try:
            return _from_json(data)
        except OtlpError:
            return decoded
    return decoded


def _json_like(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{" and data.rstrip()[-1:] == b"}"


def decode_spans(data: bytes | None, encoding: Encoding | None = None) -> list[Span]:
    """The spans of one payload; refused spans are left out (see :func:`decode_batch`)."""
    return list(decode_batch(data, encoding).spans)


def trace_id_from_key(key: bytes | None) -> str | None:
    """The trace id a Kafka record key names, when the exporter keyed by trace id: the
    32-character hex string (current versions) or the raw 16 bytes (2021 versions).
    None for an unkeyed record or any other key."""
    if key is None:
        return None
    if len(key) == 32 and _HEX.fullmatch(key.decode("ascii", "replace")):
        return key.decode("ascii").lower()
    if len(key) == 16:
        return key.hex()
    return None


# --------------------------------------------------------------------- otlp_proto


def _from_proto(data: bytes) -> Decoded:
    try:
        message = TracesData.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OtlpError(f"otlp_proto: not a TracesData / ExportTraceServiceRequest: "
                        f"{exc}") from exc
    if not message.resource_spans:
        # Bytes that parse as nothing but unknown fields are not traces.
        raise OtlpError(f"otlp_proto: no resourceSpans in {len(data)} bytes "
                        f"(not OTLP traces?)")
    spans: list[Span] = []
    rejected: list[Rejected] = []
    for r, resource_spans in enumerate(message.resource_spans):
        service = service_of(_pb_attrs(resource_spans.resource.attributes, RESOURCE_WANTED))
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope.name or None
            for n, span in enumerate(scope_spans.spans):
                try:
                    spans.append(_pb_span(span, service, scope))
                except SpanProblem as exc:
                    rejected.append(Rejected(f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]",
                                             str(exc)))
    return Decoded("otlp_proto", tuple(spans), tuple(rejected))


_SCALARS = frozenset({"string_value", "int_value", "bool_value", "double_value"})


def _pb_value(value: AnyValue) -> object:
    which = value.WhichOneof("value")
    if which in _SCALARS:
        return getattr(value, which)
    if which == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    return None  # unset, kvlist, bytes: no rule reads them


def _pb_attrs(attributes: Iterable[KeyValue], wanted: frozenset[str]) -> dict[str, object]:
    """The wanted attributes only, cleaned (:func:`clean_attr`); the first of a duplicated
    key wins (as the Collector's pdata ``Map.Get`` does). Other keys are not converted.

    The type semconv gives a key is read first (``WhichOneof`` costs twice a field read):
    a status code is an int, everything else a string; a value of another type is still
    read, through the slow path."""
    out: dict[str, object] = {}
    for kv in attributes:
        key = kv.key
        if key in wanted and key not in out:
            value = kv.value
            typed = value.int_value if key in INT_KEYS else value.string_value
            out[key] = typed if typed else clean_attr(key, _pb_value(value))
    return out


def _pb_id(raw: bytes, size: int, field: str) -> str:
    if len(raw) != size:
        raise SpanProblem(f"{field}: must be {size} bytes, got {len(raw)}")
    if not any(raw):
        raise SpanProblem(f"{field}: all zeroes is not a valid id")
    return raw.hex()


def _pb_span(span: PbSpan, service: Service, scope: str | None) -> Span:
    # Written flat: it runs once per span. A hex id of the right length that is not all
    # zeroes is valid; anything else goes through _pb_id, which says what is wrong.
    trace_id = span.trace_id.hex()
    if len(trace_id) != 32 or trace_id == _ZERO_TRACE:
        _pb_id(span.trace_id, 16, "traceId")
    span_id = span.span_id.hex()
    if len(span_id) != 16 or span_id == _ZERO_SPAN:
        _pb_id(span.span_id, 8, "spanId")
    parent = span.parent_span_id
    exception = None
    events = span.events
    if len(events):
        for event in events:
            if event.name == "exception":
                found = _pb_attrs(event.attributes, _EXCEPTION_KEYS)
                exception = (_str(found.get("exception.type")),
                             _str(found.get("exception.message")))
                break
    status = span.status
    return make_span(
        service, scope, trace_id, span_id,
        _pb_id(parent, 8, "parentSpanId") if any(parent) else None,
        span.flags, span.name, span.kind, span.start_time_unix_nano, span.end_time_unix_nano,
        status.code, status.message or None, cast(Attrs, _pb_attrs(span.attributes, WANTED)),
        exception)


# --------------------------------------------------------------------- otlp_json


def _from_json(data: bytes) -> Decoded:
    try:
        doc = orjson.loads(data[3:] if data[:3] == b"\xef\xbb\xbf" else data)
    except orjson.JSONDecodeError as exc:
        raise OtlpError(f"otlp_json: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise OtlpError(f"otlp_json: expected an object with resourceSpans, got "
                        f"{type(doc).__name__}")
    resource_spans = doc.get("resourceSpans")
    if resource_spans is None:
        if not doc:
            return Decoded("otlp_json", ())
        other = [k for k in _OTHER_SIGNALS if k in doc]
        what = f"OTLP {other[0]}, not traces" if other else \
            f"keys: {', '.join(sorted(doc)[:8])}"
        raise OtlpError(f"otlp_json: no resourceSpans ({what})")
    spans: list[Span] = []
    rejected: list[Rejected] = []
    for r, rs in enumerate(_array(resource_spans, "resourceSpans")):
        where = f"resourceSpans[{r}]"
        rs = _object(rs, where)
        resource = _object(rs.get("resource") or {}, where + ".resource")
        service = service_of(_json_attrs(resource.get("attributes"), RESOURCE_WANTED))
        for s, ss in enumerate(_array(rs.get("scopeSpans") or [], where + ".scopeSpans")):
            ss = _object(ss, f"{where}.scopeSpans[{s}]")
            scope = _str(_object(ss.get("scope") or {}, f"{where}.scopeSpans[{s}].scope")
                         .get("name"))
            for n, span in enumerate(_array(ss.get("spans") or [],
                                            f"{where}.scopeSpans[{s}].spans")):
                try:
                    spans.append(_json_span(span, service, scope))
                except SpanProblem as exc:
                    rejected.append(Rejected(f"{where}.scopeSpans[{s}].spans[{n}]", str(exc)))
    return Decoded("otlp_json", tuple(spans), tuple(rejected))


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise OtlpError(f"otlp_json: {where}: must be an array, got {type(value).__name__}")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OtlpError(f"otlp_json: {where}: must be an object, got {type(value).__name__}")
    return value


def _json_value(value: object) -> object:
    """An AnyValue object: {"stringValue": …} | {"intValue": "8080"} | … ; 64-bit integers
    arrive as strings, doubles may be numbers or strings ("NaN")."""
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return _int(value["intValue"])
    if "boolValue" in value:
        return value["boolValue"]
    if "doubleValue" in value:
        return value["doubleValue"]
    array = value.get("arrayValue")
    if isinstance(array, dict) and isinstance(array.get("values"), list):
        return [_json_value(v) for v in array["values"]]
    return None


def _json_attrs(attributes: object, wanted: frozenset[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(attributes, list):
        for kv in attributes:
            if isinstance(kv, dict):
                key = kv.get("key")
                if isinstance(key, str) and key in wanted and key not in out:
                    out[key] = clean_attr(key, _json_value(kv.get("value")))
    return out


def _int(value: object) -> int | None:
    """A JSON 64-bit integer: a string of digits (proto3 JSON) or a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        try:
            return int(value)
        except ValueError:  # "--1", or more digits than int() converts (4300)
            return None
    return None


def _enum(value: object, names: Mapping[str, int]) -> int:
    if isinstance(value, str):
        return names.get(value, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_id(value: object, size: int, field: str) -> str:
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
        raise SpanProblem(f"{field}: must be {2 * size} hex characters (OTLP/JSON ids are "
                           f"hex, not base64), got {shown!r}")
    if not value.strip("0"):
        raise SpanProblem(f"{field}: all zeroes is not a valid id")
    return value.lower()


def _json_parent(value: object) -> str | None:
    """No parent: absent, empty, or all zeroes (as protobuf's empty bytes read)."""
    if value is None or (isinstance(value, str) and not value.strip("0")):
        return None
    return _json_id(value, 8, "parentSpanId")


def _json_span(span: object, service: Service, scope: str | None) -> Span:
    if not isinstance(span, dict):
        raise SpanProblem(f"must be an object, got {type(span).__name__}")
    parent = span.get("parentSpanId")
    exception = None
    events = span.get("events")
    if isinstance(events, list):
        for event in events:
            if isinstance(event, dict) and event.get("name") == "exception":
                found = _json_attrs(event.get("attributes"), _EXCEPTION_KEYS)
                exception = (_str(found.get("exception.type")),
                             _str(found.get("exception.message")))
                break
    status = span.get("status")
    status = status if isinstance(status, dict) else {}
    flags = _int(span.get("flags")) or 0
    name = span.get("name")
    return make_span(
        service=service, scope=scope,
        trace_id=_json_id(span.get("traceId"), 16, "traceId"),
        span_id=_json_id(span.get("spanId"), 8, "spanId"),
        parent_span_id=_json_parent(parent),
        flags=flags, name=name if isinstance(name, str) else "",
        kind=_enum(span.get("kind"), KIND_NAMES),
        start_ns=_int(span.get("startTimeUnixNano")) or 0,
        end_ns=_int(span.get("endTimeUnixNano")) or 0,
        status_code=_enum(status.get("code"), STATUS_NAMES),
        status_message=_str(status.get("message")),
        attrs=cast(Attrs, _json_attrs(span.get("attributes"), WANTED)),
        exception=exception,
    )
