"""(f) OpenTelemetry span intake: spans/s of a bare protobuf loop, of Tocsin's pure decode
and mapping, and of the worker's span intake; RSS of 10,000 traces in the assembler.

The workload: ``TRACES`` frontend -> checkout -> payment traces (5 spans each: frontend
SERVER + CLIENT, checkout SERVER + CLIENT, payment SERVER, the shape of
``tocsin/clients/otel_workload.py``), ~3% failing at payment (exception event, status ERROR, the
callers answer 502). They are serialized as ``ExportTraceServiceRequest`` (``otlp_proto``,
what the Collector's Kafka exporter writes), ``TRACES_PER_RECORD`` traces per record (one
ResourceSpans per service, 50 spans), built directly with the ``opentelemetry-proto``
classes from a fixed seed, and produced unkeyed round-robin on the 6 partitions of
``otlp_spans``.

- bare parse: aiokafka ``getmany`` (partitions assigned, the bare consumer's fetch
  settings), ``TracesData.FromString`` per record, spans counted. It only parses: upb
  keeps the spans in C, nothing reaches Python.
- bare decode: the same loop turning every span into Python values with no rule (ids as
  hex, name, kind, times, status, every attribute by its oneof, event names): the least
  any consumer of spans pays, and the baseline of the ">= 0.5x" target.
- tocsin-pure: the same loop calling ``decode_batch`` + ``wide_events`` per record:
  parse, normalize every span (ids, times, semconv outcome, peer) and map entry spans to
  wide-event dicts.
- tocsin-worker: ``python -m tocsin run --role detect`` (span intake + detection, no
  projection) with its events topic renamed (the translated events must not reach the
  wide-event workload's topic), ``metrics.spans_in`` on ``/healthz`` polled until it
  reaches the total. This includes publishing one JSON wide event per entry span.

Both loops' clocks run from the first batch received until the last span is counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
    TracesData,
)

from tocsin.processors.otlp import decode_batch, wide_events
from tocsin.streams.kafka.io import (
    Outgoing,
    TopicSpec,
    ensure_topics,
    send_batches,
    stop_quietly,
)

from .bare import _consumer
from .worker import Throughput, TocsinWorker
from .workload import PARTITIONS, T0_MS

SPANS_TOPIC = "otlp_spans"
SPAN_EVENTS_TOPIC = "bench.span_events"  # the worker's translated events, kept apart
TRACES = 20_000
SPANS_PER_TRACE = 5
TRACES_PER_RECORD = 10  # 50 spans a record
FAIL_RATE = 0.03
EVERY_MS = 500  # one trace every 500 ms of event time (20,000 traces: 2.8 h)
SEED = 20_261_102
RSS_TRACES = 10_000
MS = 1_000_000
_ROOT, _REMOTE = 0x100, 0x300  # SpanFlags: parent remoteness known / parent is remote
_SERVER, _CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
_ERROR = Status(code=Status.STATUS_CODE_ERROR)
_STACK = ("Traceback (most recent call last):\n  File \"shop/payment.py\", line 101, in "
          "charge\n    raise PaymentDeclinedError(\"do_not_honor\")\n"
          "shop.payment.PaymentDeclinedError: do_not_honor\n")


def _s(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _i(key: str, value: int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value))


def _resource(service: str, version: str, instance: int) -> Resource:
    return Resource(attributes=[
        _s("telemetry.sdk.language", "python"), _s("telemetry.sdk.name", "opentelemetry"),
        _s("telemetry.sdk.version", "1.45.2"),
        _s("service.instance.id", f"{service}-{instance:08x}-bench"),
        _s("service.name", service), _s("service.version", version),
        _s("deployment.environment.name", "production")])


RESOURCES = {name: _resource(name, version, i) for i, (name, version) in
             enumerate((("frontend", "2.3.1"), ("checkout", "1.8.0"), ("payment", "0.9.4")))}
SCOPE = InstrumentationScope(name="tocsin.bench")
_EXCEPTION = Span.Event(name="exception", attributes=[
    _s("exception.type", "shop.payment.PaymentDeclinedError"),
    _s("exception.message", "do_not_honor"), _s("exception.stacktrace", _STACK),
    _s("exception.escaped", "False")])


def _trace(rng: random.Random, i: int) -> dict[str, list[Span]]:
    """One trace's five spans, by service (what each service's SDK exports)."""
    tid = rng.getrandbits(128).to_bytes(16, "big")
    fe_srv, fe_cli, co_srv, co_cli, pay = (rng.getrandbits(64).to_bytes(8, "big")
                                           for _ in range(5))
    t = (T0_MS + i * EVERY_MS) * MS
    fails = rng.random() < FAIL_RATE
    code, up = (500, 502) if fails else (200, 200)
    err = [_s("error.type", str(up))] if fails else []
    status = _ERROR if fails else None

    def span(sid: bytes, parent: bytes, name: str, kind: Span.SpanKind.ValueType,
             start: int, end: int, attrs: list[KeyValue], flags: int,
             st: Status | None = status,
             **extra: Any) -> Span:
        return Span(trace_id=tid, span_id=sid, parent_span_id=parent, name=name, kind=kind,
                    start_time_unix_nano=t + start * MS, end_time_unix_nano=t + end * MS,
                    attributes=attrs, flags=flags, status=st, **extra)

    return {
        "frontend": [
            span(fe_srv, b"", "GET /cart/checkout", _SERVER, 0, 10,
                 [_s("http.request.method", "GET"), _s("http.route", "/cart/checkout"),
                  _s("enduser.id", f"user-{i % 5000}"), _i("http.response.status_code", up),
                  *err], _ROOT),
            span(fe_cli, fe_srv, "POST", _CLIENT, 1, 9,
                 [_s("http.request.method", "POST"), _s("server.address", "checkout"),
                  _s("url.full", "http://checkout/api/checkout"),
                  _i("http.response.status_code", up), *err], _ROOT)],
        "checkout": [
            span(co_srv, fe_cli, "POST /api/checkout", _SERVER, 2, 8,
                 [_s("http.request.method", "POST"), _s("http.route", "/api/checkout"),
                  _i("http.response.status_code", up), *err], _REMOTE),
            span(co_cli, co_srv, "POST", _CLIENT, 3, 7,
                 [_s("http.request.method", "POST"), _s("server.address", "payment"),
                  _s("url.full", "http://payment/api/charge?x=1"),
                  _i("http.response.status_code", code),
                  *([_s("error.type", "500")] if fails else [])], _ROOT)],
        "payment": [
            span(pay, co_cli, "POST /api/charge", _SERVER, 4, 6,
                 [_s("http.request.method", "POST"), _s("http.route", "/api/charge"),
                  _i("http.response.status_code", code)], _REMOTE,
                 st=Status(code=Status.STATUS_CODE_ERROR, message="card declined")
                 if fails else None,
                 events=[_EXCEPTION] if fails else [])],
    }


def span_records(traces: int, seed: int = SEED) -> Iterator[tuple[bytes, int]]:
    """(ExportTraceServiceRequest bytes, failing traces) per ``TRACES_PER_RECORD`` traces."""
    rng = random.Random(seed)
    for first in range(0, traces, TRACES_PER_RECORD):
        by_service: dict[str, list[Span]] = {name: [] for name in RESOURCES}
        failing = 0
        for i in range(first, min(first + TRACES_PER_RECORD, traces)):
            for name, spans in _trace(rng, i).items():
                by_service[name] += spans
            failing += by_service["payment"][-1].status.code == Status.STATUS_CODE_ERROR
        request = ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(resource=RESOURCES[name],
                          scope_spans=[ScopeSpans(scope=SCOPE, spans=spans)])
            for name, spans in by_service.items()])
        yield request.SerializeToString(), failing


@dataclass(frozen=True)
class SpanWorkload:
    traces: int
    spans: int
    records: int
    failing_traces: int
    bytes: int


async def produce_spans(bootstrap: str, traces: int = TRACES) -> SpanWorkload:
    """Create ``otlp_spans`` (6 partitions) and publish the records unkeyed, round-robin."""
    await ensure_topics(bootstrap, [TopicSpec(SPANS_TOPIC, PARTITIONS, 7 * 24 * 3600 * 1000)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024,
                                enable_idempotence=False)
    await producer.start()
    try:
        records = size = failing = 0

        def unkeyed() -> Iterator[Outgoing]:
            nonlocal records, size, failing
            for body, fails in span_records(traces):
                yield records % PARTITIONS, None, body, []
                records, size, failing = records + 1, size + len(body), failing + fails

        futures = await send_batches(producer, SPANS_TOPIC, unkeyed())
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return SpanWorkload(traces, traces * SPANS_PER_TRACE, records, failing, size)


LoopMode = Literal["parse", "decode", "tocsin"]


def _bare_parse(value: bytes) -> int:
    """Parse only: upb builds the message in C, the count reads list lengths."""
    message = TracesData.FromString(value)
    return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)


def _any(value: AnyValue) -> object:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _bare_decode(value: bytes) -> int:
    """Every span into Python values with no rule at all: what any consumer pays to use a
    span (ids as hex, name, kind, times, status, each attribute by its oneof, event
    names), the baseline the issue's target is measured against."""
    message = TracesData.FromString(value)
    spans = []
    for rs in message.resource_spans:
        resource = {kv.key: _any(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                spans.append((
                    resource, span.trace_id.hex(), span.span_id.hex(),
                    span.parent_span_id.hex(), span.name, span.kind, span.flags,
                    span.start_time_unix_nano, span.end_time_unix_nano, span.status.code,
                    span.status.message,
                    {kv.key: _any(kv.value) for kv in span.attributes},
                    [event.name for event in span.events]))
    return len(spans)


async def _loop(bootstrap: str, spans: int, mode: LoopMode, timeout_s: float
                ) -> tuple[float, int]:
    """(seconds, entry events) to count ``spans`` spans from the beginning of the topic."""
    consumer = _consumer(bootstrap)
    await consumer.start()
    bare = _bare_parse if mode == "parse" else _bare_decode
    try:
        tps = [TopicPartition(SPANS_TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = events = 0
        started: float | None = None
        deadline = time.monotonic() + timeout_s
        while seen < spans:
            if time.monotonic() > deadline:
                raise TimeoutError(f"span loop saw {seen} of {spans} in {timeout_s:.0f}s")
            batch = await consumer.getmany(timeout_ms=100)
            if batch and started is None:
                started = time.perf_counter()
            for records in batch.values():
                for rec in records:
                    if mode == "tocsin":
                        decoded = decode_batch(rec.value)
                        events += len(wide_events(decoded.spans))
                        seen += len(decoded.spans)
                    else:
                        seen += bare(rec.value)
        assert started is not None
        return time.perf_counter() - started, events
    finally:
        await stop_quietly(consumer)


@dataclass(frozen=True)
class LoopResult:
    spans: int
    seconds: float
    events: int  # wide events mapped (tocsin-pure only)

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds if self.seconds > 0 else 0.0


def measure_loop(bootstrap: str, spans: int, mode: LoopMode, timeout_s: float = 120.0
                 ) -> LoopResult:
    seconds, events = asyncio.run(_loop(bootstrap, spans, mode, timeout_s))
    return LoopResult(spans, seconds, events)


@dataclass(frozen=True)
class SpansRun:
    """What (f) measured; ``skipped`` says why it did not run, ``worker_error`` why the
    worker figure is missing."""

    workload: SpanWorkload | None = None
    bare: LoopResult | None = None  # bare decode: the target's baseline
    bare_parse: LoopResult | None = None
    tocsin: LoopResult | None = None
    worker: Throughput | None = None
    worker_error: str | None = None
    worker_metrics: dict[str, Any] | None = None
    assembler: dict[str, Any] | None = None
    skipped: str | None = None


def measure_worker(bootstrap: str, workdir: Path, spans: int) -> tuple[Throughput,
                                                                       dict[str, Any]]:
    """The worker's span intake end to end, on its own events topic (see module doc)."""
    worker = TocsinWorker(bootstrap, workdir, role="detect", name="spans-worker",
                          env={"TOCSIN_TOPICS__EVENTS": SPAN_EVENTS_TOPIC}).start()
    try:
        tput = worker.measure(spans, timeout_s=max(60.0, spans / 2000), counter="spans_in",
                              start_counter="spans_read")
        body = worker.health() or {}
    finally:
        worker.stop()
    return tput, body.get("metrics", {})


# ------------------------------------------------------------ assembler memory


def assembler_memory(traces: int = RSS_TRACES) -> dict[str, Any]:
    """Run :func:`_assembler_child` in a fresh interpreter (its peak RSS is its own)."""
    out = subprocess.run([sys.executable, "-m", "bench.spans", str(traces)],
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                         text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _feed(traces: int, payloads: list[bytes]) -> Any:
    from tocsin.processors.traces import TraceAssembler

    asm = TraceAssembler(idle_ms=10**9)
    for body in payloads:
        for span in decode_batch(body).spans:
            asm.add(span)
    if len(asm) != traces or asm.counters.traces_closed:
        raise RuntimeError(f"expected {traces} open traces, got {len(asm)} "
                           f"({asm.counters.as_dict()})")
    return asm


def _assembler_child(traces: int) -> dict[str, Any]:
    """RSS growth (VmHWM after - VmRSS before) of feeding ``traces`` decoded traces to a
    ``TraceAssembler(idle_ms=10**9)`` that closes none; then, on a second assembler, the
    bytes tracemalloc sees retained by it (Python objects only)."""
    import gc
    import resource
    import tracemalloc

    payloads = [body for body, _ in span_records(traces)]
    decode_batch(payloads[0])  # warm imports and caches
    gc.collect()
    before_kb = _status_kb("VmRSS")
    asm = _feed(traces, payloads)
    hwm_kb = _status_kb("VmHWM")
    rss_kb = _status_kb("VmRSS")
    spans = asm.counters.spans_added
    del asm
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    asm = _feed(traces, payloads)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "traces": traces, "spans": spans,
        "rss_growth_mb": round((max(hwm_kb, rss_kb) - before_kb) / 1024, 1),
        "rss_held_mb": round((rss_kb - before_kb) / 1024, 1),
        "traced_mb": round(traced / 2**20, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "open_traces": len(asm),
    }


if __name__ == "__main__":
    print(json.dumps(_assembler_child(int(sys.argv[1]) if len(sys.argv) > 1
                                      else RSS_TRACES)))
