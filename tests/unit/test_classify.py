"""Cause rules, one table per rule and one for the tiebreak (ADR 0008)."""

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


TIEBREAK = [
    # (dependency signal offset, deploy offset, expected kind)
    (-5 * MIN, -2 * MIN, "deploy"),      # both before onset: the closer wins
    (-2 * MIN, -5 * MIN, "dependency"),
    (-3 * MIN, -3 * MIN, "dependency"),  # a tie keeps dependency
    (+1 * MIN, -10 * MIN, "deploy"),     # at or before onset beats after
    (-10 * MIN, +1 * MIN, "dependency"),
    (0, +30_000, "dependency"),
    (+2 * MIN, +1 * MIN, "deploy"),      # both after: the closer wins
]


@pytest.mark.parametrize(("dep_at", "deploy_at", "kind"), TIEBREAK)
def test_temporal_tiebreak(dep_at: int, deploy_at: int, kind: str) -> None:
    signals = [Sig("d1", "dependency", service="payment", event_time_ms=ONSET + dep_at),
               Sig("v1", "deploy", event_time_ms=ONSET + deploy_at)]
    decision = classify(incident("payment"), signals)
    assert decision.kind == kind
    assert decision.tiebreak is not None
    assert {c.rule_id for c in decision.candidates} >= {"dependency_signal", "service_deploy"}


def test_version_must_match_when_both_are_known() -> None:
    deploy = Sig("v1", "deploy", event_time_ms=ONSET - MIN, version="1.4.0")
    assert classify(incident(None, version="1.5.0"), [deploy]).kind == "app"
    assert classify(incident(None, version="1.4.0"), [deploy]).kind == "deploy"


def test_the_same_inputs_in_any_order_decide_the_same() -> None:
    signals = [Sig("v1", "deploy", event_time_ms=ONSET - MIN),
               Sig("v2", "deploy", event_time_ms=ONSET + MIN),
               Sig("r1", "runtime"), Sig("a1", "alert")]
    first = classify(incident(None), signals).to_dict()
    assert classify(incident(None), list(reversed(signals))).to_dict() == first
    assert first["inputs"] == ["v1"]  # equally close: the earlier one


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
