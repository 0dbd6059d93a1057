"""Cause classification: deploy | app | dependency | runtime | unknown, by ordered rules.

Every rule, its order and the temporal tiebreak are ADR 0008. The result is data: the rule
that decided, its version, the thresholds it used and the ids of the inputs that decided
it, so "why did it say deploy?" is answered by a record, not by prose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

CauseKind = Literal["deploy", "app", "dependency", "runtime", "unknown"]
Confidence = Literal["high", "medium", "low"]

MINUTE_MS = 60_000


class SignalLike(Protocol):
    """What the classifier reads of a normalized signal (processors.signals.model)."""

    @property
    def signal_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def service(self) -> str | None: ...
    @property
    def env(self) -> str | None: ...
    @property
    def event_time_ms(self) -> int: ...
    @property
    def starts_at_ms(self) -> int | None: ...
    @property
    def downstream(self) -> str | None: ...
    @property
    def version(self) -> str | None: ...
    @property
    def incident_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What the detection path knows about an incident."""

    incident_id: str
    env: str
    service: str
    step: str
    error_code: str
    onset_ms: int
    downstream: str | None = None  # the failing step's downstream service, when named
    version: str | None = None  # the service version seen at onset, when known


@dataclass(frozen=True, slots=True)
class TraceFacts:
    """What the incident's failing traces say about where the failure started (ADR 0012):
    the service that the incident's service called on the causal path of the most traces
    (or the uninstrumented peer its own failing call named), how many of the traces with a
    propagation name it, and the trace cited for it."""

    downstream: str
    traces: int  # failing traces whose propagation names ``downstream``
    of: int  # failing traces with a propagation
    sample_trace: str


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    deploy_window_ms: int = 15 * MINUTE_MS
    dependency_window_ms: int = 15 * MINUTE_MS
    runtime_before_ms: int = 5 * MINUTE_MS
    runtime_after_ms: int = 1 * MINUTE_MS
    trace_share_pct: int = 50  # share of the failing traces that must name the downstream
    trace_min: int = 3  # and at least this many of them

    def thresholds(self) -> dict[str, int]:
        return {
            "deploy_window_ms": self.deploy_window_ms,
            "dependency_window_ms": self.dependency_window_ms,
            "runtime_before_ms": self.runtime_before_ms,
            "runtime_after_ms": self.runtime_after_ms,
            "trace_share_pct": self.trace_share_pct,
            "trace_min": self.trace_min,
        }

    def traces_agree(self, traces: TraceFacts | None) -> bool:
        """Whether enough of the failing traces name the same downstream to cite it."""
        return (traces is not None and traces.traces >= self.trace_min
                and 100 * traces.traces >= self.trace_share_pct * traces.of)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One rule that matched, with the time it anchors the cause at."""

    rule_id: str
    kind: CauseKind
    confidence: Confidence
    anchor_ms: int
    inputs: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The structured record of a classification."""

    kind: CauseKind
    confidence: Confidence
    reason: str
    rule_id: str
    rule_version: int
    thresholds: dict[str, int]
    inputs: tuple[str, ...]
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)
    tiebreak: str | None = None
    # Deploys begun after onset: evidence and a next check, never the cause.
    later_deploys: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "confidence": self.confidence,
            "reason": self.reason,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "thresholds": dict(sorted(self.thresholds.items())),
            "inputs": list(self.inputs),
            "candidates": [
                {"rule_id": c.rule_id, "kind": c.kind, "confidence": c.confidence,
                 "anchor_ms": c.anchor_ms, "inputs": list(c.inputs)}
                for c in self.candidates
            ],
            "tiebreak": self.tiebreak,
            "later_deploys": list(self.later_deploys),
        }


# 2: traces name a failing downstream (trace_downstream). 3: a deploy begun after onset is
# never a cause (it is listed in later_deploys); the tiebreak weighs the best-placed of all
# matched dependency rules and the decision cites the strongest of them.
RULE_VERSION = 3
RULES = (
    "dependency_signal",  # 1. a dependency signal on the failing downstream
    "trace_downstream",  # 2. the failing traces show the failure starting downstream
    "failing_downstream",  # 3. the failing step names a downstream
    "service_deploy",  # 4. a deploy of the service (env/version matching) begun by onset
    "linked_deploy",  # 5. a deploy signal linked to the incident, begun by onset
    "runtime_fault",  # 6. a runtime fault on the service in [onset-5m, onset+1m]
    "app_step",  # 7. a failing step with no downstream
    "unknown",  # 8. nothing matched
)
DEPENDENCY_RULES = frozenset({"dependency_signal", "trace_downstream", "failing_downstream"})
DEPLOY_RULES = frozenset({"service_deploy", "linked_deploy"})
CONFIDENCE_RANK: dict[str, int] = {"high": 0, "medium": 1, "low": 2}


def _env_matches(incident: IncidentFacts, signal: SignalLike) -> bool:
    return signal.env is None or signal.env == incident.env


def _time(signal: SignalLike) -> int:
    return signal.event_time_ms


def _by_time(signals: Sequence[SignalLike], onset_ms: int,
             at: Callable[[SignalLike], int] = _time) -> list[SignalLike]:
    """Closest to onset first, then earlier, then by id: a deterministic pick."""
    return sorted(signals, key=lambda s: (abs(at(s) - onset_ms), at(s), s.signal_id))


def _began_ms(deploy: SignalLike) -> int:
    """When a deploy began: its start when the signal carries one (a CI deployment's
    creation, a pipeline's started_at), else its time."""
    start = deploy.starts_at_ms
    return deploy.event_time_ms if start is None else min(start, deploy.event_time_ms)


def candidates(incident: IncidentFacts, signals: Sequence[SignalLike],
               config: ClassifierConfig, traces: TraceFacts | None = None
               ) -> list[Candidate]:
    """Every rule that matches, in rule order."""
    onset = incident.onset_ms
    found: list[Candidate] = []
    traced = traces if config.traces_agree(traces) else None
    # The downstream the step names; else the one its failing traces agree on.
    down = incident.downstream or (traced.downstream if traced else None)
    if down is not None:
        deps = [s for s in signals if s.type == "dependency" and _env_matches(incident, s)
                and (s.downstream == down or (s.downstream is None and s.service == down))
                and abs(s.event_time_ms - onset) <= config.dependency_window_ms]
        if deps:
            best = _by_time(deps, onset)[0]
            found.append(Candidate(
                "dependency_signal", "dependency", "high", best.event_time_ms,
                (best.signal_id,),
                f"dependency signal on {down}, the downstream {incident.step} calls"))
    if traced is not None:
        found.append(Candidate(
            "trace_downstream", "dependency", "high", onset,
            (f"trace:{traced.sample_trace}",),
            f"{traced.traces} of {traced.of} failing traces start failing in "
            f"{traced.downstream}, which {incident.service} calls"))
    if incident.downstream is not None:
        found.append(Candidate(
            "failing_downstream", "dependency", "medium", onset, (),
            f"{incident.step} fails calling its downstream {incident.downstream}"))
    # A deploy that began after onset cannot have started the incident: only those that
    # began at or before it, anchored at their time, or at onset if still under way then.
    def anchor(s: SignalLike) -> int:
        return min(s.event_time_ms, onset)

    deploys = [s for s in signals if s.type == "deploy" and s.service == incident.service
               and _env_matches(incident, s)
               and (incident.version is None or s.version is None
                    or s.version == incident.version)
               and _began_ms(s) <= onset
               and abs(s.event_time_ms - onset) <= config.deploy_window_ms]
    if deploys:
        best = _by_time(deploys, onset, anchor)[0]
        version = f" {best.version}" if best.version else ""
        when = "under way at onset" if best.event_time_ms > onset else \
            f"within {config.deploy_window_ms // MINUTE_MS} min before onset"
        found.append(Candidate(
            "service_deploy", "deploy", "high", anchor(best), (best.signal_id,),
            f"deploy{version} of {incident.service} {when}"))
    linked = [s for s in signals if s.type == "deploy" and _began_ms(s) <= onset
              and s.incident_id == incident.incident_id and s not in deploys]
    if linked:
        best = _by_time(linked, onset, anchor)[0]
        found.append(Candidate(
            "linked_deploy", "deploy", "high", anchor(best), (best.signal_id,),
            f"deploy of {best.service or 'a service'} linked to the incident"))
    runtime = [s for s in signals if s.type == "runtime" and s.service == incident.service
               and _env_matches(incident, s)
               and onset - config.runtime_before_ms <= s.event_time_ms
               <= onset + config.runtime_after_ms]
    if runtime:
        best = _by_time(runtime, onset)[0]
        found.append(Candidate(
            "runtime_fault", "runtime", "high", best.event_time_ms, (best.signal_id,),
            f"runtime fault on {incident.service} around onset"))
    if down is None:
        found.append(Candidate("app_step", "app", "medium", onset, (),
                               f"{incident.step} fails with no downstream named"))
    return found


def later_deploys(incident: IncidentFacts, signals: Sequence[SignalLike],
                  config: ClassifierConfig) -> tuple[str, ...]:
    """Deploys that began after onset, by time then id: those of the service (env matching
    when set) up to the deploy window after onset, and those linked to the incident. They
    are evidence and a next check, never a cause. The version seen at onset is not asked to
    match: a deploy after onset ships a version that was not running then."""
    onset = incident.onset_ms
    later = [s for s in signals if s.type == "deploy" and _began_ms(s) > onset
             and (s.incident_id == incident.incident_id
                  or (s.service == incident.service and _env_matches(incident, s)
                      and s.event_time_ms - onset <= config.deploy_window_ms))]
    return tuple(s.signal_id for s in sorted(later, key=lambda s: (s.event_time_ms,
                                                                   s.signal_id)))


def _placement(candidate: Candidate, onset_ms: int) -> tuple[bool, int, int]:
    """How well a candidate fares in the tiebreak, best first: at or before onset, then
    closer to onset, then earlier in rule order."""
    return (candidate.anchor_ms > onset_ms, abs(candidate.anchor_ms - onset_ms),
            RULES.index(candidate.rule_id))


def _strength(candidate: Candidate) -> tuple[int, int]:
    """Strongest first: higher confidence, then earlier in rule order."""
    return CONFIDENCE_RANK[candidate.confidence], RULES.index(candidate.rule_id)


def _tiebreak(dependency: Candidate, deploy: Candidate, onset_ms: int
              ) -> tuple[Candidate, str]:
    """At or before onset beats after; then the closer to onset; a tie keeps dependency."""
    dep, dpl = dependency.rule_id, deploy.rule_id
    dep_before = dependency.anchor_ms <= onset_ms
    deploy_before = deploy.anchor_ms <= onset_ms
    if dep_before != deploy_before:
        winner, loser = (dependency, deploy) if dep_before else (deploy, dependency)
        return winner, (f"{winner.rule_id} is anchored at or before onset, "
                        f"{loser.rule_id} after it")
    dep_gap = abs(dependency.anchor_ms - onset_ms)
    deploy_gap = abs(deploy.anchor_ms - onset_ms)
    if deploy_gap < dep_gap:
        return deploy, (f"{dpl} is closer to onset than {dep} ({deploy_gap} ms vs "
                        f"{dep_gap} ms)")
    if dep_gap < deploy_gap:
        return dependency, (f"{dep} is closer to onset than {dpl} ({dep_gap} ms vs "
                            f"{deploy_gap} ms)")
    return dependency, (f"{dep} and {dpl} are equally close to onset ({dep_gap} ms): "
                        "a tie keeps dependency")


def classify(incident: IncidentFacts, signals: Sequence[SignalLike],
             config: ClassifierConfig | None = None, traces: TraceFacts | None = None
             ) -> Decision:
    """First match wins, except that when dependency and deploy rules both matched, the
    best-placed dependency rule and the first deploy rule are weighed by the temporal
    tiebreak; when dependency wins, the strongest dependency rule is cited. Alerts are
    never an input: they add evidence, not cause."""
    config = config or ClassifierConfig()
    inputs = [s for s in signals if s.type != "alert"]
    found = candidates(incident, inputs, config, traces)
    later = later_deploys(incident, inputs, config)
    if not found:
        return Decision("unknown", "low", "no rule matched the evidence", "unknown",
                        RULE_VERSION, config.thresholds(), (), later_deploys=later)
    first = found[0]
    tiebreak = None
    dependencies = [c for c in found if c.rule_id in DEPENDENCY_RULES]
    deploy = next((c for c in found if c.rule_id in DEPLOY_RULES), None)
    if dependencies and deploy is not None:
        weighed = min(dependencies, key=lambda c: _placement(c, incident.onset_ms))
        winner, tiebreak = _tiebreak(weighed, deploy, incident.onset_ms)
        if winner is deploy:
            first = deploy
        else:
            first = min(dependencies, key=_strength)
            tiebreak += f"; cited: {first.rule_id}, the strongest dependency rule matched"
    return Decision(first.kind, first.confidence, first.reason, first.rule_id, RULE_VERSION,
                    config.thresholds(), first.inputs, tuple(found), tiebreak, later)
