"""The rules file's ``[runtime]`` rule in a partition's detector (ADR 0022): a runtime
signal (a CrashLoopBackOff, an OOMKill) that keeps firing for ``persistent_after`` opens
an incident of its own family, ``service:@runtime:REASON``, through the lifecycle every
family has. Off unless ``[runtime] enabled = true``.

**Where the signals come from.** With the rule on, the signal intake also writes each
runtime signal whose reason it names onto the *events* topic, keyed by its service, with
the header ``tocsin.runtime`` (as operator actions travel, ADR 0016): detection reads it
in log order among the service's events, so a replay decides as the live run did. A
signal carries the service's time: it moves the service's clock, as a suppressed event
does.

**Persistent.** For each (env, service, reason) the detector keeps when the current
stretch of firing began (``since``: the signal's ``starts_at_ms``, else its event time)
and the latest firing occurrence (``last``). A firing occurrence more than
``persistent_after`` after ``last`` starts a new stretch; a ``resolved`` one ends it.

- qualifies at time t: the stretch is on and ``last - since >= persistent_after``;
- holds at time t (ADR 0002's hysteresis): the stretch is on and ``t - last <
  persistent_after``: occurrences are still coming.

So an incident opens at the occurrence that makes the stretch ``persistent_after`` long,
recovers (after MIN_ACTIVE) once no occurrence came for ``persistent_after``, and resolves
RESOLVE_AFTER later, as any family. ``window_count`` is the occurrences of the stretch
(each signal's folded ``occurrences``), ``baseline`` 0; each occurrence is counted in the
family's buckets, so the timeline shows them as its errors. The rule is ``runtime.v1``.

Reasons match the signal's ``reason``, or its runtime subtype (``crashloop`` is
CrashLoopBackOff, Kubernetes's BackOff included; ``oom_killed`` is OOMKilled): the family
is named by the reason in the rules, so BackOff and CrashLoopBackOff events are one family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tocsin.processors.detector_state import FamilyState
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import RUNTIME_STEP, IncidentEvent, event
from tocsin.processors.rules import RuntimeRule

if TYPE_CHECKING:
    from tocsin.processors.detector import PartitionDetector

SUBTYPES = {"crashloop": "CrashLoopBackOff", "oom_killed": "OOMKilled"}

RuntimeKey = tuple[str, str, str]  # env, service, reason


def reason_of(rule: RuntimeRule, signal: Any) -> str | None:
    """The rule's reason a runtime signal is, if any."""
    if not rule.enabled or signal.type != "runtime" or not signal.service:
        return None
    if signal.reason in rule.reasons:
        return str(signal.reason)
    by_subtype = SUBTYPES.get(signal.runtime_subtype or "")
    return by_subtype if by_subtype in rule.reasons else None


def wanted(rule: RuntimeRule, signal: Any) -> bool:
    """Whether the intake should put this signal on the events topic for detection."""
    return reason_of(rule, signal) is not None


def observe(det: PartitionDetector, signal: Any) -> list[IncidentEvent]:
    """One runtime signal read from the events topic: the lifecycle changes it causes."""
    rule = det.rules.runtime
    reason = reason_of(rule, signal)
    if reason is None:
        return []
    out: list[IncidentEvent] = []
    service, env, t = str(signal.service), str(signal.env or "prod"), signal.event_time_ms
    det.tick_into(service, t, out)
    clock = det.clocks[service]
    family = Family(env, service, RUNTIME_STEP, reason)
    fs = det.families.get(family)
    if fs is None:
        fs = det.new_family(family)
        if fs is None:
            return out
    fs.step_rule = rule
    key = (env, service, reason)
    stretch = det.runtime.get(key)
    persistent = rule.persistent_after_ms
    if signal.state != "firing":
        det.runtime.pop(key, None)
        return out
    if stretch is None or t - stretch[1] > persistent:
        stretch = det.runtime[key] = [signal.starts_at_ms or t, t, 0]
        stretch[0] = min(stretch[0], t)
    stretch[1] = max(stretch[1], t)
    stretch[2] += max(1, int(signal.occurrences))
    index = t // det.config.bucket_ms
    fs.buckets[index] = fs.buckets.get(index, 0) + 1
    fs.last_error_ms = max(fs.last_error_ms, t)
    qualifies, count, _ = evaluate_at(det, fs, clock)
    incident = fs.incident
    if incident is None:
        if not fs.armed and not holds_at(det, fs, clock):
            fs.armed = True
        if qualifies and fs.armed:
            det.open_at(fs, clock, count, 0.0, out)
        return out
    incident.error_count += 1
    incident.peak_count = max(incident.peak_count, count)
    if incident.status == "recovering" and qualifies and not incident.held:
        incident.status = "active"
        incident.status_since_ms = clock
        out.append(event(incident, family, "reopened", clock, count, 0.0, fs.last_error_ms,
                         timeline=det.view(incident.incident_id)))
    return out


def _stretch(det: PartitionDetector, fs: FamilyState) -> list[int] | None:
    f = fs.family
    return det.runtime.get((f.env, f.service, f.error_code))


def evaluate_at(det: PartitionDetector, fs: FamilyState, t_ms: int
                ) -> tuple[bool, int, float]:
    stretch = _stretch(det, fs)
    if stretch is None:
        return False, 0, 0.0
    rule = fs.step_rule
    assert isinstance(rule, RuntimeRule)
    return stretch[1] - stretch[0] >= rule.persistent_after_ms, stretch[2], 0.0


def holds_at(det: PartitionDetector, fs: FamilyState, t_ms: int) -> bool:
    stretch = _stretch(det, fs)
    rule = fs.step_rule
    assert isinstance(rule, RuntimeRule)
    return stretch is not None and t_ms - stretch[1] < rule.persistent_after_ms


def evaluate(det: PartitionDetector, fs: FamilyState, index: int) -> tuple[bool, int, float]:
    """At bucket ``index`` (its end): as :func:`evaluate_at`."""
    return evaluate_at(det, fs, (index + 1) * det.config.bucket_ms - 1)


def holds(det: PartitionDetector, fs: FamilyState, index: int) -> bool:
    return holds_at(det, fs, (index + 1) * det.config.bucket_ms - 1)


def rule_for(det: PartitionDetector, family: Family) -> RuntimeRule | None:
    rule = det.rules.runtime
    if family.step == RUNTIME_STEP and rule.enabled and family.error_code in rule.reasons:
        return rule
    return None
