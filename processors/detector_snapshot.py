"""A partition detector's state as plain JSON-able data and back (ADR 0004): what its
checkpoint holds besides the snapshot version and the settings' fingerprint, which
:meth:`~tocsin.processors.detector.PartitionDetector.restore` checks first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tocsin.processors.detector_state import Counters, FamilyState
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import OpenIncident

if TYPE_CHECKING:
    from tocsin.processors.detector import PartitionDetector


def dump(det: PartitionDetector) -> dict[str, Any]:
    return {
        "clocks": dict(sorted(det.clocks.items())),
        "watermark_ms": det.watermark_ms,
        "families": [
            [*fs.family, fs.last_error_ms, sorted(fs.buckets.items()),
             fs.incident.to_list() if fs.incident else None, fs.downstream, list(fs.traces),
             fs.armed]
            for fs in sorted(det.families.values(), key=lambda s: s.family)
        ],
        "closed": [[*family, incident.to_list()] for family, incident in det.closed.values()],
        "steps": [[*k, sorted((i, [c[0], c[1], sorted(c[3].items())]) for i, c in b.items())]
                  for k, b in sorted(det.steps.items())],
        "timelines": det.timelines.to_list(),
        "versions": [[*k, v] for k, v in sorted(det.versions.items())],
        "sources": [[k, *v] for k, v in sorted(det.sources.items())],
        "counters": det.counters.as_dict(),
        **({"runtime": [[*k, *v] for k, v in sorted(det.runtime.items())]}
           if det.runtime else {}),
    }


def load(det: PartitionDetector, snap: dict[str, Any]) -> None:
    """Fill a new detector with the state :func:`dump` gave."""
    det.clocks = dict(snap["clocks"])
    det.watermark_ms = snap["watermark_ms"]
    for (env, service, step, code, last_error_ms, buckets, incident, down,
         traces, armed) in snap["families"]:
        family = Family(env, service, step, code)
        fs = FamilyState(family, {int(i): int(n) for i, n in buckets}, last_error_ms,
                         downstream=down, traces=list(traces), armed=armed)
        if incident is not None:
            fs.incident = OpenIncident.from_list(incident)
            det.open_by_service.setdefault(service, set()).add(family)
        det.families[family] = fs
    for env, service, step, buckets in snap["steps"]:
        det.steps[(env, service, step)] = {
            int(i): [r, e, -1, {int(b): int(n) for b, n in h}] for i, (r, e, h) in buckets}
    det.timelines.restore(snap["timelines"])
    det.counters = Counters(**snap["counters"])
    det.runtime = {(env, service, reason): [int(a), int(b), int(n)]
                   for env, service, reason, a, b, n in snap.get("runtime", ())}
    det.versions = {(service, env): list(v) for service, env, v in snap["versions"]}
    det.sources = {k: (int(o), int(i)) for k, o, i in snap["sources"]}
    for env, service, step, code, incident in snap["closed"]:
        closed = OpenIncident.from_list(incident)
        det.closed[closed.incident_id] = (Family(env, service, step, code), closed)
