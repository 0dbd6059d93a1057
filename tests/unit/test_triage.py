"""Triage fold: any interleaving of incidents and signals gives the same final report bytes;
duplicates fold; a resolved incident absorbs nothing; identical re-evaluations emit
nothing."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.report_fixtures import MIN, ONSET, SIGNALS, Sig
from tocsin.processors.report import canonical_json
from tocsin.processors.triage import Triage

BASE = {"incident_id": "inc_dd40b8528905eadf", "env": "prod", "service": "checkout",
        "step": "payment.charge", "error_code": "PMT_502",
        "family": "checkout:payment.charge:PMT_502", "onset_ms": ONSET, "baseline": 0.0,
        "lift": None, "rule": "spike.v1", "downstream": "payment"}
LIFECYCLE = [
    {**BASE, "seq": 1, "kind": "opened", "status": "active", "at_ms": ONSET,
     "window_count": 5, "peak_count": 5, "error_count": 5, "last_error_ms": ONSET},
    {**BASE, "seq": 2, "kind": "recovering", "status": "recovering", "at_ms": ONSET + 12 * MIN,
     "window_count": 0, "peak_count": 40, "error_count": 40, "last_error_ms": ONSET + 2 * MIN},
    {**BASE, "seq": 3, "kind": "resolved", "status": "resolved", "at_ms": ONSET + 12 * MIN,
     "window_count": 0, "peak_count": 40, "error_count": 40, "last_error_ms": ONSET + 2 * MIN},
]
LATE_ALERT = Sig("sig_late", "alert", "fired after resolve", ONSET + 30 * MIN)
DUPLICATE = replace(SIGNALS[3], event_time_ms=ONSET + 90_000, state="resolved", occurrences=1)

Item = tuple[str, Any]
ITEMS: list[Item] = [("incident", e) for e in LIFECYCLE] + \
    [("signal", s) for s in [*SIGNALS, LATE_ALERT, DUPLICATE]]


def run(items: list[Item]) -> tuple[Triage, list[dict[str, Any]]]:
    triage = Triage()
    reports: list[dict[str, Any]] = []
    for kind, item in items:
        if kind == "incident":
            reports += triage.on_incident_event(item, item.get("downstream"))
        else:
            reports += triage.on_signal(item)
    return triage, reports


def ordered(seed: int) -> list[Item]:
    """Lifecycle events keep their own order (one key, one partition); the rest is shuffled."""
    rnd = random.Random(seed)
    signals = [i for i in ITEMS if i[0] == "signal"]
    rnd.shuffle(signals)
    merged: list[Item] = []
    lifecycle = [i for i in ITEMS if i[0] == "incident"]
    while signals or lifecycle:
        source = signals if (signals and (not lifecycle or rnd.random() < 0.5)) else lifecycle
        merged.append(source.pop(0))
    return merged


REFERENCE = canonical_json(run(ITEMS)[1][-1])


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 1234])
def test_any_interleaving_gives_the_same_final_report_bytes(seed: int) -> None:
    _, reports = run(ordered(seed))
    assert canonical_json(reports[-1]) == REFERENCE


def test_signals_before_the_incident_exists_are_not_lost() -> None:
    signals_first = [i for i in ITEMS if i[0] == "signal"] + [i for i in ITEMS
                                                             if i[0] == "incident"]
    assert canonical_json(run(signals_first)[1][-1]) == REFERENCE


def test_duplicates_fold_with_an_occurrence_count_and_the_latest_state() -> None:
    triage, _ = run(ITEMS)
    folded = triage.signals["sig_alert"]
    assert folded.occurrences == 4  # 3 in the first delivery, 1 more
    assert folded.signal.state == "resolved"
    assert (folded.first_seen_ms, folded.last_seen_ms) == (ONSET + 30_000, ONSET + 90_000)
    alert = next(a for a in run(ITEMS)[1][-1]["alerts"] if a["id"] == "sig_alert")
    assert alert["occurrences"] == 4 and alert["state"] == "resolved"


def test_a_resolved_incident_absorbs_nothing_after_it_resolved() -> None:
    final = run(ITEMS)[1][-1]
    assert "sig_late" not in {row["id"] for row in final["evidence"]}


def test_identical_re_evaluations_emit_nothing() -> None:
    triage, reports = run(ITEMS)
    assert len({r["report_hash"] for r in reports}) == len(reports)
    # A re-delivered deploy folds (its count is not part of the report): nothing new.
    assert triage.on_signal(SIGNALS[0]) == []
    assert triage.on_incident_event(LIFECYCLE[2]) == []  # a replayed lifecycle event
    # A re-delivered alert changes its occurrence count, which the report shows.
    assert len(triage.on_signal(SIGNALS[3])) == 1


def test_every_emitted_version_differs_from_the_previous() -> None:
    for perm in itertools.islice(itertools.permutations(range(len(ITEMS))), 0, 40, 7):
        _, reports = run([ITEMS[i] for i in perm])
        hashes = [r["report_hash"] for r in reports]
        assert all(a != b for a, b in itertools.pairwise(hashes))


def test_retention_forgets_old_signals_and_long_resolved_incidents_by_event_time() -> None:
    triage, _ = run(ITEMS)
    assert "sig_alert" in triage.signals and BASE["incident_id"] in triage.incidents
    later = Sig("sig_much_later", "alert", "a week later", ONSET + 169 * 60 * MIN,
                service="search")
    triage.on_signal(later)
    assert set(triage.signals) == {"sig_much_later"}
    assert triage.incidents == {}


def test_a_signal_correlates_by_trace_id_even_outside_the_window() -> None:
    traced = {**LIFECYCLE[0], "sample_trace_ids": ["abc123"]}
    triage = Triage()
    triage.on_incident_event(traced)
    far = Sig("sig_trace", "alert", "exception in trace", ONSET + 60 * MIN, service="other",
              trace_id="abc123")
    reports = triage.on_signal(far)
    assert reports and "sig_trace" in {r["id"] for r in reports[-1]["evidence"]}
    assert reports[-1]["snapshots"]["propagation"]["sample_trace"] == "abc123"
    unrelated = Sig("sig_other", "alert", "x", ONSET + 60 * MIN, service="other",
                    trace_id="zzz")
    assert triage.on_signal(unrelated) == []


def test_provenance_is_bounded_like_the_fold() -> None:
    from tocsin.processors.signals.model import Signal
    from tocsin.processors.triage_loop import TriageLoop

    loop = TriageLoop()
    for n in range(3000):
        signal = Signal(
            dedup_key=f"k{n}", type="alert", state="firing", source="native",
            severity="info", title="t", event_time_ms=ONSET + n * 3_600_000)
        loop.apply_signal(signal, None, ["sig", 0, n])
        loop.flush()
    assert len(loop.triage.signals) < 100  # 72 h of hourly signals survive
    assert len(loop.provenance) <= 2 * len(loop.triage.signals) + 1_000


def test_a_fold_checkpoint_survives_json_and_keeps_deliveries() -> None:
    import orjson

    from tocsin.processors.signals.model import Signal
    from tocsin.processors.triage_loop import TriageLoop

    loop = TriageLoop()
    signal = Signal(dedup_key="k", type="alert", state="firing", source="native",
                    severity="info", title="t", event_time_ms=ONSET)
    loop.apply_signal(signal, "dlv_1", ["sig", 0, 0])
    loop.flush()
    restored = TriageLoop.restore(orjson.loads(orjson.dumps(loop.snapshot())))
    restored.apply_signal(signal, "dlv_1", ["sig", 0, 1])  # a retried delivery
    assert restored.redelivered == 1
    assert restored.triage.signals[signal.signal_id].occurrences == 1
    assert restored.provenance == {f"signal:{signal.signal_id}": ["sig", 0, 0]}


def _closed_traces() -> list[Any]:
    from tocsin.clients.otel_workload import proto, workload
    from tocsin.processors.otlp import decode_spans
    from tocsin.processors.traces import TraceAssembler

    t0_ns = ONSET * 1_000_000
    spans = decode_spans(proto(workload(10, {2, 3, 4, 5, 6}, t0_ns, seed=9)))
    assembler = TraceAssembler(idle_ms=30_000)
    closed = [c for s in sorted(spans, key=lambda s: (s.end_ms, s.span_id))
              for c in assembler.add(s)]
    return closed + assembler.close_all()


PAYMENT = {**BASE, "service": "payment", "step": "POST /api/charge",
           "error_code": "shop.payment.PaymentDeclinedError", "downstream": None,
           "family": "payment:POST /api/charge:shop.payment.PaymentDeclinedError",
           "incident_id": "inc_payment"}


def _report_with_traces(traces_first: bool) -> dict[str, Any]:
    triage = Triage()
    opened = {**PAYMENT, **{k: LIFECYCLE[0][k] for k in (
        "seq", "kind", "status", "window_count", "peak_count", "error_count")},
        "at_ms": ONSET + 4_000, "onset_ms": ONSET + 4_000, "last_error_ms": ONSET + 6_000}
    if traces_first:
        for c in _closed_traces():
            triage.apply_trace(c)
        return triage.on_incident_event(opened)[-1]
    triage.on_incident_event(opened)
    for c in _closed_traces():
        triage.apply_trace(c)
    return triage.flush()[-1]


def test_failing_traces_fill_blast_and_propagation_in_any_order() -> None:
    report = _report_with_traces(traces_first=True)
    assert canonical_json(report) == canonical_json(_report_with_traces(traces_first=False))
    snaps = report["snapshots"]
    assert snaps["blast"]["affected_requests"] == 5
    assert snaps["blast"]["capture"] == "ok"
    assert snaps["propagation"]["origin"]["service"] == "payment"
    assert [h["service"] for h in snaps["propagation"]["path"]] == [
        "frontend", "checkout", "payment"]
    assert {r["kind"] for r in report["evidence"]} >= {"incident", "trace"}


def test_snapshots_at_opening_hold_the_traces_ended_by_the_opened_event() -> None:
    report = _report_with_traces(traces_first=True)
    opened_at = ONSET + 4_000
    failing = [c for c in _closed_traces() if c.failing]
    before = [c for c in failing if max(s.end_ms for s in c.spans) <= opened_at]
    assert 0 < len(before) < len(failing) == 5  # the workload straddles the opening
    at_opening = report["snapshots"]["at_opening"]
    assert at_opening["at_ms"] == opened_at
    assert at_opening["blast"]["affected_requests"] == len(before)
    assert at_opening["propagation"]["origin"]["service"] == "payment"
    assert report["snapshots"]["blast"]["affected_requests"] == 5


def test_snapshots_at_opening_without_traces_are_the_opened_event_counts() -> None:
    triage = Triage()
    triage.on_incident_event(LIFECYCLE[0], "payment")
    final = triage.on_incident_event(LIFECYCLE[1], "payment")[-1]
    at_opening = final["snapshots"]["at_opening"]
    assert at_opening["at_ms"] == ONSET
    assert at_opening["blast"]["affected_requests"] == 5  # the opened event's count
    assert final["snapshots"]["blast"]["affected_requests"] == 40  # the latest
    assert at_opening["blast"]["capture"] == "partial"


def test_failing_traces_through_a_downstream_decide_dependency() -> None:
    """A checkout incident whose events named no downstream: its failing traces show the
    failure starting in payment, which checkout calls (ADR 0008, trace_downstream)."""
    triage = Triage()
    checkout = {**PAYMENT, "service": "checkout", "step": "POST /api/checkout",
                "error_code": "HTTP_502", "family": "checkout:POST /api/checkout:HTTP_502",
                "incident_id": "inc_checkout", "seq": 1, "kind": "opened",
                "status": "active", "window_count": 5, "peak_count": 5, "error_count": 5,
                "at_ms": ONSET + 4_000, "onset_ms": ONSET + 4_000,
                "last_error_ms": ONSET + 6_000}
    triage.on_incident_event(checkout)
    for c in _closed_traces():
        triage.apply_trace(c)
    report = triage.flush()[-1]
    cause = report["cause"]
    assert (cause["kind"], cause["rule_id"], cause["confidence"]) == \
        ("dependency", "trace_downstream", "high")
    sample = cause["inputs"][0].removeprefix("trace:")
    assert sample in report["snapshots"]["blast"]["sample_traces"]
    assert cause["reason"] == "5 of 5 failing traces start failing in payment, which " \
        "checkout calls"
    assert report["next_checks"][0].startswith("Check payment: checkout POST /api/checkout")
    assert report["next_checks"][1] == (f"Open trace {sample}: 5 of 5 failing traces start "
                                        "failing in payment.")


def test_traces_after_the_resolve_do_not_count_in_any_order() -> None:
    """While an incident is open its window reaches its last error plus the correlation
    window; once it resolves, it ends there. Traces counted while it reached further go
    when it resolves, so the final report does not depend on whether a summary came before
    or after the resolve (ADR 0012)."""
    failing = sorted(max(s.end_ms for s in c.spans) for c in _closed_traces() if c.failing)
    resolved_at = failing[2]  # two of the five failing traces end after it
    opened = {**PAYMENT, **{k: LIFECYCLE[0][k] for k in (
        "seq", "kind", "status", "window_count", "peak_count", "error_count")},
        "at_ms": ONSET + 4_000, "onset_ms": ONSET + 4_000, "last_error_ms": ONSET + 6_000}
    resolved = {**opened, "seq": 2, "kind": "resolved", "status": "resolved",
                "at_ms": resolved_at}
    finals = []
    for order in ("traces, opened, resolved", "opened, traces, resolved",
                  "opened, resolved, traces"):
        triage = Triage()
        for step in order.split(", "):
            if step == "traces":
                for c in _closed_traces():
                    triage.apply_trace(c)
            else:
                triage.apply_incident_event(opened if step == "opened" else resolved)
        triage.flush()
        finals.append(triage.report("inc_payment"))
    assert finals[0]["snapshots"]["blast"]["affected_requests"] == 3
    assert canonical_json(finals[0]) == canonical_json(finals[1]) == canonical_json(finals[2])
