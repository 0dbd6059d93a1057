"""Kubernetes core/v1 Events and Pods → runtime signals.

Accepted: a core/v1 ``Event`` (``involvedObject``, ``reason``, ``message``, ``source``,
``firstTimestamp`` / ``lastTimestamp`` / ``eventTime``; an events.k8s.io/v1 one with
``regarding`` and ``note`` too, and kubernetes-event-exporter's copy, whose involvedObject
also carries the object's ``labels``), a ``Pod`` (``status.containerStatuses``), a
``List`` / ``EventList`` / ``PodList`` of them, or a watch event (``type`` + ``object``;
``DELETED`` is an Event's expiry, not a new occurrence, and is skipped).

Reason → subtype (ADR 0007), everything else is skipped with a note:

| reason | message | subtype | severity |
|---|---|---|---|
| OOMKilling (node-problem-detector), SystemOOM (kubelet), OOMKilled | any | oom_killed | critical |
| CrashLoopBackOff; BackOff | BackOff: "restarting failed container" | crashloop | critical |
| Unhealthy | "Readiness probe …" | readiness_fail | warning |
| Unhealthy | "Liveness probe …" | liveness_fail | warning |
| Killing | "… failed liveness probe, will be restarted" | liveness_fail | warning |

``BackOff`` with "Back-off pulling image" is an image pull back-off (kubelet uses the same
reason), not a crash loop: skipped. A plain ``Killing`` ("Stopping container x") is how
every pod ends: rollout, scale-down, eviction, node drain. It is **neither a runtime nor a
deploy signal**: a runtime signal on the service decides "runtime" (ADR 0008, rule 5), so
every rollout would look like a runtime fault, and a kill alone cannot tell a rollout from a
scale-down. The rollout is evidenced by the deploy signal (CI) or the version change.

Pods: a container whose ``state.waiting.reason`` is CrashLoopBackOff → crashloop (with
``restartCount``, and ``exitCode`` of ``lastState.terminated``); a container whose
``state.terminated`` or ``lastState.terminated`` reason is OOMKilled → oom_killed (exit
code, usually 137). A crash-looping container killed for memory gives both.

Identity: dedup key = involved object's uid (or kind/namespace/name) | subtype | container.
The brief's "uid + reason" is refined to the subtype, so the kubelet's ``BackOff`` event and
the Pod's ``CrashLoopBackOff`` status of one container fold together, as do the Unhealthy
and Killing events of one failing liveness probe.

Service: the object's labels ``app.kubernetes.io/name``, ``app``, ``k8s-app`` (dedotted
forms too), else the owner: a ReplicaSet's name without its pod-template hash, a Job's
without a CronJob's ``-<minute>``, a StatefulSet's, DaemonSet's or Deployment's name, else
the pod's name without the generated suffixes (``-<hash>-<5>`` of a Deployment's pod,
``-<ordinal>`` of a StatefulSet's, ``-<5>``). A Node's OOM kill has no service. Env: none;
a namespace is not an environment. Node: ``spec.nodeName``, ``source.host``, or the Node.

Times: an Event's ``lastTimestamp`` (else ``series.lastObservedTime``, ``eventTime``,
``firstTimestamp``, ``metadata.creationTimestamp``), starting at ``firstTimestamp``; a
container's ``finishedAt`` of the termination, else the pod's ``startTime``. An
events.k8s.io/v1 Event names the core/v1 fields ``deprecatedLastTimestamp``,
``deprecatedFirstTimestamp`` and ``deprecatedSource``; they are read in the same places, and
a kubelet's ``reportingInstance`` (its node) stands in for ``source.host``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from tocsin.processors.signals.fields import Obj, first_of
from tocsin.processors.signals.model import (
    IntakeError,
    IntakeResult,
    RuntimeSubtype,
    Severity,
    Signal,
)

NAME = "kubernetes"
SHAPE = ('a Kubernetes Event ("involvedObject" and "reason"), Pod ("kind": "Pod" with '
         '"status"), List ("items") or watch event ("type" and "object")')
OOM_REASONS = ("OOMKilling", "SystemOOM", "OOMKilled")
SEVERITY: dict[str, Severity] = {"oom_killed": "critical", "crashloop": "critical",
                                 "readiness_fail": "warning", "liveness_fail": "warning"}
TITLES = {"oom_killed": "OOM killed", "crashloop": "Crash loop",
          "readiness_fail": "Readiness probe failing", "liveness_fail": "Liveness probe failing"}
SERVICE_LABELS = ("app.kubernetes.io/name", "app_kubernetes_io_name", "app", "k8s-app")
WATCH_SKIP = ("DELETED", "BOOKMARK", "ERROR")

# Kubernetes' rand.SafeEncodeString alphabet: pod-template hashes and generated suffixes.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_DEPLOYMENT_POD = re.compile(rf"^(.+)-[{_SAFE}]{{6,10}}-[{_SAFE}]{{5}}$")
_ORDINAL_POD = re.compile(r"^(.+)-\d+$")
_GENERATED = re.compile(rf"^(.+)-[{_SAFE}]{{5}}$")
_REPLICASET = re.compile(rf"^(.+)-[{_SAFE}]{{6,10}}$")
_CONTAINER_PATH = re.compile(r"spec\.(?:initContainers|containers|ephemeralContainers)"
                             r"\{([^}]+)\}")


def _is_event(p: Mapping[str, Any]) -> bool:
    ref = p.get("involvedObject", p.get("regarding"))
    return isinstance(ref, Mapping) and "reason" in p


def _is_pod(p: Mapping[str, Any]) -> bool:
    return p.get("kind") == "Pod" and isinstance(p.get("status"), Mapping)


def matches(payload: Mapping[str, Any]) -> bool:
    if _is_event(payload) or _is_pod(payload):
        return True
    if isinstance(payload.get("items"), list) and str(payload.get("kind", "")).endswith("List"):
        return True
    obj = payload.get("object")
    return isinstance(obj, Mapping) and isinstance(payload.get("type"), str) and (
        _is_event(obj) or _is_pod(obj))


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    root = Obj.root(payload, NAME)
    signals: list[Signal] = []
    skipped: list[str] = []
    for obj in _objects(root, skipped):
        if _is_event(obj.data):
            found, note = _event(obj, received_ms)
        elif _is_pod(obj.data):
            found, note = _pod(obj, received_ms)
        elif obj.path:  # another kind inside a List or a watch event
            found, note = [], (f"{obj.raw('kind') or 'an object'} at {obj.path.rstrip('.')}: "
                               "not an Event or a Pod; no signal")
        else:
            raise IntakeError(f"expected {SHAPE}", provider=NAME)
        signals.extend(found)
        if note:
            skipped.append(note)
    return IntakeResult(NAME, tuple(signals), tuple(skipped))


def _objects(root: Obj, skipped: list[str]) -> Iterator[Obj]:
    """The Events and Pods of a payload: itself, a List's items, a watch event's object."""
    if isinstance(root.raw("items"), list):
        for item in root.objs("items"):
            yield from _objects(item, skipped)
    elif isinstance(root.raw("object"), Mapping) and not _is_event(root.data):
        kind = root.req_str("type")
        if kind in WATCH_SKIP:
            skipped.append(f"watch {kind} event: not a new occurrence, no signal")
        else:
            yield root.obj("object")
    else:
        yield root


# ------------------------------------------------------------------ events


def event_subtype(reason: str, message: str) -> RuntimeSubtype | None:
    """The runtime subtype of an Event's reason and message, or None (not a fault)."""
    if reason in OOM_REASONS:
        return "oom_killed"
    if reason == "CrashLoopBackOff" or (
            reason == "BackOff" and "restarting failed container" in message):
        return "crashloop"
    if reason == "Unhealthy" and message.startswith("Readiness probe"):
        return "readiness_fail"
    if reason == "Unhealthy" and message.startswith("Liveness probe"):
        return "liveness_fail"
    if reason == "Killing" and "failed liveness probe" in message:
        return "liveness_fail"
    return None


def _event(ev: Obj, received_ms: int | None) -> tuple[list[Signal], str | None]:
    reason = ev.req_str("reason")
    message = ev.opt_str("message") or ev.opt_str("note") or ""
    ref = ev.opt_obj("involvedObject") or ev.obj("regarding")
    kind = ref.opt_str("kind") or "object"
    name = ref.opt_str("name") or ""
    meta = ev.opt_obj("metadata")
    namespace = ref.opt_str("namespace") or (meta.opt_str("namespace") if meta else None)
    subtype = event_subtype(reason, message)
    where = f"{kind} {namespace + '/' if namespace else ''}{name}"
    if subtype is None:
        why = ("a normal stop (rollout, scale-down, eviction), not a runtime fault"
               if reason == "Killing" else "not a runtime fault Tocsin maps")
        return [], f"Kubernetes {reason} event on {where}: {why}; no signal"
    path = ref.opt_str("fieldPath") or ""
    container = m.group(1) if (m := _CONTAINER_PATH.search(path)) else None
    source = ev.opt_obj("source") or ev.opt_obj("deprecatedSource")
    series = ev.opt_obj("series")
    first_ms = first_of(ev.opt_time("firstTimestamp"), ev.opt_time("deprecatedFirstTimestamp"),
                        ev.opt_time("eventTime"))
    event_ms = first_of(ev.opt_time("lastTimestamp"), ev.opt_time("deprecatedLastTimestamp"),
                        series.opt_time("lastObservedTime") if series else None,
                        first_ms, meta.opt_time("creationTimestamp") if meta else None,
                        received_ms)
    reporter = ev.opt_str("reportingController") or ev.opt_str("reportingComponent")
    host = (source.opt_str("host") if source else None) or (
        ev.opt_str("reportingInstance") if reporter == "kubelet" else None)
    if event_ms is None:
        raise ev.error("lastTimestamp", "required (or eventTime / firstTimestamp)")
    identity = ref.opt_str("uid") or f"{kind}/{namespace or ''}/{name}"
    labels = ref.str_map("labels")
    return [Signal(
        dedup_key=f"{identity}|{subtype}|{container or ''}", type="runtime", state="firing",
        source=NAME, service=None if kind == "Node" else _service(labels, kind, name, None),
        severity=SEVERITY[subtype], title=_title(subtype, where, container),
        reason=reason, description=message or None, event_time_ms=event_ms,
        starts_at_ms=first_of(first_ms, event_ms),
        labels=_k8s_labels(labels, namespace, kind, name, container),
        runtime_subtype=subtype, pod=name if kind == "Pod" else None, container=container,
        node=name if kind == "Node" else host,
    )], None


# ------------------------------------------------------------------ pods


def _pod(pod: Obj, received_ms: int | None) -> tuple[list[Signal], str | None]:
    meta = pod.obj("metadata")
    name = meta.req_str("name")
    namespace = meta.opt_str("namespace")
    spec = pod.opt_obj("spec")
    status = pod.obj("status")
    labels = meta.str_map("labels")
    owner = next(iter(meta.opt_objs("ownerReferences")), None)
    service = _service(labels, "Pod", name, owner)
    identity = meta.opt_str("uid") or f"Pod/{namespace or ''}/{name}"
    fallback_ms = first_of(status.opt_time("startTime"), meta.opt_time("creationTimestamp"),
                           received_ms)
    where = f"Pod {namespace + '/' if namespace else ''}{name}"
    signals = []
    for cs in status.opt_objs("initContainerStatuses") + status.opt_objs("containerStatuses"):
        container = cs.req_str("name")
        state, last = cs.opt_obj("state"), cs.opt_obj("lastState")
        now_term = state.opt_obj("terminated") if state else None
        last_term = last.opt_obj("terminated") if last else None
        waiting = state.opt_obj("waiting") if state else None
        found: list[tuple[RuntimeSubtype, Obj | None, str | None]] = []
        oom = next((t for t in (now_term, last_term)
                    if t is not None and t.opt_str("reason") == "OOMKilled"), None)
        if oom is not None:
            found.append(("oom_killed", oom, oom.opt_str("message")))
        if waiting is not None and waiting.opt_str("reason") == "CrashLoopBackOff":
            found.append(("crashloop", last_term, waiting.opt_str("message")))
        for subtype, term, message in found:
            when = first_of(term.opt_time("finishedAt") if term else None, fallback_ms)
            if when is None:
                raise cs.error("lastState.terminated.finishedAt",
                               "required to date the fault (or status.startTime)")
            signals.append(Signal(
                dedup_key=f"{identity}|{subtype}|{container}", type="runtime",
                state="firing", source=NAME, service=service, severity=SEVERITY[subtype],
                title=_title(subtype, where, container),
                reason="OOMKilled" if subtype == "oom_killed" else "CrashLoopBackOff",
                description=message, event_time_ms=when, starts_at_ms=when,
                labels=_k8s_labels(labels, namespace, "Pod", name, container),
                runtime_subtype=subtype, pod=name, container=container,
                node=spec.opt_str("nodeName") if spec else None,
                exit_code=term.opt_int("exitCode") if term else None,
                restart_count=cs.opt_int("restartCount"),
            ))
    note = None if signals else (f"{where}: no container OOM-killed or in "
                                 "CrashLoopBackOff; no signal")
    return signals, note


# ------------------------------------------------------------------ naming


def _service(labels: Mapping[str, str], kind: str, name: str, owner: Obj | None) -> str | None:
    for key in SERVICE_LABELS:
        if labels.get(key):
            return labels[key]
    if owner is not None:
        return _service({}, owner.opt_str("kind") or "", owner.opt_str("name") or "", None)
    if kind == "ReplicaSet":
        return m.group(1) if (m := _REPLICASET.match(name)) else name
    if kind == "Job":  # a CronJob's job: <cronjob>-<scheduled minute>
        return m.group(1) if (m := _ORDINAL_POD.match(name)) else name
    if kind == "Pod":
        for pattern in (_DEPLOYMENT_POD, _ORDINAL_POD, _GENERATED):
            if m := pattern.match(name):
                return m.group(1)
    return name or None


def _title(subtype: str, where: str, container: str | None) -> str:
    inside = f" (container {container})" if container else ""
    return f"{TITLES[subtype]}: {where}{inside}"


def _k8s_labels(labels: Mapping[str, str], namespace: str | None, kind: str, name: str,
                container: str | None) -> dict[str, str]:
    """The object's labels plus OpenTelemetry-style ``k8s.*`` resource keys."""
    out = dict(labels)
    for key, value in (("k8s.namespace.name", namespace), (f"k8s.{kind.lower()}.name", name),
                       ("k8s.container.name", container)):
        if value:
            out[key] = value
    return out
