"""The triage fold's checkpoint (ADR 0015): a partitioned stage flushes, snapshots the fold
(JSON), and after a crash restores it and replays the inputs after the checkpoint. Cut a
realistic sequence of inputs anywhere, and the restored fold publishes exactly the report
versions (and bytes) of the fold that never stopped, flushing at the same points.

The inputs are what the stage reads: lifecycle events of several incidents
(``IncidentEvent.to_dict()``, seq order per incident), real :class:`Signal` objects (alerts,
deploys, runtime, a dependency; duplicates, a re-delivery, occurrence counts folded at
delivery, signals tied to an incident or a trace), and failing traces from the
OpenTelemetry workload, closed by the assembler and fed either as closed traces
(``apply_trace``) or as the wire records trace assembly publishes (``summary_records`` →
``decode_summary`` → ``apply_summary``; one record per service, so duplicates).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.otlp import decode_spans
from tocsin.processors.report import canonical_json
from tocsin.processors.signals.model import Signal
from tocsin.processors.traces import ClosedTrace, TraceAssembler
from tocsin.processors.traces.summary import decode_summary, summary_records
from tocsin.processors.triage import SNAPSHOT_VERSION, Triage, TriageConfig

T0 = 1_714_564_800_000  # ms
S = 1_000
MIN = 60 * S
HOUR = 60 * MIN

PAYMENT = ("payment", "POST /api/charge", "shop.payment.PaymentDeclinedError")
CHECKOUT = ("checkout", "POST /api/checkout", "HTTP_502")
SEARCH = ("search", "GET /search", "HTTP_500")

Item = tuple[str, Any]


# ---------------------------------------------------------------------- inputs


def closed_traces(t0_ms: int, seed: int) -> list[ClosedTrace]:
    """Eight requests a second apart from ``t0_ms``; four fail at payment (the callers
    answer 502), so their traces carry the payment, checkout and frontend families."""
    spans = decode_spans(proto(workload(8, {1, 2, 4, 6}, t0_ms * 1_000_000, seed=seed)))
    assembler = TraceAssembler(idle_ms=30_000)
    closed = [c for s in sorted(spans, key=lambda s: (s.end_ms, s.span_id))
              for c in assembler.add(s)]
    return closed + assembler.close_all()


BURST = closed_traces(T0, seed=9)
LATER_BURST = closed_traces(T0 + 2 * HOUR, seed=11)
SAMPLE = next(c.trace_id for c in BURST if c.failing)


def lifecycle(family: tuple[str, str, str], onset_ms: int, steps: Sequence[tuple[Any, ...]],
              name: str, downstream: str | None = None,
              samples: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Events of one incident: steps are (kind, status, at, window, peak, errors, last
    error), in seq order."""
    service, step, code = family
    return [IncidentEvent(
        incident_id=f"inc_{name}", seq=seq, kind=kind, status=status, env="prod",
        service=service, step=step, error_code=code, family=":".join(family),
        onset_ms=onset_ms, at_ms=at, window_count=window, baseline=0.5 if seq > 1 else 0.0,
        lift=round(window / 0.5, 6) if seq > 1 else None, peak_count=peak,
        error_count=errors, last_error_ms=last, downstream=downstream,
        sample_trace_ids=samples).to_dict()
        for seq, (kind, status, at, window, peak, errors, last) in enumerate(steps, 1)]


INCIDENTS = [
    # Opens between the burst's failing traces: the snapshot at opening holds two of four.
    lifecycle(PAYMENT, T0 + 3 * S, [
        ("opened", "active", T0 + 3 * S, 5, 5, 5, T0 + 3 * S),
        ("recovering", "recovering", T0 + 5 * MIN, 0, 9, 12, T0 + 4 * MIN),
        ("reopened", "active", T0 + 7 * MIN, 6, 9, 18, T0 + 7 * MIN),
        ("recovering", "recovering", T0 + 15 * MIN, 0, 9, 20, T0 + 9 * MIN),
        ("resolved", "resolved", T0 + 25 * MIN, 0, 9, 20, T0 + 9 * MIN)],
        "payment_1", samples=(SAMPLE,)),
    # No downstream named: the traces decide it (trace_downstream).
    lifecycle(CHECKOUT, T0 + 2 * S, [
        ("opened", "active", T0 + 2 * S, 5, 5, 5, T0 + 2 * S),
        ("recovering", "recovering", T0 + 10 * MIN, 0, 7, 7, T0 + 3 * MIN),
        ("resolved", "resolved", T0 + 20 * MIN, 0, 7, 7, T0 + 3 * MIN)],
        "checkout"),
    lifecycle(SEARCH, T0 + 10 * MIN, [
        ("opened", "active", T0 + 10 * MIN, 8, 8, 8, T0 + 10 * MIN),
        ("recovering", "recovering", T0 + 30 * MIN, 0, 8, 11, T0 + 20 * MIN),
        ("resolved", "resolved", T0 + 40 * MIN, 0, 8, 11, T0 + 20 * MIN)],
        "search", downstream="elastic"),
    lifecycle(PAYMENT, T0 + 2 * HOUR + 2 * S, [
        ("opened", "active", T0 + 2 * HOUR + 2 * S, 5, 5, 5, T0 + 2 * HOUR + 2 * S),
        ("resolved", "resolved", T0 + 2 * HOUR + 30 * MIN, 0, 6, 6, T0 + 2 * HOUR + MIN)],
        "payment_2"),
]


def signal(key: str, type_: str, title: str, t_ms: int, **fields: Any) -> Signal:
    fields.setdefault("source", "native")
    fields.setdefault("severity", "warning")
    fields.setdefault("state", "firing")
    fields.setdefault("service", "checkout")
    fields.setdefault("env", "prod")
    return Signal(dedup_key=key, type=type_, title=title, event_time_ms=t_ms, **fields)


LABELS = {"alertname": "CheckoutErrorRate", "severity": "page", "team": "shop"}
ALERT = signal("CheckoutErrorRate", "alert", "CheckoutErrorRate high", T0 + 30 * S,
               source="alertmanager", occurrences=3,  # three repeats folded at delivery
               provider_url="http://prometheus:9090/graph?g0.expr=rate", labels=LABELS)
SIGNALS = [
    signal("checkout-1.5.0", "deploy", "checkout 1.5.0 deployed", T0 - 6 * MIN,
           source="ci", severity="info", version="1.5.0", commit="8f2c1e0", author="dana",
           pr_url="https://github.com/acme/checkout/pull/412"),
    signal("payment-gw", "dependency", "payment gateway 502s", T0 - 2 * MIN,
           service="payment", severity="critical"),
    signal("oom/checkout-7d9f", "runtime", "checkout-7d9f container api OOMKilled",
           T0 - MIN, source="kubernetes", severity="critical", reason="OOMKilled",
           runtime_subtype="oom_killed", pod="checkout-7d9f", container="api",
           exit_code=137, restart_count=3),
    signal("oom/checkout-7d9f", "runtime", "checkout-7d9f container api OOMKilled",
           T0 + 4 * MIN, source="kubernetes", severity="critical", reason="OOMKilled",
           runtime_subtype="oom_killed", pod="checkout-7d9f", container="api",
           exit_code=137, restart_count=4),
    ALERT,
    ALERT,  # the same delivery again
    signal("CheckoutErrorRate", "alert", "CheckoutErrorRate high", T0 + 12 * MIN,
           source="alertmanager", state="resolved", labels=LABELS),
    signal("search-latency", "alert", "search p99 high", T0 + 9 * MIN, service="search",
           source="grafana"),
    # Tied to the search incident; its resolve comes after the incident's, which moves the
    # fold's latest occurrence out of the incident's evidence.
    signal("PD-4411", "alert", "search degraded", T0 + 11 * MIN, service=None,
           source="pagerduty", state="acknowledged", incident_id="inc_search"),
    signal("PD-4411", "alert", "search degraded", T0 + 41 * MIN, service=None,
           source="pagerduty", state="resolved", incident_id="inc_search"),
    # Outside the payment incident's window, but in one of its sample traces.
    signal("sentry-991", "runtime", "PaymentDeclinedError", T0 + 24 * MIN,
           service="payment", source="sentry", runtime_subtype="uncaught_exception",
           trace_id=SAMPLE),
    signal("payment-2.0.1", "deploy", "payment 2.0.1 deployed", T0 + 2 * HOUR - 5 * MIN,
           service="payment", source="ci", severity="info", version="2.0.1"),
    signal("crash/payment-55c", "runtime", "payment-55c CrashLoopBackOff",
           T0 + 2 * HOUR + MIN, service="payment", source="kubernetes",
           runtime_subtype="crashloop", pod="payment-55c", occurrences=2),
    signal("CheckoutErrorRate", "alert", "CheckoutErrorRate high", T0 + 3 * HOUR,
           source="alertmanager", labels=LABELS),  # late: after every incident resolved
]


def trace_items(traces: Iterable[ClosedTrace]) -> list[Item]:
    """Every trace, alternately as a closed trace and as its wire records (one per
    service: the same summary two or three times)."""
    out: list[Item] = []
    for n, trace in enumerate(traces):
        if n % 2 == 0 or not trace.failing:
            out.append(("trace", trace))
        else:
            out += [("summary", value) for _, value in summary_records(trace)]
    return out


def event_time(item: Item) -> int:
    kind, value = item
    if kind == "incident":
        return int(value["at_ms"])
    if kind == "signal":
        return int(value.event_time_ms)
    if kind == "trace":
        return max(s.end_ms for s in value.spans)
    return decode_summary(value)[1]


ITEMS: list[Item] = sorted(
    [("incident", e) for events in INCIDENTS for e in events]
    + [("signal", s) for s in SIGNALS] + trace_items(BURST) + trace_items(LATER_BURST),
    key=event_time)


def interleaved(order: Sequence[int]) -> list[Item]:
    """ITEMS in the given order, except that each incident's events keep their seq order
    (one key, one partition): incident slots are refilled in their own order."""
    shuffled = [ITEMS[i] for i in order]
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for kind, value in ITEMS:
        if kind == "incident":
            by_incident.setdefault(value["incident_id"], []).append(value)
    nexts = {k: iter(v) for k, v in by_incident.items()}
    return [("incident", next(nexts[v["incident_id"]])) if kind == "incident" else (kind, v)
            for kind, v in shuffled]


def shuffled(seed: int) -> list[Item]:
    order = list(range(len(ITEMS)))
    random.Random(seed).shuffle(order)
    return interleaved(order)


# ---------------------------------------------------------------------- runs

DEFAULT = TriageConfig()
# Everything bounded and short, so the run crosses every limit: the signals cap, the kept
# traces per family, and hourly retention of signals, traces and resolved incidents.
TIGHT = TriageConfig(correlation_window_ms=10 * MIN, signal_retention_ms=50 * MIN,
                     traces_per_family=2, incident_retention_ms=70 * MIN, max_signals=3)
CONFIGS = {"default": DEFAULT, "tight": TIGHT}


def apply(triage: Triage, item: Item) -> None:
    kind, value = item
    if kind == "incident":
        triage.apply_incident_event(value, value.get("downstream"))  # as TriageLoop does
    elif kind == "signal":
        triage.apply_signal(value)
    elif kind == "trace":
        triage.apply_trace(value)
    else:
        triage.apply_summary(*decode_summary(value))


def checkpoint(triage: Triage, config: TriageConfig) -> Triage:
    """What the stage does at a checkpoint and after a crash: the snapshot through JSON
    (no option: any key or value JSON cannot hold fails here), then restore."""
    snap = orjson.loads(orjson.dumps(triage.snapshot()))
    return Triage.restore(snap, config)


class Run:
    """A run's outputs: the report hashes of every flush, in order, and at the end the
    bytes of each incident's last version and of its report now, and the state."""

    def __init__(self, items: Sequence[Item], config: TriageConfig,
                 flush_after: Iterable[int], restore_after: Iterable[int] = ()) -> None:
        flush_after, restore_after = set(flush_after), set(restore_after)
        triage = Triage(config)
        self.flushes: list[list[tuple[str, str]]] = []
        last: dict[str, bytes] = {}
        for n, item in enumerate(items):
            apply(triage, item)
            if n in flush_after or n in restore_after or n == len(items) - 1:
                reports = triage.flush()
                self.flushes.append([(r["incident"]["id"], r["report_hash"]) for r in reports])
                last.update((r["incident"]["id"], canonical_json(r)) for r in reports)
            if n in restore_after:
                triage = checkpoint(triage, config)
        self.last = last
        self.now = {i: canonical_json(triage.report(i)) for i in sorted(triage.incidents)}
        self.state = orjson.dumps(triage.snapshot())
        self.dropped = triage.signals_dropped
        self.triage = triage


def assert_same(cut: Run, uncut: Run, where: str) -> None:
    assert cut.flushes == uncut.flushes, f"report versions differ after a restore {where}"
    assert cut.last == uncut.last, f"last versions' bytes differ {where}"
    assert cut.now == uncut.now, f"reports now differ {where}"
    assert cut.state == uncut.state, f"states differ {where}"
    assert cut.dropped == uncut.dropped


# ---------------------------------------------------------------------- tests


def test_the_scenario_reaches_what_a_checkpoint_must_carry() -> None:
    """The inputs are not vacuous: without a cut they build blasts and snapshots at
    opening, fold duplicates, cite a trace-tied signal, drop and evict (tight), and every
    report version is published."""
    uncut = Run(ITEMS, DEFAULT, set())
    t = uncut.triage
    assert set(t.incidents) == {"inc_payment_1", "inc_checkout", "inc_search",
                                "inc_payment_2"}
    assert t.blasts["inc_payment_1"].affected_requests == 4
    assert t.opening_blasts["inc_payment_1"].affected_requests == 2
    assert t.signals[ALERT.signal_id].occurrences == 8  # 3 + 3 (re-delivered) + 1 + 1 late
    pay = orjson.loads(uncut.now["inc_payment_1"])
    assert pay["snapshots"]["at_opening"]["blast"]["affected_requests"] == 2
    assert SIGNALS[10].signal_id in {r["id"] for r in pay["evidence"]}
    checkout = orjson.loads(uncut.now["inc_checkout"])
    assert checkout["cause"]["rule_id"] == "trace_downstream"
    assert all(uncut.last[i] == uncut.now[i] for i in uncut.now)  # nothing stale
    tight = Run(ITEMS, TIGHT, set()).triage
    assert tight.signals_dropped > 0 and len(tight.signals) <= TIGHT.max_signals
    assert tight._evicted_at_ms > 0 and "inc_payment_1" not in tight.incidents
    assert all(len(kept) <= 2 for kept in tight.traces.values())


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [None, 1, 7])
def test_a_restore_at_any_point_publishes_what_the_uncut_run_does(
        config: str, seed: int | None) -> None:
    items = ITEMS if seed is None else shuffled(seed)
    flush_after = set(range(0, len(items), 3)) | set(range(len(items) - 5, len(items)))
    cfg = CONFIGS[config]
    for n in range(-1, len(items)):
        # A cut after input n flushes there; so does the uncut run it is compared with.
        flushes = flush_after | {n}
        uncut = Run(items, cfg, flushes)
        assert_same(Run(items, cfg, flushes, restore_after={n}), uncut, f"after input {n}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_restore_at_every_flush_of_one_run(config: str) -> None:
    cfg = CONFIGS[config]
    every = set(range(len(ITEMS)))
    assert_same(Run(ITEMS, cfg, every, restore_after=every), Run(ITEMS, cfg, every),
                "after every input")


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(len(ITEMS))), st.sets(st.integers(0, len(ITEMS) - 1)),
       st.sets(st.integers(0, len(ITEMS) - 1), max_size=4), st.sampled_from(sorted(CONFIGS)))
def test_restores_anywhere_in_any_interleaving(order: list[int], flush_after: set[int],
                                               restore_after: set[int], config: str) -> None:
    items = interleaved(order)
    cfg = CONFIGS[config]
    assert_same(Run(items, cfg, flush_after, restore_after),
                Run(items, cfg, flush_after | restore_after), f"after {sorted(restore_after)}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_restored_fold_snapshots_as_the_original(config: str) -> None:
    cfg = CONFIGS[config]
    triage = Triage(cfg)
    for item in shuffled(3):
        apply(triage, item)
        triage.flush()
        snap = orjson.loads(orjson.dumps(triage.snapshot()))
        again = Triage.restore(snap, cfg)
        assert orjson.loads(orjson.dumps(again.snapshot())) == snap
        assert orjson.dumps(again.snapshot()) == orjson.dumps(triage.snapshot())
        assert fold_state(again) == fold_state(triage)


def fold_state(t: Triage) -> dict[str, Any]:
    """Every attribute of a fold, comparable. A new attribute fails here until it is
    carried by snapshot() or derived by restore(), and listed below."""
    def current(heap: list[tuple[int, str]], resolved: bool) -> set[tuple[int, str]]:
        # The heaps are read lazily: only entries matching a held fold count.
        return {(ms, k) for ms, k in heap if k in t.signals
                and t.signals[k].last_seen_ms == ms
                and (not resolved or t.signals[k].signal.state == "resolved")}

    def blasts(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v.snapshot() for k, v in b.items()}

    known: dict[str, Callable[[Any], Any]] = {
        "config": lambda v: v, "incidents": dict, "signals": dict, "last_hash": dict,
        "downstreams": dict, "dirty": set, "horizon_ms": int, "traces": dict,
        "blasts": blasts, "opened": dict, "opening_blasts": blasts, "_counted": dict,
        "_evicted_at_ms": int, "signals_dropped": int, "actions": dict,
        "news_basis": dict, "news_told": dict, "updates": list, "timelines": dict,
        "_by_age": lambda v: current(v, False),
        "_resolved_by_age": lambda v: current(v, True),
        "_trace_docs": lambda v: None,  # a cache of snapshot forms: what it holds is not state
    }
    attributes = vars(t)
    assert set(attributes) <= set(known), \
        f"not checkpointed: {sorted(set(attributes) - set(known))}"
    return {name: known[name](value) for name, value in attributes.items()}


def test_every_held_signal_keeps_its_place_in_the_cap_after_a_restore() -> None:
    # A resolved heap that restore() forgot would drop the oldest signal instead of the
    # oldest resolved one; a by-age heap that forgot a signal would never drop it.
    states = ("firing", "acknowledged", "resolved")
    rnd = random.Random(5)
    signals = [signal(f"k{rnd.randrange(9)}", "alert", "a", T0 + rnd.randrange(120) * MIN,
                      state=rnd.choice(states), service=rnd.choice(["checkout", "search"]))
               for _ in range(60)]
    items: list[Item] = [("signal", s) for s in signals]
    for cap in (1, 2, 4):
        cfg = TriageConfig(max_signals=cap, signal_retention_ms=60 * MIN)
        assert Run(items, cfg, set()).dropped >= 5
        for n in range(len(items)):
            # The cut flushes (retention may run), so the uncut fold flushes there too.
            uncut, t = Triage(cfg), Triage(cfg)
            for m, item in enumerate(items):
                apply(uncut, item)
                apply(t, item)
                if m == n:
                    uncut.flush()
                    t.flush()
                    t = checkpoint(t, cfg)
                assert (sorted(t.signals), t.signals_dropped) == \
                    (sorted(uncut.signals), uncut.signals_dropped), \
                    f"cap {cap}: after a restore at {n}, input {m} drops otherwise"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(0, 7), st.sampled_from(
    ("firing", "acknowledged", "resolved")), st.integers(0, 200)), min_size=1, max_size=30),
    st.data())
def test_the_cap_drops_the_same_signals_after_a_restore(
        cap: int, drawn: list[tuple[int, str, int]], data: st.DataObject) -> None:
    cfg = TriageConfig(max_signals=cap, signal_retention_ms=60 * MIN)
    items: list[Item] = [("signal", signal(f"k{k}", "alert", "a", T0 + t * MIN, state=state))
                         for k, state, t in drawn]
    cuts = data.draw(st.sets(st.integers(0, len(items) - 1), max_size=3))
    uncut, restored = Run(items, cfg, cuts), Run(items, cfg, cuts, restore_after=cuts)
    assert_same(restored, uncut, f"after {sorted(cuts)}")


def test_a_snapshot_of_another_version_is_refused() -> None:
    triage = Triage()
    for item in ITEMS[:10]:
        apply(triage, item)
    triage.flush()
    snap = orjson.loads(orjson.dumps(triage.snapshot()))
    assert snap["v"] == SNAPSHOT_VERSION
    for v in (SNAPSHOT_VERSION + 1, SNAPSHOT_VERSION - 1, None, str(SNAPSHOT_VERSION)):
        with pytest.raises(ValueError, match="another snapshot version"):
            Triage.restore({**snap, "v": v})
    del snap["v"]
    with pytest.raises(ValueError, match="another snapshot version"):
        Triage.restore(snap)


def test_a_kept_trace_with_more_users_than_the_wire_carries_survives_a_restore() -> None:
    """The wire cuts a summary's users at USERS_PER_TRACE (only reachable with an assembler
    span cap above 1,000, fed through ``apply_trace``); a checkpoint must not: the trace is
    counted by an incident that opens after the restore, with every user."""
    from tocsin.processors.traces import TraceSummary
    from tocsin.processors.traces.summary import USERS_PER_TRACE

    family = ":".join(PAYMENT)
    many = TraceSummary("f" * 32, True, True, 0,
                        tuple(f"user-{n:05d}" for n in range(USERS_PER_TRACE + 1)),
                        ("payment",), (family,), None)
    opened = INCIDENTS[0][0]
    uncut, t = Triage(), Triage()
    for fold in (uncut, t):
        fold.apply_summary(many, T0 + S)
        fold.flush()
    t = checkpoint(t, DEFAULT)
    reports = [fold.on_incident_event(opened) for fold in (uncut, t)]
    blast = reports[0][-1]["snapshots"]["blast"]
    assert (blast["users_estimated"], blast["affected_requests"]) == (True, 1)
    assert [canonical_json(r) for r in reports[1]] == [canonical_json(r) for r in reports[0]]
