"""Real encodings from the official OpenTelemetry SDK and OTLP encoder (ADR 0011).

A frontend → checkout → payment workload where payment fails on some requests, made with
``opentelemetry-sdk`` (W3C context propagated between the services as over HTTP), encoded
with ``opentelemetry-exporter-otlp-proto-common``'s ``encode_spans`` into the protobuf
bytes an exporter sends, and into OTLP/JSON; split into payloads the ways the Collector's
Kafka exporter may split them; decoded and mapped to families.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tocsin.clients.otel_workload import (
    MS,
    PaymentDeclinedError,
    SeededIds,
    otlp_json,
    proto,
    workload,
)
from tocsin.processors.family import Family, failing_downstream, family_of
from tocsin.processors.otlp import Span, decode_spans, wide_events

T0 = 1_714_564_800 * 1_000_000_000
REQUESTS = 6
FAILING = frozenset({1, 2, 4})  # payment declines these requests


SDK_SPANS = workload(REQUESTS, FAILING, T0)


def by_id(spans: Sequence[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.trace_id, s.span_id))


def splits() -> dict[str, list[bytes]]:
    rng = random.Random(11)
    shuffled = list(SDK_SPANS)
    rng.shuffle(shuffled)
    return {
        "one batch": [proto(SDK_SPANS)],
        "one record per span, shuffled": [proto([s]) for s in shuffled],
        "one record per service": [
            proto([s for s in SDK_SPANS if s.resource.attributes["service.name"] == svc])
            for svc in ("payment", "frontend", "checkout")],
        "batches of 7, mixed encodings": [
            (otlp_json(shuffled[i:i + 7], i % 2 == 0, i % 3 == 0) if (i // 7) % 2
             else proto(shuffled[i:i + 7])) for i in range(0, len(shuffled), 7)],
    }


SPLITS = splits()
# No error.type on payment's span: the code is the exception event's type, which the Python
# SDK writes qualified by its module.
DECLINED = f"{PaymentDeclinedError.__module__}.PaymentDeclinedError"
FAMILIES = {
    Family("production", "payment", "POST /api/charge", DECLINED): 3,
    Family("production", "checkout", "POST /api/checkout", "HTTP_502"): 3,
    Family("production", "frontend", "GET /cart/checkout", "HTTP_502"): 3,
}


def families(events: Sequence[dict[str, Any]]) -> Counter[Family | None]:
    return Counter(family_of(e) for e in events)


def test_batch_maps_to_the_payment_family_and_dependent_callers() -> None:
    events = wide_events(decode_spans(proto(SDK_SPANS)))
    assert len(events) == 3 * REQUESTS  # one per SERVER span; CLIENT spans are not requests
    counted = families(events)
    assert counted.pop(None) == 3 * (REQUESTS - len(FAILING))
    assert counted == FAMILIES
    downstream = {e["service"]: failing_downstream(e) for e in events if e["status"] == "error"}
    assert downstream == {"payment": None, "checkout": "payment", "frontend": "checkout"}
    payment = next(e for e in events if e["service"] == "payment" and e["status"] == "error")
    assert payment["error_message"] == "card declined"
    assert payment["attributes"]["exception.type"] == DECLINED
    users = {e["user_id"] for e in events if e["service"] == "frontend"}
    assert users == {"user-0", "user-1", "user-2", "user-3"}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_any_split_decodes_to_the_same_spans_and_families(split: str) -> None:
    payloads = SPLITS[split]
    spans = [s for p in payloads for s in decode_spans(p)]
    assert by_id(spans) == by_id(decode_spans(proto(SDK_SPANS)))
    events = [e for p in payloads for e in wide_events(decode_spans(p))]
    counted = families(events)
    counted.pop(None)
    assert counted == FAMILIES


def test_downstream_is_resolved_when_the_client_span_shares_the_payload() -> None:
    per_service = [e for p in SPLITS["one record per service"]
                   for e in wide_events(decode_spans(p))]
    assert {failing_downstream(e) for e in per_service if e["service"] == "checkout"
            and e["status"] == "error"} == {"payment"}
    per_span = [e for p in SPLITS["one record per span, shuffled"]
                for e in wide_events(decode_spans(p))]
    assert {failing_downstream(e) for e in per_span if e["status"] == "error"} == {None}


@pytest.mark.parametrize(("enums_as_ints", "upper"), [(True, False), (False, True)])
def test_otlp_json_equals_protobuf(enums_as_ints: bool, upper: bool) -> None:
    data = otlp_json(SDK_SPANS, enums_as_ints, upper)
    assert (b'"kind": 2' in data) is enums_as_ints  # names otherwise: SPAN_KIND_SERVER
    assert decode_spans(data) == decode_spans(proto(SDK_SPANS))


def test_remote_parents_from_w3c_propagation() -> None:
    spans = decode_spans(proto(SDK_SPANS))
    servers = [s for s in spans if s.kind == "server" and s.service != "frontend"]
    assert servers and all(s.parent_is_remote for s in servers)
    assert all(s.parent_is_remote is False for s in spans if s.kind == "client")


def test_grpc_codes_by_side() -> None:
    """A server answering NOT_FOUND did its job; the client that got it failed."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "inventory"}),
                              id_generator=SeededIds(3), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tocsin.tests")
    for kind, code in ((SpanKind.SERVER, 5), (SpanKind.SERVER, 14), (SpanKind.CLIENT, 5)):
        tracer.start_span("inventory.Stock/Reserve", kind=kind, start_time=T0, attributes={
            "rpc.system": "grpc", "rpc.service": "inventory.Stock", "rpc.method": "Reserve",
            "rpc.grpc.status_code": code}).end(end_time=T0 + MS)
    spans = decode_spans(proto(exporter.get_finished_spans()))
    assert [(s.kind, s.error, s.error_code) for s in spans] == [
        ("server", False, None), ("server", True, "GRPC_14"), ("client", True, "GRPC_5")]
    assert [e["step"] for e in wide_events(spans)] == ["inventory.Stock/Reserve"] * 3


def test_same_bytes_same_output() -> None:
    for payloads in SPLITS.values():
        for data in payloads:
            first, again = decode_spans(data), decode_spans(bytes(data))
            assert first == again
            assert orjson.dumps(wide_events(first), option=orjson.OPT_SORT_KEYS) == \
                orjson.dumps(wide_events(again), option=orjson.OPT_SORT_KEYS)
