"""OTLP/HTTP answers (the OTLP specification, "OTLP/HTTP Response"): an
ExportTraceServiceResponse, with ``partial_success`` when spans were refused, in the
request's encoding; errors as a ``google.rpc.Status`` (code, message), protobuf-encoded
for protobuf requests, JSON for JSON ones."""

from __future__ import annotations

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

PROTO = "application/x-protobuf"
JSON = "application/json"


def otlp_export_response(proto: bool, rejected: int, message: str) -> tuple[bytes, str]:
    if proto:
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=rejected, error_message=message))
        return response.SerializeToString(), PROTO
    body: dict[str, object] = {}
    if rejected:
        body["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
    return orjson.dumps(body), JSON


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def otlp_status(proto: bool, code: int, message: str) -> tuple[bytes, str]:
    """google.rpc.Status{code = 1, message = 2}, written by hand: two fields do not warrant
    another dependency (googleapis-common-protos)."""
    if proto:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text, PROTO
    return orjson.dumps({"code": code, "message": message}), JSON
