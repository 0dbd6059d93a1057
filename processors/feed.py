"""One decoded wide event into a partition's detector: the per-event rules of the detection
stage, without its Kafka (ADR 0002, 0007).

- A ``service_version`` the partition has not seen lately for the service and env is a
  deploy (:meth:`~tocsin.processors.detector.PartitionDetector.version_seen`); the deploy
  signal it registers is :func:`deploy_signal`.
- A ``suppressed`` event is not a request to count: it only tells its service's time
  (it can still close windows and incidents as time moves). Every other status is counted
  in the step's requests, and as an error of its family when :func:`family_of` gives one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import VersionChanged
from tocsin.processors.family import failing_downstream, family_of
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.recent_requests import RecentRequests
from tocsin.processors.signals.model import Signal

TELLS_TIME_ONLY = "suppressed"  # the status of an event that is not counted


def feed(detector: PartitionDetector, event: Mapping[str, Any],
         requests: RecentRequests | None = None
         ) -> tuple[VersionChanged | None, list[IncidentEvent]]:
    """Feed one validated wide event (as the decoders give it) to ``detector``: the
    version change it revealed, if any, and the lifecycle changes it caused (a list the
    detector may share: read it, do not keep it). The caller registers the deploy before
    it emits the changes. A failing event's request id is noted in ``requests``."""
    t_ms = event["event_time_ms"]
    service = event["service"]
    version = event.get("service_version")
    changed = detector.version_seen(t_ms, event["env"], service, version) if version \
        else None
    if event["status"] == TELLS_TIME_ONLY:
        return changed, detector.tick(t_ms, service)
    family = family_of(event)
    if family is not None and requests is not None:
        request_id = event.get("request_id")
        if request_id:
            requests.note(request_id, t_ms, family, event.get("trace_id"))
    return changed, detector.observe(
        t_ms, event["env"], service, event["step"], family,
        failing_downstream(event) if family is not None else None, event.get("trace_id"),
        event.get("duration_ms"))


def deploy_signal(changed: VersionChanged) -> Signal:
    """The deploy a version change on the events registers (no CI needed, ADR 0007). Its
    identity is (service, env, version, time of the first event with it): a replay of the
    same events registers the same signal."""
    return Signal(
        dedup_key=f"version:{changed.service}|{changed.env}|{changed.version}|"
                  f"{changed.t_ms}",
        type="deploy", state="firing", source="native", service=changed.service,
        env=changed.env, severity="info", event_time_ms=changed.t_ms,
        starts_at_ms=changed.t_ms, version=changed.version,
        title=f"{changed.service} {changed.version} seen on events "
              f"(was {changed.previous})",
        reason="version_changed", annotations={"previous_version": changed.previous})


def deploy_delivery(signal: Signal) -> str:
    """The delivery id of a registered deploy: a replay after a crash registers it again,
    and the triage fold applies one delivery once (as a retried webhook)."""
    return f"registered:{signal.signal_id}"
