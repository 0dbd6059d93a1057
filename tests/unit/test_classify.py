"""Cause rules, one table per rule and one of end-to-end scenarios for the temporal
tiebreak and deploys after onset (ADR 0008)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tocsin.processors.classify import ClassifierConfig, IncidentFacts, TraceFacts, classify

ONSET = 1_793_612_400_000
MIN = 60_000


@dataclass(frozen=True)
class Sig:
    signal_id: str
    type: str
    service: str | None = "checkout"
    env: str | None = "prod"
    event_time_ms: int = ONSET
    starts_at_ms: int | None = None
    downstream: str | None = None
    version: str | None = None
    incident_id: str | None = None


def incident(downstream: str | None = "payment", version: str | None = None) -> IncidentFacts:
    return IncidentFacts("inc_x", "prod", "checkout", "payment.charge", "PMT_502", ONSET,
                         downstream, version)


CASES = [
    # (name, incident downstream, signals, expected kind, confidence, rule, inputs)
    ("dependency signal on the failing downstream", "payment",
     [Sig("d1", "dependency", service="payment", event_time_ms=ONSET - 2 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",)),
    ("dependency signal names the downstream explicitly", "payment",
     [Sig("d1", "dependency", service="gateway", downstream="payment")],
     "dependency", "high", "dependency_signal", ("d1",)),
    ("dependency signal on another service does not count", "payment",
     [Sig("d1", "dependency", service="search")],
     "dependency", "medium", "failing_downstream", ()),
    ("dependency signal outside 15 min does not count", "payment",
     [Sig("d1", "dependency", service="payment", event_time_ms=ONSET - 16 * MIN)],
     "dependency", "medium", "failing_downstream", ()),
    ("failing step with a downstream", "payment", [],
     "dependency", "medium", "failing_downstream", ()),
    ("deploy of the service within 15 min", None,
     [Sig("v1", "deploy", event_time_ms=ONSET - 10 * MIN, version="1.5.0")],
     "deploy", "high", "service_deploy", ("v1",)),
    ("deploy in another env does not count", None,
     [Sig("v1", "deploy", env="staging", event_time_ms=ONSET - MIN)],
     "app", "medium", "app_step", ()),
    ("deploy 16 min before does not count", None,
     [Sig("v1", "deploy", event_time_ms=ONSET - 16 * MIN)],
     "app", "medium", "app_step", ()),
    ("deploy linked to the incident, any service", None,
     [Sig("v2", "deploy", service="payment", event_time_ms=ONSET - 40 * MIN,
          incident_id="inc_x")],
     "deploy", "high", "linked_deploy", ("v2",)),
    ("runtime fault in [onset-5m, onset+1m]", None,
     [Sig("r1", "runtime", event_time_ms=ONSET + 30_000)],
     "runtime", "high", "runtime_fault", ("r1",)),
    ("runtime fault 2 min after onset does not count", None,
     [Sig("r1", "runtime", event_time_ms=ONSET + 2 * MIN)],
     "app", "medium", "app_step", ()),
    ("runtime fault on another service does not count", None,
     [Sig("r1", "runtime", service="payment")],
     "app", "medium", "app_step", ()),
    ("failing step without downstream", None, [], "app", "medium", "app_step", ()),
    ("alerts never decide", None,
     [Sig("a1", "alert"), Sig("a2", "alert", service="payment")],
     "app", "medium", "app_step", ()),
    ("deploy beats runtime (rule order)", None,
     [Sig("r1", "runtime"), Sig("v1", "deploy", event_time_ms=ONSET - MIN)],
     "deploy", "high", "service_deploy", ("v1",)),
]


@pytest.mark.parametrize(("name", "down", "signals", "kind", "confidence", "rule", "inputs"),
                         CASES, ids=[c[0] for c in CASES])
def test_rule(name: str, down: str | None, signals: list[Sig], kind: str, confidence: str,
              rule: str, inputs: tuple[str, ...]) -> None:
    decision = classify(incident(down), signals)
    assert (decision.kind, decision.confidence, decision.rule_id, decision.inputs) == \
        (kind, confidence, rule, inputs)
    assert decision.thresholds == ClassifierConfig().thresholds()


def dep(offset: int, signal_id: str = "d1") -> Sig:
    """A dependency signal on payment, ``offset`` ms from onset."""
    return Sig(signal_id, "dependency", service="payment", event_time_ms=ONSET + offset)


def deploy(offset: int, signal_id: str = "v1", began: int | None = None,
           env: str | None = "prod") -> Sig:
    """A deploy of checkout, ``offset`` ms from onset (begun ``began`` ms from it)."""
    return Sig(signal_id, "deploy", env=env, event_time_ms=ONSET + offset,
               starts_at_ms=None if began is None else ONSET + began)


TRACE_INPUT = "trace:4bf92f3577b34da6a3ce929d0e0e4736"

# The rules end to end, one row per scenario (ADR 0008, rule version 3): the cause, the
# rule cited and its inputs, the tiebreak sentence's start (None: no tiebreak) and the
# deploys that landed after onset.
SCENARIOS = [
    # (name, incident downstream, traces agree, signals,
    #  kind, confidence, rule, inputs, tiebreak starts with, later deploys)
    ("step downstream at onset beats a deploy 1 min before", "payment", False,
     [deploy(-MIN)],
     "dependency", "medium", "failing_downstream", (),
     "failing_downstream is closer to onset than service_deploy (0 ms vs 60000 ms)", ()),
    ("more dependency evidence keeps dependency: signal 10 min before is cited", "payment",
     False, [deploy(-MIN), dep(-10 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "failing_downstream is closer to onset than service_deploy (0 ms vs 60000 ms)", ()),
    ("dependency signal far before, downstream at onset, deploy 1 min before", "payment",
     False, [deploy(-MIN), dep(-15 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "failing_downstream is closer to onset than service_deploy", ()),
    ("dependency signal closer than the deploy", "payment", False,
     [deploy(-5 * MIN), dep(-MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "failing_downstream is closer to onset than service_deploy", ()),
    ("dependency signal after onset, deploy before: the downstream at onset is weighed",
     "payment", False, [deploy(-10 * MIN), dep(+MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "failing_downstream is closer to onset than service_deploy", ()),
    ("deploy 2 min after onset of an app failure is not the cause", None, False,
     [deploy(+2 * MIN)],
     "app", "medium", "app_step", (), None, ("v1",)),
    ("deploy 1 s after onset is not the cause", None, False, [deploy(+1000)],
     "app", "medium", "app_step", (), None, ("v1",)),
    ("deploy exactly at onset is a cause", None, False, [deploy(0)],
     "deploy", "high", "service_deploy", ("v1",), None, ()),
    ("deploy exactly at onset ties with the step's downstream: dependency kept", "payment",
     False, [deploy(0)],
     "dependency", "medium", "failing_downstream", (),
     "failing_downstream and service_deploy are equally close to onset (0 ms): a tie "
     "keeps dependency", ()),
    ("dependency signal and deploy both at onset: the signal is weighed (rule order) and "
     "cited", "payment", False, [deploy(0), dep(0)],
     "dependency", "high", "dependency_signal", ("d1",),
     "dependency_signal and service_deploy are equally close to onset (0 ms): a tie "
     "keeps dependency", ()),
    ("dependency signal and deploy equally far before onset", "payment", False,
     [deploy(-3 * MIN), dep(-3 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "failing_downstream is closer to onset than service_deploy", ()),
    ("deploy after onset with the step's downstream: no tiebreak", "payment", False,
     [deploy(+2 * MIN)],
     "dependency", "medium", "failing_downstream", (), None, ("v1",)),
    ("deploy after onset with a dependency signal", "payment", False,
     [deploy(+MIN), dep(-5 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",), None, ("v1",)),
    ("deploy after onset falls through to a runtime fault", None, False,
     [deploy(+MIN), Sig("r1", "runtime", event_time_ms=ONSET - MIN)],
     "runtime", "high", "runtime_fault", ("r1",), None, ("v1",)),
    ("a deploy before onset is cited, one after is listed", None, False,
     [deploy(-10 * MIN), deploy(+30_000, "v2")],
     "deploy", "high", "service_deploy", ("v1",), None, ("v2",)),
    ("linked deploy after onset is not the cause", None, False,
     [Sig("v2", "deploy", service="payment", event_time_ms=ONSET + 5 * MIN,
          incident_id="inc_x")],
     "app", "medium", "app_step", (), None, ("v2",)),
    ("deploy begun before onset, finished after: under way at onset, a cause", None, False,
     [deploy(+2 * MIN, began=-MIN)],
     "deploy", "high", "service_deploy", ("v1",), None, ()),
    ("deploy under way at onset ties with the step's downstream: dependency kept",
     "payment", False, [deploy(+2 * MIN, began=-MIN)],
     "dependency", "medium", "failing_downstream", (),
     "failing_downstream and service_deploy are equally close to onset (0 ms)", ()),
    ("deploy begun and finished after onset is not the cause", None, False,
     [deploy(+3 * MIN, began=+MIN)],
     "app", "medium", "app_step", (), None, ("v1",)),
    ("a deploy under way at onset is cited before one finished earlier", None, False,
     [deploy(-MIN, "v0"), deploy(+2 * MIN, began=-5 * MIN)],
     "deploy", "high", "service_deploy", ("v1",), None, ()),
    ("deploy more than 15 min after onset is not listed", None, False,
     [deploy(+16 * MIN)],
     "app", "medium", "app_step", (), None, ()),
    ("deploy after onset in another env is not listed", None, False,
     [deploy(+MIN, env="staging")],
     "app", "medium", "app_step", (), None, ()),
    ("traces at onset beat a deploy 1 min before; the dependency signal is cited", None,
     True, [deploy(-MIN), dep(-10 * MIN)],
     "dependency", "high", "dependency_signal", ("d1",),
     "trace_downstream is closer to onset than service_deploy (0 ms vs 60000 ms)", ()),
    ("traces and a deploy after onset", None, True, [deploy(+MIN)],
     "dependency", "high", "trace_downstream", (TRACE_INPUT,), None, ("v1",)),
]


@pytest.mark.parametrize(("name", "down", "traces", "signals", "kind", "confidence", "rule",
                          "inputs", "tiebreak", "later"),
                         SCENARIOS, ids=[c[0] for c in SCENARIOS])
def test_scenario(name: str, down: str | None, traces: bool, signals: list[Sig], kind: str,
                  confidence: str, rule: str, inputs: tuple[str, ...], tiebreak: str | None,
                  later: tuple[str, ...]) -> None:
    decision = classify(incident(down), signals, traces=traced() if traces else None)
    assert (decision.kind, decision.confidence, decision.rule_id, decision.inputs) == \
        (kind, confidence, rule, inputs)
    assert decision.later_deploys == later
    assert decision.to_dict()["later_deploys"] == list(later)
    assert decision.rule_version == 3
    if tiebreak is None:
        assert decision.tiebreak is None
    else:
        assert decision.tiebreak is not None and decision.tiebreak.startswith(tiebreak)
        assert decision.tiebreak.endswith(
            f"; cited: {rule}, the strongest dependency rule matched")
    # A deploy after onset is never a candidate.
    assert all(c.anchor_ms <= ONSET for c in decision.candidates if c.kind == "deploy")


OFFSETS = [-15 * MIN, -10 * MIN, -MIN, 0, +MIN, +10 * MIN, +15 * MIN]


@pytest.mark.parametrize("deploy_at", OFFSETS)
@pytest.mark.parametrize("dep_at", OFFSETS)
def test_more_dependency_evidence_never_turns_the_cause_from_dependency(
        dep_at: int, deploy_at: int) -> None:
    without = classify(incident("payment"), [deploy(deploy_at)])
    with_signal = classify(incident("payment"), [deploy(deploy_at), dep(dep_at)])
    assert without.kind == "dependency"
    assert (with_signal.kind, with_signal.rule_id, with_signal.inputs) == \
        ("dependency", "dependency_signal", ("d1",))


@pytest.mark.parametrize("down", [None, "payment"])
@pytest.mark.parametrize("deploy_at", [1, 30_000, 2 * MIN, 15 * MIN])
def test_a_deploy_after_onset_never_changes_the_cause(down: str | None, deploy_at: int
                                                      ) -> None:
    base = [Sig("r1", "runtime", event_time_ms=ONSET - MIN)]
    without = classify(incident(down), base).to_dict()
    later = classify(incident(down), [*base, deploy(deploy_at)]).to_dict()
    assert later.pop("later_deploys") == ["v1"]
    assert without.pop("later_deploys") == []
    assert later == without


def test_version_must_match_when_both_are_known() -> None:
    deploy = Sig("v1", "deploy", event_time_ms=ONSET - MIN, version="1.4.0")
    assert classify(incident(None, version="1.5.0"), [deploy]).kind == "app"
    assert classify(incident(None, version="1.4.0"), [deploy]).kind == "deploy"


def test_the_same_inputs_in_any_order_decide_the_same() -> None:
    signals = [Sig("d1", "dependency", service="payment", event_time_ms=ONSET - MIN),
               Sig("d2", "dependency", service="payment", event_time_ms=ONSET + MIN),
               Sig("v1", "deploy", event_time_ms=ONSET - MIN),
               Sig("v2", "deploy", event_time_ms=ONSET + MIN),
               Sig("v3", "deploy", event_time_ms=ONSET + 30_000),
               Sig("r1", "runtime"), Sig("a1", "alert")]
    first = classify(incident("payment"), signals).to_dict()
    assert classify(incident("payment"), list(reversed(signals))).to_dict() == first
    assert first["inputs"] == ["d1"]  # equally close: the earlier one
    assert first["later_deploys"] == ["v3", "v2"]  # by time


def traced(downstream: str = "payment", traces: int = 8, of: int = 10) -> TraceFacts:
    return TraceFacts(downstream, traces, of, "4bf92f3577b34da6a3ce929d0e0e4736")


TRACE_CASES = [
    # (name, incident downstream, trace facts, signals, kind, confidence, rule, inputs)
    ("traces name the downstream the step did not", None, traced(), [],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
    ("traces beat the step's own downstream (rule order)", "payment", traced(), [],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
    ("a dependency signal on the traces' downstream comes first", None, traced(),
     [Sig("d1", "dependency", service="payment", event_time_ms=ONSET - MIN)],
     "dependency", "high", "dependency_signal", ("d1",)),
    ("fewer than half the failing traces agree: not cited", None, traced(traces=4, of=10),
     [], "app", "medium", "app_step", ()),
    ("exactly half agree", None, traced(traces=5, of=10), [],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
    ("fewer than three traces: not cited", None, traced(traces=2, of=2), [],
     "app", "medium", "app_step", ()),
    ("traces at onset beat a deploy before it (temporal tiebreak)", None, traced(),
     [Sig("v1", "deploy", event_time_ms=ONSET - 2 * MIN)],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
    ("a deploy exactly at onset ties: dependency kept", None, traced(),
     [Sig("v1", "deploy", event_time_ms=ONSET)],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
    ("runtime after traces (rule order)", None, traced(), [Sig("r1", "runtime")],
     "dependency", "high", "trace_downstream",
     ("trace:4bf92f3577b34da6a3ce929d0e0e4736",)),
]


@pytest.mark.parametrize(("name", "down", "traces", "signals", "kind", "confidence", "rule",
                          "inputs"), TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_trace_rule(name: str, down: str | None, traces: TraceFacts, signals: list[Sig],
                    kind: str, confidence: str, rule: str, inputs: tuple[str, ...]) -> None:
    decision = classify(incident(down), signals, traces=traces)
    assert (decision.kind, decision.confidence, decision.rule_id, decision.inputs) == \
        (kind, confidence, rule, inputs)


def test_trace_thresholds_are_configurable_and_recorded() -> None:
    strict = ClassifierConfig(trace_share_pct=90, trace_min=1)
    assert classify(incident(None), [], strict, traced(traces=8, of=10)).rule_id == "app_step"
    loose = ClassifierConfig(trace_share_pct=10, trace_min=1)
    decision = classify(incident(None), [], loose, traced(traces=1, of=10))
    assert decision.rule_id == "trace_downstream"
    assert decision.thresholds["trace_share_pct"] == 10
    assert decision.reason == "1 of 10 failing traces start failing in payment, which " \
        "checkout calls"
