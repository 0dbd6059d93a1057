"""Evidence from traces (ADR 0012): assembly by event time within caps, propagation, blast
radius. Spans are made with the official OpenTelemetry SDK
(tocsin/clients/otel_workload.py), encoded by its OTLP encoder and decoded by
``processors.otlp``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.otlp import Span, decode_spans
from tocsin.processors.traces import (
    BlastRadius,
    ClosedTrace,
    DistinctCounter,
    HyperLogLog,
    TraceAssembler,
    TraceSummary,
    propagation,
    summarize,
)

T0 = 1_714_564_800 * 1_000_000_000  # 2024-05-01, ns
OLD = 1_262_304_000 * 1_000_000_000  # 2010-01-01: a replay of old spans
FAILING = frozenset({0, 1, 2, 3, 5, 9, 13, 17})  # 8 of 20; users user-{i % 4}: all 4
PACKAGE = Path(__file__).resolve().parents[2] / "processors" / "traces"


def spans_of(requests: int, failing: Iterable[int], t0_ns: int = T0, seed: int = 7,
             every_ms: int = 1000) -> list[Span]:
    """The workload's spans in the order an exporter sends them: by end time."""
    spans = decode_spans(proto(workload(requests, frozenset(failing), t0_ns, seed,
                                        every_ms)))
    return sorted(spans, key=lambda s: (s.end_ms, s.span_id))


def assemble(spans: Iterable[Span], asm: TraceAssembler | None = None) -> list[ClosedTrace]:
    asm = TraceAssembler() if asm is None else asm
    out: list[ClosedTrace] = []
    for s in spans:
        out += asm.add(s)
    return out + asm.close_all()


def only(spans: Sequence[Span]) -> ClosedTrace:
    traces = assemble(spans)
    assert len(traces) == 1
    return traces[0]


FAILED_TRACE = spans_of(1, {0})


# ---------------------------------------------------------------- propagation


def test_origin_is_payment_and_path_runs_frontend_checkout_payment() -> None:
    trace = only(FAILED_TRACE)
    assert trace.complete and trace.gaps == () and len(trace.spans) == 5
    p = propagation(trace)
    assert p is not None
    assert p.capture == "ok"
    assert (p.origin.service, p.origin.step) == ("payment", "POST /api/charge")
    assert p.origin.error_code == "shop.payment.PaymentDeclinedError"
    assert [(h.service, h.step, h.error) for h in p.path] == [
        ("frontend", "GET /cart/checkout", True),
        ("checkout", "POST /api/checkout", True),
        ("payment", "POST /api/charge", True)]
    assert p.path[-1].span_id == p.origin.span_id
    assert p.trace_id == trace.trace_id
    assert p.downstream_of("frontend") == "checkout"
    assert p.downstream_of("checkout") == "payment"
    assert p.downstream_of("payment") is None
    assert (p.dependency_of("checkout"), p.dependency_of("payment"),
            p.dependency_of("search")) == ("payment", None, None)
    d = p.to_dict()
    assert d["capture"] == "ok" and d["sample_trace"] == trace.trace_id
    assert d["origin"]["service"] == "payment"
    assert [h["service"] for h in d["path"]] == ["frontend", "checkout", "payment"]
    assert json.loads(json.dumps(d)) == d
    assert type(p).from_dict(d) == p


def test_incomplete_trace_gives_partial_capture_without_inventing_the_link() -> None:
    trace = only([s for s in FAILED_TRACE if s.service != "checkout"])
    assert not trace.complete
    assert trace.gaps == ("1 spans whose parent is missing",)
    p = propagation(trace)
    assert p is not None and p.capture == "partial"
    # payment's parent is missing: it is at least two hops below the root, deeper than
    # the frontend client span whose callee is missing
    assert p.origin.service == "payment"
    assert [h.service for h in p.path] == ["frontend", None, "payment"]
    gap = p.path[1]
    assert gap.step is None and gap.error is None
    assert gap.span_id == next(s.parent_span_id for s in trace.spans if s.service == "payment")


def test_a_trace_without_errors_has_no_propagation() -> None:
    trace = only(spans_of(1, set()))
    assert trace.complete and not trace.failing
    assert propagation(trace) is None
    assert summarize(trace).propagation is None
    blast = BlastRadius("any")
    assert blast.add(summarize(trace)) is False
    assert blast.capture == "missing"
    assert blast.propagation_dict()["capture"] == "missing"
    assert blast.to_dict()["affected_requests"] is None


def test_origin_is_the_deepest_error_whose_children_did_not_fail() -> None:
    base = FAILED_TRACE[0]

    def span(sid: str, parent: str | None, error: bool, start: int,
             kind: str = "server") -> Span:
        return dataclasses.replace(base, span_id=sid, parent_span_id=parent, error=error,
                                   start_ms=start, end_ms=start + 5, service=f"svc-{sid}",
                                   kind=kind, http_route=None, name=f"op-{sid}")

    spans = [span("a" * 16, None, True, 0),
             span("b" * 16, "a" * 16, True, 1),  # its child c failed: not the origin
             span("c" * 16, "b" * 16, True, 2),  # depth 2, no failing child
             span("d" * 16, "a" * 16, True, 3),
             span("e" * 16, "d" * 16, True, 1),  # depth 2 as well, starts earlier: origin
             span("f" * 16, "e" * 16, False, 2)]
    p = propagation(only(spans))
    assert p is not None and p.origin.service == "svc-" + "e" * 16
    assert [h.step for h in p.path] == ["op-" + "a" * 16, "op-" + "d" * 16,
                                        "op-" + "e" * 16]
    # a parent cycle neither hangs nor crashes
    loop = [span("a" * 16, "b" * 16, True, 0), span("b" * 16, "a" * 16, True, 1)]
    trace = only(loop)
    assert trace.gaps == ("0 root spans",)
    p = propagation(trace)
    assert p is not None and p.capture == "partial"


def test_propagation_does_not_depend_on_arrival_order() -> None:
    spans = spans_of(6, {1, 4})
    want = [(t.trace_id, propagation(t)) for t in assemble(spans)]
    for seed in range(5):
        shuffled = spans[:]
        random.Random(seed).shuffle(shuffled)
        got = sorted(((t.trace_id, propagation(t)) for t in
                      assemble(shuffled, TraceAssembler(idle_ms=3_600_000))),
                     key=lambda x: [w[0] for w in want].index(x[0]))
        assert got == want


# ---------------------------------------------------------------- assembly


def close_pattern(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """(index of the span whose arrival closed it, index of the trace in first-seen
    order) for every trace."""
    asm = TraceAssembler()
    order: list[str] = []
    pattern = []
    for i, s in enumerate(spans):
        if s.trace_id not in order:
            order.append(s.trace_id)
        pattern += [(i, order.index(t.trace_id)) for t in asm.add(s)]
    return pattern


def test_traces_close_by_event_time_and_a_replay_of_old_spans_closes_the_same() -> None:
    live = spans_of(10, {3}, T0, every_ms=10_000)
    old = spans_of(10, {3}, OLD, every_ms=10_000)
    pattern = close_pattern(live)
    # trace i (ends at t_i + 10 ms) closes when the watermark passes it by 30 s: on the
    # first span of trace i + 4 (ends at t_i + 40 s + 6 ms)
    assert pattern == [(5 * (i + 4), i) for i in range(6)]
    assert close_pattern(old) == pattern


def test_flush_closes_by_the_given_watermark_and_never_moves_it_back() -> None:
    asm = TraceAssembler(idle_ms=30_000)
    for s in FAILED_TRACE:
        assert asm.add(s) == []
    last_end = max(s.end_ms for s in FAILED_TRACE)
    assert asm.flush(last_end + 30_000) == []  # not passed yet
    closed = asm.flush(last_end + 30_001)
    assert [t.trace_id for t in closed] == [FAILED_TRACE[0].trace_id]
    assert asm.flush(0) == [] and asm.watermark_ms == last_end + 30_001
    assert len(asm) == 0


def test_late_and_duplicate_spans_are_counted_not_reassembled() -> None:
    asm = TraceAssembler()
    first, later = spans_of(1, {0}), spans_of(1, {0}, T0 + 60_000 * 1_000_000, seed=8)
    out: list[ClosedTrace] = []
    for s in [*first, first[0], first[1]]:
        out += asm.add(s)
    for s in later:
        out += asm.add(s)
    assert [t.trace_id for t in out] == [first[0].trace_id]
    assert out[0].complete and out[0].duplicate_spans == 2
    assert asm.add(first[0]) == []  # its trace closed a minute ago by event time
    assert asm.counters.late_spans_dropped == 1
    assert asm.counters.duplicate_spans == 2
    assert asm.counters.spans_added == 12


def test_caps_drop_and_count() -> None:
    spans = spans_of(6, {2}, every_ms=1)  # traces overlap: up to 6 in flight
    asm = TraceAssembler(max_spans_per_trace=3, max_traces=2)
    traces = assemble(spans, asm)
    c = asm.counters
    assert all(len(t.spans) <= 3 for t in traces)
    assert c.spans_added + c.evicted_spans_dropped + c.late_spans_dropped == 30
    assert sum(len(t.spans) for t in traces) + c.spans_dropped == c.spans_added
    assert sum(t.dropped_spans for t in traces) == c.spans_dropped > 0
    assert c.traces_evicted == sum(t.closed_early for t in traces) > 0
    assert c.traces_incomplete == sum(not t.complete for t in traces) > 0
    assert all(not t.complete for t in traces if t.closed_early or t.dropped_spans)
    assert c.traces_closed == len(traces) and len(asm) == 0


def test_when_full_the_oldest_trace_closes_early_and_its_late_spans_are_dropped() -> None:
    def of(trace: str, s: Span) -> Span:
        return dataclasses.replace(s, trace_id=trace * 32)

    first, second = FAILED_TRACE[0], FAILED_TRACE[1]
    asm = TraceAssembler(max_traces=2)
    assert asm.add(of("a", first)) == []
    assert asm.add(of("b", first)) == []
    closed = asm.add(of("c", second))  # full: a and b tie on last end, a goes first
    assert [(t.trace_id[0], t.closed_early, t.complete) for t in closed] == [
        ("a", True, False)]
    assert "closed early: too many traces in flight" in closed[0].gaps
    assert asm.add(of("a", second)) == []  # would reopen a fragment of a: dropped
    assert asm.counters.as_dict() == {
        "spans_added": 3, "spans_dropped": 0, "duplicate_spans": 0,
        "late_spans_dropped": 0, "evicted_spans_dropped": 1, "traces_closed": 1,
        "traces_evicted": 1, "traces_incomplete": 1}
    assert sorted(t.trace_id[0] for t in asm.close_all()) == ["b", "c"]


def test_a_span_over_the_cap_marks_only_its_trace() -> None:
    traces = assemble(spans_of(2, {0}), TraceAssembler(max_spans_per_trace=5))
    assert [t.complete for t in traces] == [True, True]
    traces = assemble(spans_of(2, {0}), TraceAssembler(max_spans_per_trace=4))
    assert [t.gaps[0] for t in traces] == ["1 spans dropped over the per-trace cap"] * 2


# ---------------------------------------------------------------- blast radius


def blast_of(traces: Iterable[ClosedTrace], key: str = "payment") -> BlastRadius:
    blast = BlastRadius(key)
    for t in traces:
        blast.add(summarize(t))
    return blast


def test_blast_counts_are_exact_on_a_known_workload() -> None:
    traces = assemble(spans_of(20, FAILING))
    blast = blast_of(traces)
    failing_ids = [t.trace_id for t in traces if t.failing]
    assert len(traces) == 20 and len(failing_ids) == 8
    d = blast.to_dict()
    assert d["capture"] == "ok"
    assert d["affected_requests"] == 8
    assert d["distinct_users"] == 4 and d["users_estimated"] is False
    assert d["affected_services"] == ["checkout", "frontend", "payment"]
    assert d["top_services"] == [{"service": s, "requests": 8}
                                 for s in ("checkout", "frontend", "payment")]
    assert d["top_families"] == [
        {"family": "checkout:POST /api/checkout:HTTP_502", "requests": 8},
        {"family": "frontend:GET /cart/checkout:HTTP_502", "requests": 8},
        {"family": "payment:POST /api/charge:shop.payment.PaymentDeclinedError",
         "requests": 8}]
    assert d["sample_traces"] == sorted(
        failing_ids, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:5]
    p = blast.propagation_dict()
    assert p["capture"] == "ok" and p["origin"]["service"] == "payment"
    assert p["sample_trace"] == d["sample_traces"][0]
    assert p["origins"] == [{"service": "payment", "step": "POST /api/charge", "traces": 8}]
    assert json.loads(json.dumps([d, p])) == [d, p]


def test_the_failing_dependency_of_an_uninstrumented_callee_is_the_origin_call_peer() -> None:
    """payment sent no spans: checkout's failing CLIENT span is the origin, and the peer
    it called (server.address) is checkout's failing dependency."""
    p = propagation(only([s for s in FAILED_TRACE if s.service != "payment"]))
    assert p is not None
    assert (p.origin.service, p.origin.kind, p.origin.downstream) == \
        ("checkout", "client", "payment")
    assert p.downstream_of("checkout") is None
    assert p.dependency_of("checkout") == "payment"
    assert p.dependency_of("frontend") == "checkout"


def test_trace_facts_name_the_dependency_most_failing_traces_agree_on() -> None:
    traces = assemble(spans_of(20, FAILING))
    failing = sorted((t for t in traces if t.failing),
                     key=lambda t: hashlib.sha256(t.trace_id.encode()).hexdigest())
    checkout = BlastRadius("inc", "checkout")
    for t in traces:
        checkout.add(summarize(t))
    facts = checkout.trace_facts()
    assert facts is not None
    assert (facts.downstream, facts.traces, facts.of) == ("payment", 8, 8)
    assert facts.sample_trace == failing[0].trace_id  # the smallest sha256
    payment = BlastRadius("inc", "payment")
    for t in traces:
        payment.add(summarize(t))
    assert payment.trace_facts() is None  # the failure starts in payment itself
    again = BlastRadius.restore(json.loads(json.dumps(checkout.snapshot())))
    assert again.trace_facts() == facts and again.snapshot() == checkout.snapshot()


def test_blast_capture_is_partial_when_a_contributing_trace_was_incomplete() -> None:
    spans = spans_of(4, {1, 2})
    broken = next(s.trace_id for s in spans if s.error)
    kept = [s for s in spans if not (s.trace_id == broken and s.service == "checkout")]
    blast = blast_of(assemble(kept))
    assert blast.to_dict()["capture"] == "partial"
    assert blast.to_dict()["incomplete_traces"] == 1
    # the propagation sample prefers the complete trace
    assert blast.propagation_dict()["capture"] == "ok"
    assert blast.propagation_dict()["sample_trace"] != broken


def summary(trace_id: str, users: Sequence[str]) -> TraceSummary:
    return TraceSummary(trace_id, True, True, 0, tuple(users), ("payment",),
                        ("payment:charge:DECLINED",), None)


def test_distinct_users_switch_to_the_sketch_beyond_1000_within_5_percent() -> None:
    counter = DistinctCounter()
    for i in range(1_000):
        counter.add(f"user-{i}")
        counter.add(f"user-{i}")
    assert counter.count() == 1_000 and not counter.estimated
    blast = BlastRadius("payment")
    for i in range(50_000):
        blast.add(summary(f"{i:032x}", [f"user-{i}", f"user-{i // 2}"]))
    d = blast.to_dict()
    assert d["users_estimated"] is True
    assert abs(d["distinct_users"] - 50_000) / 50_000 < 0.05
    assert d["affected_requests"] == 50_000
    # bounded: the exact set is gone, 16 KiB of registers remain
    assert blast.users.exact is None and blast.users.sketch is not None
    assert len(blast.users.sketch.registers) == 16_384
    assert len(json.dumps(blast.snapshot())) < 40_000


def test_the_sketch_is_deterministic_and_order_free() -> None:
    values = [f"u{i}" for i in range(20_000)]
    a, b = HyperLogLog(), HyperLogLog()
    for v in values:
        a.add(v)
    for v in reversed(values):
        b.add(v)
    assert a.registers == b.registers
    assert a.estimate() == b.estimate()
    small = HyperLogLog()
    for v in values[:2_000]:
        small.add(v)
    assert abs(small.estimate() - 2_000) / 2_000 < 0.05  # linear counting range
    c = HyperLogLog()
    c.merge(small)
    assert c.registers == small.registers


# ---------------------------------------------------------------- determinism and state


def run(spans: Sequence[Span], cut: int | None = None) -> tuple[list[Any], dict[str, Any],
                                                                dict[str, Any]]:
    """Assemble and accumulate; with ``cut``, checkpoint both through JSON after that many
    spans and continue from the restored state."""
    asm = TraceAssembler(max_traces=3)
    blast = BlastRadius("payment", "checkout")
    closed: list[ClosedTrace] = []
    for i, s in enumerate(spans):
        if i == cut:
            asm = TraceAssembler.restore(json.loads(json.dumps(asm.snapshot())),
                                         max_traces=3)
            blast = BlastRadius.restore(json.loads(json.dumps(blast.snapshot())))
        for t in asm.add(s):
            closed.append(t)
            blast.add(summarize(t))
    for t in asm.close_all():
        closed.append(t)
        blast.add(summarize(t))
    out = [(t, propagation(t)) for t in closed]
    return out, blast.to_dict(), {"blast": blast.propagation_dict(),
                                  "counters": asm.counters.as_dict(),
                                  "facts": blast.trace_facts()}


def test_same_input_same_output() -> None:
    spans = spans_of(30, {1, 2, 3, 7, 11, 12, 20}, every_ms=5)
    assert run(spans) == run(list(spans))
    # and the closed traces come in the same order every time
    assert [t.trace_id for t, _ in run(spans)[0]] == [t.trace_id for t, _ in run(spans)[0]]


@pytest.mark.parametrize("cut", [1, 7, 40, 77, 149])
def test_snapshot_restore_mid_stream_gives_identical_results(cut: int) -> None:
    spans = spans_of(30, {1, 2, 3, 7, 11, 12, 20}, every_ms=5)
    assert run(spans, cut) == run(spans)


def test_snapshot_restore_with_the_sketch_and_other_settings() -> None:
    blast = BlastRadius("payment")
    for i in range(3_000):
        blast.add(summary(f"{i:032x}", [f"user-{i}"]))
    again = BlastRadius.restore(json.loads(json.dumps(blast.snapshot())))
    assert again.to_dict() == blast.to_dict() and again.snapshot() == blast.snapshot()
    asm = TraceAssembler()
    asm.add(FAILED_TRACE[0])
    with pytest.raises(ValueError, match="another snapshot version"):
        TraceAssembler.restore(asm.snapshot(), idle_ms=10_000)
    restored = TraceAssembler.restore(asm.snapshot())
    assert restored.snapshot() == asm.snapshot()


# ---------------------------------------------------------------- purity


def test_the_package_stays_pure() -> None:
    imports = re.compile(r"^\s*(?:import|from)\s+(random|uuid|secrets|time|datetime)\b",
                         re.M)
    clock = re.compile(r"\b(time\.time|time\.monotonic|datetime\.now|date\.today)\s*\(")
    files = list(PACKAGE.glob("*.py"))
    assert files
    assert [p.name for p in files if imports.search(p.read_text())
            or clock.search(p.read_text())] == []
    code = ("import sys, tocsin.processors.traces\n"
            "print(','.join(m for m in ('faust', 'aiokafka', 'duckdb', 'kafka', 'mode')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_an_external_watermark_alone_closes_traces() -> None:
    """Fed from several partitions, the assembler closes only when told how far every
    partition has come: a span far ahead on one partition does not close the others'."""
    from tocsin.clients.otel_workload import proto, workload
    from tocsin.processors.otlp import decode_spans
    from tocsin.processors.traces import TraceAssembler

    spans = decode_spans(proto(workload(3, {1}, 1_793_610_000 * 10**9, seed=4)))
    assembler = TraceAssembler(idle_ms=30_000, external_watermark=True)
    late = max(s.end_ms for s in spans) + 3_600_000
    ahead = next(s for s in spans if s.parent_span_id is None)
    import dataclasses

    far = dataclasses.replace(ahead, trace_id="f" * 32, start_ms=late, end_ms=late)
    assert assembler.add(far) == []
    closed = [c for s in spans for c in assembler.add(s)]
    assert closed == []
    closed = assembler.flush(max(s.end_ms for s in spans) + 30_001)
    assert sorted(c.trace_id for c in closed) == sorted({s.trace_id for s in spans})
    assert all(c.complete for c in closed)
