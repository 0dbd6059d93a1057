"""The rules file's per-step detections in a partition's detector (ADR 0022): which steps
have an error-rate or a latency rule, when they are read, and what their incidents count.

A step with a rule has a family of its own, ``service:step:ERROR_RATE`` or
``service:step:LATENCY``, with the lifecycle every family has (opened, recovering,
resolved, reopened, people's actions, timeline): the detector's :meth:`evaluate` and
:meth:`holds` read the step's cells through :mod:`tocsin.processors.step_rules` for them
instead of the family's error counts.

**When.** A step rule is read at bucket boundaries of its service's event time: when the
service's clock enters a new bucket, the windows ending at the buckets it completed are
read (at most one window's worth), and a qualifying, armed family opens at that
boundary. An incident already open moves as every family's does, at boundaries too.

**What the lifecycle fields hold** (``rule`` says which reading):

- ``error_rate.v1``: ``window_count`` is the failing requests in the window, ``baseline``
  the failing requests the baseline rate predicts for the window's requests (so ``lift`` is
  the rate over the baseline rate), ``error_count`` the failing requests counted at the
  boundaries since onset;
- ``latency.v1``: ``window_count`` is the quantile in ms (rounded), ``baseline`` the
  baseline quantile in ms (``lift`` their ratio), ``error_count`` the requests with a
  duration counted at the boundaries since onset.

**Retention.** A ruled step keeps its cells for its rule's window times the baseline
windows + 1 (other steps keep one window): the latency lift and the baseline rate need
the prior windows.

The error codes ``ERROR_RATE`` and ``LATENCY`` name these families: an event that carries
one of them as its own error code counts in the same family (ADR 0022 says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tocsin.processors import runtime_detection
from tocsin.processors.detector_state import FamilyState
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import STEP_RULES, IncidentEvent, OpenIncident, event
from tocsin.processors.rules import ErrorRateRule, LatencyRule, RuntimeRule
from tocsin.processors.step_rules import (
    Memo,
    StepReading,
    error_rate_holds,
    error_rate_reading,
    latency_holds,
    latency_reading,
)

if TYPE_CHECKING:
    from tocsin.processors.detector import PartitionDetector, StepKey

ERROR_RATE = "ERROR_RATE"
LATENCY = "LATENCY"
RULE_NAMES = STEP_RULES

StepRule = ErrorRateRule | LatencyRule


def rules_of_step(det: PartitionDetector, key: StepKey) -> list[tuple[str, StepRule]]:
    """The step rules that apply to a step, (error code, rule) each; none without rules."""
    env, service, step = key
    found: list[tuple[str, StepRule]] = []
    error_rate = det.rules.error_rate_rule_for(env, service, step)
    if error_rate is not None:
        found.append((ERROR_RATE, error_rate))
    latency = det.rules.latency_rule_for(env, service, step)
    if latency is not None:
        found.append((LATENCY, latency))
    return found


def register(det: PartitionDetector, key: StepKey) -> None:
    """A step seen for the first time (or again after its cells were trimmed away)."""
    if key in det.ruled_steps:
        return
    rules = rules_of_step(det, key)
    det.ruled_steps[key] = rules
    if rules:
        det.ruled_services.setdefault(key[1], []).append(key)
        det.ruled_services[key[1]].sort()


def width_of(det: PartitionDetector, fs: FamilyState) -> int:
    rule = fs.step_rule
    assert rule is not None
    window_ms = rule.window_ms or (fs.config or det.config).window_ms
    return max(1, window_ms // det.config.bucket_ms)


def retained(det: PartitionDetector, key: StepKey) -> int:
    """Buckets a step keeps: one window, or its rules' window x (baseline windows + 1)."""
    width = det.config.buckets_per_window
    for _, rule in det.ruled_steps.get(key) or ():
        own = max(1, (rule.window_ms or det.config.window_ms) // det.config.bucket_ms)
        width = max(width, own * (det.config.baseline_windows + 1))
    return width


def _step(det: PartitionDetector, fs: FamilyState) -> tuple[Any, Any, int, Any]:
    """(the step's cells, the rule, the window in buckets, the family's settings)."""
    f = fs.family
    return (det.steps.get((f.env, f.service, f.step)) or {}, fs.step_rule,
            width_of(det, fs), fs.config or det.config)


def _memo(det: PartitionDetector, fs: FamilyState) -> tuple[Memo, int]:
    """The step's cache of window quantiles, and the last bucket index whose windows can
    no longer change: a bucket a window behind its service's clock takes no late event."""
    f = fs.family
    stable = det.clocks[f.service] // det.config.bucket_ms - det.config.buckets_per_window
    return det.window_memo.setdefault((f.env, f.service, f.step), {}), stable


def reading(det: PartitionDetector, fs: FamilyState, index: int) -> StepReading:
    cells, rule, width, cfg = _step(det, fs)
    if isinstance(rule, ErrorRateRule):
        return error_rate_reading(cells, index, width, rule, cfg.baseline_windows)
    assert isinstance(rule, LatencyRule)
    return latency_reading(cells, index, width, rule, cfg.baseline_windows, *_memo(det, fs))


def evaluate(det: PartitionDetector, fs: FamilyState, index: int
             ) -> tuple[bool, int, float]:
    """(qualifies, window count, baseline) as the lifecycle fields hold them (above)."""
    if isinstance(fs.step_rule, RuntimeRule):
        return runtime_detection.evaluate(det, fs, index)
    r = reading(det, fs, index)
    if isinstance(fs.step_rule, ErrorRateRule):
        base = 0.0 if r.baseline is None else round(r.baseline * r.requests, 6)
        return r.qualifies, r.errors, base
    count = 0 if r.value is None else round(r.value)
    return r.qualifies, count, 0.0 if r.baseline is None else r.baseline


def holds(det: PartitionDetector, fs: FamilyState, index: int) -> bool:
    if isinstance(fs.step_rule, RuntimeRule):
        return runtime_detection.holds(det, fs, index)
    cells, rule, width, cfg = _step(det, fs)
    if isinstance(rule, ErrorRateRule):
        return error_rate_holds(cells, index, width, rule, cfg.rearm_ratio)
    assert isinstance(rule, LatencyRule)
    return latency_holds(cells, index, width, rule, cfg.baseline_windows, cfg.rearm_ratio,
                         *_memo(det, fs))


def family_state(det: PartitionDetector, family: Family) -> FamilyState | None:
    """The state of a step rule's family (made, with its rule, when first needed)."""
    fs = det.families.get(family)
    if fs is None:
        fs = det.new_family(family)
        if fs is None:
            return None
    if fs.step_rule is None:
        fs.step_rule = rule_for(det, family)
    return fs


def rule_for(det: PartitionDetector, family: Family) -> StepRule | RuntimeRule | None:
    """The rule of a step family or a [runtime] family (None for any other family)."""
    runtime = runtime_detection.rule_for(det, family)
    if runtime is not None:
        return runtime
    if family.error_code not in RULE_NAMES:
        return None
    for code, rule in rules_of_step(det, (family.env, family.service, family.step)):
        if code == family.error_code:
            return rule
    return None


def crossed(det: PartitionDetector, service: str, before_ms: int, t_ms: int,
            out: list[IncidentEvent]) -> None:
    """A ruled service's clock moved from ``before_ms`` to ``t_ms``: :func:`check` when it
    entered a new bucket."""
    bucket_ms = det.config.bucket_ms
    first, now_index = before_ms // bucket_ms, t_ms // bucket_ms
    if now_index > first:
        check(det, service, first, now_index, out)


def check(det: PartitionDetector, service: str, first: int, now_index: int,
          out: list[IncidentEvent]) -> None:
    """The service's clock entered bucket ``now_index``: read its ruled steps' windows
    ending at the buckets completed since ``first`` (at most one window's worth) and open
    the families that qualify and are armed."""
    bucket_ms = det.config.bucket_ms
    for key in det.ruled_services.get(service, ()):
        if key not in det.steps:
            continue
        env, _, step = key
        for code, _rule in det.ruled_steps[key]:
            family = Family(env, service, step, code)
            fs = det.families.get(family)
            if fs is not None and fs.incident is not None:
                continue  # open: it moves with every open family, in _advance
            fs = family_state(det, family)
            if fs is None or fs.step_rule is None:
                continue
            for index in range(max(first, now_index - width_of(det, fs)), now_index):
                qualifies, count, base = evaluate(det, fs, index)
                boundary = (index + 1) * bucket_ms
                if qualifies:
                    fs.last_error_ms = boundary
                if not fs.armed and not holds(det, fs, index):
                    fs.armed = True
                if qualifies and fs.armed:
                    det.open_at(fs, boundary, count, base, out)
                    break


def counted(det: PartitionDetector, fs: FamilyState, index: int) -> int:
    """What a completed bucket adds to an open step incident's ``error_count``."""
    f = fs.family
    cell: list[Any] | None = (det.steps.get((f.env, f.service, f.step)) or {}).get(index)
    if cell is None:
        return 0
    if isinstance(fs.step_rule, ErrorRateRule):
        return int(cell[1])
    return sum(cell[3].values())


def moved(det: PartitionDetector, fs: FamilyState, incident: OpenIncident, first: int,
          now_index: int, out: list[IncidentEvent]) -> None:
    """An open step incident's service entered bucket ``now_index``: the buckets completed
    since ``first`` add to its counts, and a recovering one that qualifies again reopens.
    (A [runtime] family moves with its signals instead.)"""
    if isinstance(fs.step_rule, RuntimeRule):
        return
    bucket_ms = det.config.bucket_ms
    for index in range(max(first, now_index - width_of(det, fs)), now_index):
        incident.error_count += counted(det, fs, index)
        qualifies, count, base = evaluate(det, fs, index)
        incident.peak_count = max(incident.peak_count, count)
        if not qualifies:
            continue
        boundary = (index + 1) * bucket_ms
        fs.last_error_ms = boundary
        if incident.status == "recovering" and not incident.held:
            incident.status = "active"
            incident.status_since_ms = boundary
            out.append(event(incident, fs.family, "reopened", boundary, count, base,
                             fs.last_error_ms, timeline=det.view(incident.incident_id)))


def errors_of(det: PartitionDetector, fs: FamilyState) -> dict[int, int]:
    """What a family's timeline shows as its errors: its own buckets, or for a step rule's
    family the step's failing requests."""
    if fs.step_rule is None or isinstance(fs.step_rule, RuntimeRule):
        return fs.buckets
    f = fs.family
    return {i: c[1] for i, c in (det.steps.get((f.env, f.service, f.step)) or {}).items()}


def forget_stale(det: PartitionDetector) -> None:
    """Drop cached window quantiles older than what a ruled step keeps (on eviction)."""
    for key, memo in list(det.window_memo.items()):
        clock = det.clocks.get(key[1])
        if clock is None or key not in det.steps:
            del det.window_memo[key]
            continue
        horizon = clock // det.config.bucket_ms - retained(det, key)
        for k in [k for k in memo if k[0] < horizon]:
            del memo[k]
