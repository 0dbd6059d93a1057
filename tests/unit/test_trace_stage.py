"""The trace stage's hot path without a broker (TraceStage.process with a fake producer):
a by-trace partition fed by several span sources closes no trace before every source is
named, so a source whose records arrive after another's later ones loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord

from tests.unit.test_span_event_wire import FakeProducer
from tests.unit.test_traces import spans_of
from tocsin.processors.otlp.republish import by_trace_records
from tocsin.streams.kafka.headers import MARK, SOURCES, SPAN_SOURCE
from tocsin.streams.stages.traces import TraceStage
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

SPANS = "otlp_spans"
Headers = list[tuple[str, bytes]]


def data(source: int, offset: int, spans: list[Any]) -> tuple[bytes, Headers]:
    ((_, value, _),) = by_trace_records(spans, 1)
    return value, [(SPAN_SOURCE, f"{SPANS}:{source}:{offset}:0".encode())]


def mark(source: int, at: int | str) -> tuple[bytes, Headers]:
    return b"", [(MARK, f"{SPANS}:{source}={at}".encode()), (SOURCES, f"{SPANS}:2".encode())]


def run_stage(batches: list[list[tuple[bytes, Headers]]]) -> tuple[TraceStage, Any]:
    settings = Settings()
    stage = TraceStage(settings, "localhost:0", None, Metrics())  # type: ignore[arg-type]
    stage.producer = FakeProducer()  # type: ignore[assignment]
    run = stage.restore_run(None)
    offset = 0

    async def go() -> None:
        nonlocal offset
        for batch in batches:
            records = []
            for value, headers in batch:
                records.append(ConsumerRecord(settings.topics.spans_by_trace, 0, offset, 0, 0,
                                              None, value, None, 0, len(value), headers))
                offset += 1
            stage.process(run, records)
        await asyncio.gather(*run.pending)

    asyncio.run(go())
    return stage, run


def test_no_trace_closes_before_every_source_is_named() -> None:
    spans = spans_of(400, {3, 390})  # 400 s of requests, one failing near each end
    early, late = spans[:20], spans[-20:]
    assert late[0].end_ms - early[-1].end_ms > 300_000  # far past the assembler's idle time
    # Source 1's late spans come first (its intake ran ahead), then source 0's early ones,
    # then both sources' marks: the early trace is whole, none of its spans is late.
    stage, run = run_stage([[data(1, 0, late)], [data(0, 0, early)],
                            [mark(0, late[0].end_ms), mark(1, "idle")]])
    counters = run.assembler.counters
    assert counters.late_spans_dropped == 0
    assert counters.spans_added == 40
    closed = stage.metrics.stages["traces_closed"]
    assert closed == len({s.trace_id for s in early})  # the late ones wait for their idle time
