"""The wire form of a failing trace's summary (ADR 0015, trace assembly → triage):
round trip, one record per service that owns a family of the trace, reports fed through
the wire byte-identical to reports fed closed traces, and a decoder that refuses anything
else with its own error."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.report_fixtures import MIN, ONSET, SIGNALS, Sig
from tests.unit.test_traces import FAILED_TRACE, FAILING, assemble, only, spans_of
from tocsin.processors.family import Family
from tocsin.processors.otlp import Span
from tocsin.processors.report import canonical_json
from tocsin.processors.traces import (
    ClosedTrace,
    SummaryError,
    TraceAssembler,
    TraceSummary,
    decode_summary,
    encode_summary,
    family_service,
    summarize,
    summary_keys,
    summary_records,
)
from tocsin.processors.traces.summary import USERS_PER_TRACE
from tocsin.processors.triage import Triage

T0_NS = ONSET * 1_000_000


def end_of(trace: ClosedTrace) -> int:
    return max(s.end_ms for s in trace.spans)


def fixture_traces() -> list[ClosedTrace]:
    """Closed traces of the trace tests' workload, failing and not: complete ones, one
    missing checkout (a gap), one whose payment sent nothing (an uninstrumented callee),
    one with five users, and, from a second assembler with a 3-span cap, ones with dropped spans."""
    spans = spans_of(12, {1, 2, 3, 5, 8, 9, 11}, T0_NS, seed=9)
    failing = sorted({s.trace_id for s in spans if s.error})
    gap, dark, crowd = failing[0], failing[1], failing[2]
    kept = [s for s in spans if not (s.trace_id == gap and s.service == "checkout")
            and not (s.trace_id == dark and s.service == "payment")]
    kept = [dataclasses.replace(s, user_id=f"user-{s.span_id[:6]}") if s.trace_id == crowd
            else s for s in kept]  # a trace with a user per span
    capped = spans_of(3, {0, 2}, T0_NS + 20 * 1_000_000_000, seed=3)
    return assemble(kept) + assemble(capped, TraceAssembler(max_spans_per_trace=3))


TRACES = fixture_traces()


def test_the_fixtures_cover_what_the_wire_carries() -> None:
    failing = [t for t in TRACES if t.failing]
    assert len(failing) == 9 and len(TRACES) > len(failing)
    summaries = [summarize(t) for t in failing]
    assert {s.complete for s in summaries} == {True, False}
    assert any(s.dropped_spans for s in summaries)
    assert {s.propagation.capture for s in summaries if s.propagation} == {"ok", "partial"}
    assert any(s.propagation and s.propagation.origin.downstream for s in summaries)
    assert any(len(s.users) == 5 for s in summaries)


# ---------------------------------------------------------------- round trip and keys


@pytest.mark.parametrize("index", range(len([t for t in TRACES if t.failing])))
def test_decode_of_encode_is_the_summary_and_its_end(index: int) -> None:
    trace = [t for t in TRACES if t.failing][index]
    summary = summarize(trace)
    value = encode_summary(summary, end_of(trace))
    assert decode_summary(value) == (summary, end_of(trace))
    # canonical: sorted keys, no whitespace, the same bytes however it is re-encoded
    assert value == orjson.dumps(orjson.loads(value), option=orjson.OPT_SORT_KEYS)
    assert encode_summary(*decode_summary(value)) == value
    assert orjson.loads(value)["v"] == 1


def test_typical_size_is_compact_and_carries_no_spans() -> None:
    trace = only(FAILED_TRACE)  # 5 spans, failing in frontend, checkout and payment
    [(_, value), *_] = summary_records(trace)
    assert 600 < len(value) < 1_000, len(value)  # 861 bytes today
    doc = orjson.loads(value)
    assert set(doc) == {"v", "trace_id", "end_ms", "complete", "dropped_spans", "users",
                        "services", "families", "propagation"}
    text = value.decode()
    assert not any(k in text for k in ("start_ms", "parent_span_id", "duration_ms",
                                       "error_message", "http_status"))


def test_a_trace_failing_in_three_services_gives_three_identical_records() -> None:
    trace = only(FAILED_TRACE)
    records = summary_records(trace)
    assert [k for k, _ in records] == ["checkout", "frontend", "payment"]
    assert len({v for _, v in records}) == 1
    assert decode_summary(records[0][1]) == (summarize(trace), end_of(trace))


def test_a_trace_failing_in_two_services_gives_two_records_keyed_by_them() -> None:
    """payment sent no spans: the trace fails in checkout (its client call) and frontend."""
    trace = only([s for s in FAILED_TRACE if s.service != "payment"])
    assert {s.service for s in trace.spans if s.error} == {"checkout", "frontend"}
    records = summary_records(trace)
    assert [k for k, _ in records] == ["checkout", "frontend"]
    assert records[0][1] == records[1][1]
    summary, end_ms = decode_summary(records[0][1])
    assert summary == summarize(trace) and end_ms == end_of(trace)


def test_a_trace_that_did_not_fail_gives_no_record() -> None:
    trace = only(spans_of(1, set()))
    assert not trace.failing
    assert summary_records(trace) == []
    assert summary_keys(summarize(trace)) == []
    with pytest.raises(SummaryError, match="only failing"):
        encode_summary(summarize(trace), end_of(trace))


def test_every_service_owning_a_family_gets_a_copy() -> None:
    """The keys are the union of the failing services and the families' services: a
    family key's service (escaped) gets a copy even when ``services`` did not name it."""
    summary = TraceSummary("ab" * 16, True, True, 0, (), ("edge",),
                           (Family("prod", "db:main", "q", "E").key,
                            Family("prod", "edge", "GET /", "HTTP_500").key), None)
    assert summary_keys(summary) == ["db:main", "edge"]
    for trace in TRACES:
        if not trace.failing:
            continue
        s = summarize(trace)
        keys = [k for k, _ in summary_records(trace)]
        assert keys == sorted(set(s.services) | {f.split(":", 1)[0] for f in s.families})
        assert {f.split(":", 1)[0] for f in s.families} <= set(keys)


@given(st.text(), st.text(), st.text())
@example("a:b", "c\\:d", "\\")
@example("\\", ":", "")
def test_family_service_reads_the_escaped_service_back(service: str, step: str,
                                                       code: str) -> None:
    assert family_service(Family("prod", service, step, code).key) == service


# ---------------------------------------------------------------- hostile strings


HOSTILE = {"frontend": "front:end\\edge", "checkout": "<script>alert('x')</script>&\"",
           "payment": "pæymënt 💥 \u202etnemyap\u202c:\\:"}


def hostile_trace() -> ClosedTrace:
    def rename(s: Span) -> Span:
        return dataclasses.replace(
            s, service=HOSTILE[s.service],
            http_route=None if s.http_route is None else s.http_route + "/:id\\<b>",
            user_id="user\\:😀<i>\x00", error_code=s.error_code and s.error_code + ":\\ü")

    return only([rename(s) for s in FAILED_TRACE])


def test_hostile_strings_survive_the_round_trip_and_key_their_records() -> None:
    trace = hostile_trace()
    summary = summarize(trace)
    assert any("\\:" in f for f in summary.families)  # escaped in the family keys
    records = summary_records(trace)
    assert [k for k, _ in records] == sorted(HOSTILE.values())
    assert decode_summary(records[0][1]) == (summary, end_of(trace))
    assert summary.users == ("user\\:😀<i>\x00",)
    p = decode_summary(records[0][1])[0].propagation
    assert p is not None and p.origin.service == HOSTILE["payment"]


def test_what_json_cannot_carry_is_refused_by_encode_with_the_summary_error() -> None:
    summary = summarize(only(FAILED_TRACE))
    with pytest.raises(SummaryError):
        encode_summary(dataclasses.replace(summary, users=("\ud800",)), 1)
    for end_ms in (-1, 1 << 63):
        with pytest.raises(SummaryError, match="end_ms"):
            encode_summary(summary, end_ms)


def test_users_beyond_the_per_trace_limit_keep_the_smallest_and_count_the_rest() -> None:
    users = tuple(sorted(f"user-{i:05d}" for i in range(USERS_PER_TRACE + 7)))
    summary = TraceSummary("cd" * 16, True, True, 0, users, ("s",), ("s:a:b",), None)
    value = encode_summary(summary, 5)
    assert orjson.loads(value)["users_cut"] == 7
    decoded, _ = decode_summary(value)
    assert decoded.users == users[:USERS_PER_TRACE]
    exact = dataclasses.replace(summary, users=users[:USERS_PER_TRACE])
    assert "users_cut" not in orjson.loads(encode_summary(exact, 5))
    assert decode_summary(encode_summary(exact, 5)) == (exact, 5)


# ---------------------------------------------------------------- the key property


def event(service: str, step: str, code: str, seq: int, kind: str, at_ms: int,
          last_error_ms: int, count: int) -> dict[str, Any]:
    status = {"opened": "active", "recovering": "recovering", "resolved": "resolved"}[kind]
    return {"incident_id": f"inc_{service}", "env": "prod", "service": service,
            "step": step, "error_code": code,
            "family": Family("prod", service, step, code).key,
            "onset_ms": ONSET + 4_000, "baseline": 0.0, "lift": None, "rule": "spike.v1",
            "downstream": None, "seq": seq, "kind": kind, "status": status, "at_ms": at_ms,
            "window_count": count if status == "active" else 0, "peak_count": count,
            "error_count": count, "last_error_ms": last_error_ms}


def lifecycle(service: str, step: str, code: str, opened_ms: int = ONSET + 4_000
              ) -> list[dict[str, Any]]:
    return [event(service, step, code, 1, "opened", opened_ms, ONSET + 6_000, 5),
            event(service, step, code, 2, "recovering", ONSET + 8 * MIN, ONSET + 9_000, 9),
            event(service, step, code, 3, "resolved", ONSET + 20 * MIN, ONSET + 9_000, 9)]


INCIDENTS = [
    # opened while a trace's spans were ending (5,006-5,010 ms): its last end decides
    lifecycle("payment", "POST /api/charge", "shop.payment.PaymentDeclinedError",
              ONSET + 5_008),
    lifecycle("checkout", "POST /api/checkout", "HTTP_502"),
    lifecycle("frontend", "GET /cart/checkout", "HTTP_502"),
]
EXTRA_SIGNALS = [Sig("sig_pay", "alert", "payment declines", ONSET + 5_000, service="payment"),
                 Sig("sig_trace", "alert", "traced", ONSET + 50 * MIN, service="x",
                     trace_id=next(t.trace_id for t in TRACES if t.failing))]

Item = tuple[str, Any]


def items(seed: int) -> list[Item]:
    """Each incident's lifecycle in its own order; signals and traces shuffled in."""
    rnd = random.Random(seed)
    others: list[Item] = [("signal", s) for s in [*SIGNALS, *EXTRA_SIGNALS]] + \
        [("trace", t) for t in TRACES]
    rnd.shuffle(others)
    queues = [[("incident", e) for e in lc] for lc in INCIDENTS] + [others]
    merged: list[Item] = []
    while any(queues):
        merged.append(rnd.choice([q for q in queues if q]).pop(0))
    return merged


def feed(items: Iterable[Item], via_wire: bool, service: str | None = None
         ) -> list[list[dict[str, Any]]]:
    """The reports of every flush, one flush after each item. ``via_wire``: traces go
    through ``summary_records`` → ``decode_summary`` → ``apply_summary``, every copy;
    with ``service``, as the triage partition owning it: only its incidents, and only
    the records keyed by it (signals are a global input)."""
    triage = Triage()
    flushes = []
    for kind, item in items:
        if kind == "incident":
            if service is None or item["service"] == service:
                triage.apply_incident_event(item, item.get("downstream"))
        elif kind == "signal":
            triage.apply_signal(item)
        elif via_wire:
            for key, value in summary_records(item):
                if service is None or key == service:
                    triage.apply_summary(*decode_summary(value))
        else:
            triage.apply_trace(item)
        flushes.append(triage.flush())
    return flushes


def as_bytes(flushes: Sequence[list[dict[str, Any]]]) -> list[list[bytes]]:
    return [[canonical_json(r) for r in flush] for flush in flushes]


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 42])
def test_reports_fed_through_the_wire_are_byte_identical_at_every_flush(seed: int) -> None:
    order = items(seed)
    direct = feed(order, via_wire=False)
    wired = feed(order, via_wire=True)
    assert as_bytes(wired) == as_bytes(direct)
    assert [[r["report_hash"] for r in f] for f in wired] == \
        [[r["report_hash"] for r in f] for f in direct]
    final = {r["incident"]["id"]: r for f in direct for r in f}
    assert set(final) == {"inc_payment", "inc_checkout", "inc_frontend"}
    # the traces did count: blast, propagation and the trace-decided cause
    assert all(r["snapshots"]["blast"]["affected_requests"] for r in final.values())
    assert final["inc_checkout"]["cause"]["rule_id"] == "trace_downstream"
    assert final["inc_payment"]["snapshots"]["blast"]["incomplete_traces"] >= 1


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_each_service_partition_reports_its_incidents_as_the_single_triage_does(
        seed: int) -> None:
    """Every triage partition gets a copy of each summary touching its services' families,
    so partition by partition the incidents' report versions are the single process's."""
    order = items(seed)
    direct = feed(order, via_wire=False)
    for service in ("checkout", "frontend", "payment"):
        alone = feed(order, via_wire=True, service=service)
        mine = [[canonical_json(r) for r in f if r["incident"]["service"] == service]
                for f in direct]
        assert as_bytes(alone) == mine
        assert any(mine)


def test_a_repeated_summary_changes_no_report() -> None:
    order = items(5)
    triage = Triage()
    for kind, item in order:
        if kind == "incident":
            triage.apply_incident_event(item, None)
        elif kind == "signal":
            triage.apply_signal(item)
        else:
            for _, value in summary_records(item):
                triage.apply_summary(*decode_summary(value))
    triage.flush()
    for trace in TRACES:
        for _, value in summary_records(trace):
            triage.apply_summary(*decode_summary(value))
    assert triage.flush() == []


# ---------------------------------------------------------------- the decoder's contract


VALID = summary_records(only(FAILED_TRACE))[0][1]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25)


def decodes_or_refuses(data: bytes) -> None:
    try:
        summary, end_ms = decode_summary(data)
    except SummaryError:
        return
    assert isinstance(summary, TraceSummary) and type(end_ms) is int
    assert all(isinstance(u, str) for u in (*summary.users, *summary.services,
                                            *summary.families))
    again = encode_summary(summary, end_ms)
    assert decode_summary(again) == (summary, end_ms)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    if not path:
        return new
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
@example(b"")
@example(VALID[:-1])
@example(b'{"v":1}')
@example(VALID.replace(b'"v":1', b'"v":true'))
@example(VALID.replace(b'"end_ms":', b'"end_ms":1e3,"x":'))
@example(b"\xff" + VALID)
def test_random_bytes_decode_or_raise_summary_error(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_random_json_decodes_or_raises_summary_error(value: Any) -> None:
    decodes_or_refuses(json.dumps(value).encode())  # json: integers beyond 64 bits too


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), JSON, st.booleans())
def test_mutated_summaries_decode_or_raise_summary_error(data: st.DataObject, new: Any,
                                                         delete: bool) -> None:
    doc = orjson.loads(VALID)
    spots = paths(doc)
    path = data.draw(st.sampled_from(spots))
    decodes_or_refuses(json.dumps(mutate(doc, path, new, delete and bool(path))).encode())


@pytest.mark.parametrize("change", [
    {"v": 2}, {"v": True}, {"end_ms": -1}, {"end_ms": 1 << 63}, {"end_ms": 1.5},
    {"dropped_spans": False}, {"complete": 1}, {"users": "user-1"}, {"users": [1]},
    {"services": None}, {"extra": 1}, {"users_cut": 0}, {"propagation": []},
    {"propagation": {"capture": "missing"}},
])
def test_malformed_fields_are_refused(change: dict[str, Any]) -> None:
    doc = {**orjson.loads(VALID), **change}
    with pytest.raises(SummaryError):
        decode_summary(orjson.dumps(doc))


def test_a_propagation_of_the_wrong_shape_is_refused() -> None:
    good = orjson.loads(VALID)
    for where, change in [("origin", {"kind": None}), ("origin", {"x": 1}),
                          ("hop", {"error": "yes"}), ("hop", {"span_id": None}),
                          ("top", {"capture": "missing"}), ("top", {"sample_trace": 3})]:
        doc = orjson.loads(VALID)
        p = doc["propagation"]
        target = p["origin"] if where == "origin" else p["path"][0] if where == "hop" else p
        target.update(change)
        with pytest.raises(SummaryError):
            decode_summary(orjson.dumps(doc))
    assert decode_summary(orjson.dumps(good))[0] == summarize(only(FAILED_TRACE))
    with pytest.raises(SummaryError):
        decode_summary("not bytes")  # type: ignore[arg-type]


def test_blast_counts_through_the_wire_equal_the_direct_ones() -> None:
    """The blast radius of the trace tests' known workload, fed decoded summaries."""
    from tocsin.processors.traces import BlastRadius

    traces = assemble(spans_of(20, FAILING))
    direct, wired = BlastRadius("k", "checkout"), BlastRadius("k", "checkout")
    for t in traces:
        direct.add(summarize(t))
        for _, value in summary_records(t)[:1]:
            wired.add(decode_summary(value)[0])
    assert wired.snapshot() == direct.snapshot()
    assert wired.to_dict()["affected_requests"] == 8
