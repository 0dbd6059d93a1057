"""A report scenario shared by report and rendering tests: the reference acceptance demo
(checkout → payment fails with PMT_502; deploy on checkout, dependency signal on payment,
OOMKilled on checkout, a matched alert)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tocsin.processors.classify import IncidentFacts, classify
from tocsin.processors.report import IncidentState, Opening, build

ONSET = 1_793_612_403_000
MIN = 60_000


@dataclass(frozen=True)
class Sig:
    signal_id: str
    type: str
    title: str
    event_time_ms: int
    service: str | None = "checkout"
    env: str | None = "prod"
    state: str = "firing"
    source: str = "native"
    severity: str = "warning"
    reason: str | None = None
    provider_url: str | None = None
    downstream: str | None = None
    runtime_subtype: str | None = None
    pod: str | None = None
    container: str | None = None
    exit_code: int | None = None
    restart_count: int | None = None
    version: str | None = None
    commit: str | None = None
    pr_url: str | None = None
    author: str | None = None
    incident_id: str | None = None
    occurrences: int = 1
    error_code: str | None = None
    trace_id: str | None = None
    starts_at_ms: int | None = None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


FACTS = IncidentFacts("inc_dd40b8528905eadf", "prod", "checkout", "payment.charge", "PMT_502",
                      ONSET, downstream="payment")
STATE = IncidentState(FACTS, "checkout:payment.charge:PMT_502", "active", 1, 5, 5, 5, 0.0,
                      None, ONSET)
SIGNALS = [
    Sig("sig_deploy", "deploy", "checkout 1.5.0 deployed", ONSET - 6 * MIN, source="ci",
        severity="info", version="1.5.0", commit="8f2c1e0", author="dana",
        pr_url="https://github.com/acme/checkout/pull/412"),
    Sig("sig_dep", "dependency", "payment gateway 502s", ONSET - 2 * MIN, service="payment",
        severity="critical"),
    Sig("sig_oom", "runtime", "checkout-7d9f container api OOMKilled", ONSET - MIN,
        source="kubernetes", severity="critical", reason="OOMKilled",
        runtime_subtype="oom_killed", pod="checkout-7d9f", container="api", exit_code=137,
        restart_count=3),
    Sig("sig_alert", "alert", "CheckoutErrorRate high", ONSET + 30_000, source="alertmanager",
        provider_url="http://prometheus:9090/graph?g0.expr=rate", occurrences=3),
]


def report(signals: list[Sig] | None = None, as_of_ms: int = ONSET + 5 * MIN,
           state: IncidentState = STATE) -> dict[str, object]:
    signals = SIGNALS if signals is None else signals
    opening = Opening(ONSET, STATE, None)  # the demo report is its opened version
    return build(state, signals, classify(state.facts, signals), as_of_ms, None, opening)


def hostile(text: str) -> list[Sig]:
    """The demo's signals with attacker-controlled text in every free-text field."""
    return [replace(s, title=text, reason=text) for s in SIGNALS]
