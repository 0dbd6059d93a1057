"""A frontend → checkout → payment workload made with the official OpenTelemetry SDK, for
``tocsin demo --traces`` and the tests: payment fails on chosen requests (W3C context
propagated between the services as over HTTP), spans at chosen times, reproducible ids,
encoded by the SDK's own OTLP encoder as an exporter (or the Collector) sends them."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Container, Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

MS = 1_000_000
W3C = TraceContextTextMapPropagator()


class SeededIds(IdGenerator):
    """Reproducible ids: the SDK's default generator is random."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


class PaymentDeclinedError(Exception):
    """What payment raises; ``exception.type`` reads shop.payment.PaymentDeclinedError."""


PaymentDeclinedError.__module__ = "shop.payment"


def wire(client: trace.Span) -> Context:
    """Inject the client span's traceparent and extract it, as an HTTP hop does."""
    headers: dict[str, str] = {}
    W3C.inject(headers, context=trace.set_span_in_context(client))
    return W3C.extract(headers)


def finish(s: trace.Span, code: int, end: int, error_type: str | None = None) -> None:
    s.set_attribute("http.response.status_code", code)
    if error_type is not None:
        s.set_attribute("error.type", error_type)
        s.set_status(Status(StatusCode.ERROR))
    s.end(end_time=end)


VERSIONS = {"frontend": "2.3.1", "checkout": "1.8.0", "payment": "0.9.4"}


def workload(requests: int, failing: Container[int], t0_ns: int, seed: int = 7,
             every_ms: int = 1000, versions: Mapping[str, str] | None = None
             ) -> list[ReadableSpan]:
    """``requests`` traces, one every ``every_ms`` from ``t0_ns``; those in ``failing``
    fail at payment (PaymentDeclinedError) and the callers answer 502. ``versions``
    overrides services' ``service.version`` (:data:`VERSIONS`)."""
    versions = {**VERSIONS, **(versions or {})}
    exporter = InMemorySpanExporter()
    ids = SeededIds(seed)

    def tracer(service: str, version: str) -> trace.Tracer:
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.version": version,
                                      "deployment.environment.name": "production"}),
            id_generator=ids, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider.get_tracer("tocsin.demo")

    fe, co, pay = (tracer(name, versions[name]) for name in ("frontend", "checkout",
                                                               "payment"))
    for i in range(requests):
        t = t0_ns + i * every_ms * MS
        fails = i in failing
        fe_srv = fe.start_span("GET /cart/checkout", kind=SpanKind.SERVER, start_time=t,
                               attributes={"http.request.method": "GET",
                                           "http.route": "/cart/checkout",
                                           "enduser.id": f"user-{i % 4}"})
        fe_cli = fe.start_span("POST", kind=SpanKind.CLIENT, start_time=t + 1 * MS,
                               context=trace.set_span_in_context(fe_srv),
                               attributes={"http.request.method": "POST",
                                           "server.address": "checkout",
                                           "url.full": "http://checkout/api/checkout"})
        co_srv = co.start_span("POST /api/checkout", kind=SpanKind.SERVER,
                               start_time=t + 2 * MS, context=wire(fe_cli),
                               attributes={"http.request.method": "POST",
                                           "http.route": "/api/checkout"})
        co_cli = co.start_span("POST", kind=SpanKind.CLIENT, start_time=t + 3 * MS,
                               context=trace.set_span_in_context(co_srv),
                               attributes={"http.request.method": "POST",
                                           "server.address": "payment",
                                           "url.full": "http://payment/api/charge?x=1"})
        pay_srv = pay.start_span("POST /api/charge", kind=SpanKind.SERVER,
                                 start_time=t + 4 * MS, context=wire(co_cli),
                                 attributes={"http.request.method": "POST",
                                             "http.route": "/api/charge"})
        if fails:
            try:
                raise PaymentDeclinedError("do_not_honor")
            except PaymentDeclinedError as exc:
                pay_srv.record_exception(exc, timestamp=t + 5 * MS)
            pay_srv.set_status(Status(StatusCode.ERROR, "card declined"))
            finish(pay_srv, 500, t + 6 * MS)
            finish(co_cli, 500, t + 7 * MS, "500")
            finish(co_srv, 502, t + 8 * MS, "502")
            finish(fe_cli, 502, t + 9 * MS, "502")
            finish(fe_srv, 502, t + 10 * MS, "502")
        else:
            for s, end in ((pay_srv, 6), (co_cli, 7), (co_srv, 8), (fe_cli, 9), (fe_srv, 10)):
                finish(s, 200, t + end * MS)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 5 * requests
    return spans


def proto(spans: Sequence[ReadableSpan]) -> bytes:
    """What an OTLP exporter (or the Collector's Kafka exporter, otlp_proto) sends."""
    request: ExportTraceServiceRequest = encode_spans(spans)
    return request.SerializeToString()


def otlp_json(spans: Sequence[ReadableSpan], enums_as_ints: bool = True,
              upper: bool = False) -> bytes:
    """The same request as OTLP/JSON, per the spec: protobuf's JSON mapping of the SDK's
    encoding, with hex ids (either case) instead of base64. (The Python SDK has no
    OTLP/JSON exporter; the Collector's ``otlp_json`` encoding writes this.)"""
    doc = json.loads(json_format.MessageToJson(encode_spans(spans),
                                               use_integers_for_enums=enums_as_ints))

    def hexify(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (base64.b64decode(v).hex().upper() if upper else
                        base64.b64decode(v).hex())
                    if k in ("traceId", "spanId", "parentSpanId") else hexify(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [hexify(v) for v in node]
        return node

    return json.dumps(hexify(doc)).encode()
