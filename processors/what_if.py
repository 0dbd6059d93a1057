"""What a replay concluded, per incident, and the difference between two replays of one
recorded log (``tocsin replay``, ``tocsin what-if``; ADR 0023).

An incident's row comes from its lifecycle changes and its last report: its onset and
when detection opened it (``detected_ms``, the event time of its ``opened`` change), how
it stands, its counts, the likely cause and the rule that named it, and the report hash.
``pages`` counts the changes PagerDuty would have been sent a ``trigger`` for (ADR 0017).

**Time to detect** is ``detected_ms`` minus the spike's start: the first bucket of the run
of buckets, ending at the opening, in which the family's errors stood above its baseline's
level per bucket (the baseline window count x bucket / window), read from the timeline the
``opened`` change carries (ADR 0019; at most its 5 minutes before onset). A rule that
waits for more errors opens later in the same spike, and its time to detect is longer. For
the per-step rules' families (ADR 0022) the run is of buckets whose own value stood above
half-way to the opening: ``LATENCY``, a p95 above (baseline + opening quantile) / 2 ms;
``ERROR_RATE``, an error rate above half the highest bucket rate up to the opening.

Two replays are compared incident by incident. The same id (same family, same onset)
pairs two rows; then, family by family (and env), rows whose active spans overlap pair in
onset order — a stricter rule that opens the same spike a bucket later is the same
incident, changed, not one removed and one added. Pure and deterministic: the inputs'
order does not change the result.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tocsin.processors.notify import PAGERDUTY_ACTIONS
from tocsin.processors.report import canonical_json

COMPARED = ("onset_ms", "detected_ms", "status", "phase", "resolved_ms", "peak_count",
            "error_count", "cause", "rule", "confidence", "report_content_hash")
"""The fields a changed incident is compared on, in the order they are reported. A report
is compared on its content: its bytes without the rules hash it carries (ADR 0022) and
without its own hash, so a change of rules that leaves an incident's report as it was
does not count as a change of it."""


def content_hash(report: Mapping[str, Any]) -> str | None:
    """sha256 of a report's canonical bytes without ``report_hash`` and without the
    incident's ``rules_hash``; None without a report."""
    if not report:
        return None
    incident = {k: v for k, v in (report.get("incident") or {}).items()
                if k != "rules_hash"}
    body = {**{k: v for k, v in report.items() if k != "report_hash"}, "incident": incident}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


STEP_CODES = ("LATENCY", "ERROR_RATE")


def spike_start_ms(opened: Mapping[str, Any], window_ms: int) -> int:
    """When the spike an ``opened`` change reports began (see the module's docstring);
    its ``at_ms`` without a timeline."""
    timeline = opened.get("timeline") or {}
    at = int(opened["at_ms"])
    code = opened.get("error_code")
    # A step rule opens at a bucket boundary, on the buckets before it; the error-count
    # rule on an error, whose bucket counts.
    points = [p for p in timeline.get("points") or ()
              if int(p["t_ms"]) < at or (code not in STEP_CODES and int(p["t_ms"]) <= at)]
    if not points:
        return at
    if code == "LATENCY":
        series = "p95_ms"
        level = (float(opened.get("baseline") or 0.0) + int(opened["window_count"])) / 2
    elif code == "ERROR_RATE":
        series = "error_rate"
        level = max(float(p.get("error_rate") or 0.0) for p in points) / 2
    else:
        series = "errors"
        level = float(opened.get("baseline") or 0.0) * int(timeline["bucket_ms"]) / window_ms
    start = at
    for point in reversed(points):
        value = point.get(series)
        if value is None or float(value) <= level:
            break
        start = int(point["t_ms"])
    return min(start, at)


def incident_rows(events: Iterable[Mapping[str, Any]],
                  reports: Mapping[str, Mapping[str, Any]], window_ms: int
                  ) -> list[dict[str, Any]]:
    """One row per incident from its lifecycle changes (any order; ``updated`` news is
    not a change) and its last report, ordered by (onset, id). ``window_ms`` is the
    detector's window (the baseline's unit)."""
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        if event["kind"] != "updated":
            by_id.setdefault(str(event["incident_id"]), []).append(event)
    rows = []
    for incident_id, changes in by_id.items():
        changes = sorted(changes, key=lambda e: int(e["seq"]))
        last = changes[-1]
        first = next((e for e in changes if e["kind"] == "opened"), changes[0])
        opened = int(first["at_ms"])
        report = reports.get(incident_id) or {}
        cause = report.get("cause") or {}
        rows.append({
            "id": incident_id, "family": last["family"], "env": last["env"],
            "service": last["service"], "onset_ms": int(last["onset_ms"]),
            "detected_ms": opened, "time_to_detect_ms": opened - spike_start_ms(first, window_ms),
            "status": last["status"], "phase": last.get("phase") or "triggered",
            "resolved_ms": int(last["at_ms"]) if last["status"] == "resolved" else None,
            "seq": int(last["seq"]), "peak_count": int(last["peak_count"]),
            "error_count": int(last["error_count"]),
            "cause": cause.get("kind"), "rule": cause.get("rule_id"),
            "confidence": cause.get("confidence"),
            "report_hash": report.get("report_hash"),
            "report_content_hash": content_hash(report),
            "rules_hash": last.get("rules_hash"),
            "pages": sum(1 for e in changes if e["kind"] in PAGERDUTY_ACTIONS
                         and PAGERDUTY_ACTIONS[e["kind"]] == "trigger"),
        })
    rows.sort(key=lambda r: (r["onset_ms"], r["id"]))
    return rows


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Incidents, pages, and the median time to detect (ms; None without incidents)."""
    ttd = [int(r["time_to_detect_ms"]) for r in rows]
    median = statistics.median(ttd) if ttd else None
    return {"incidents": len(rows), "pages": sum(int(r["pages"]) for r in rows),
            "median_time_to_detect_ms": None if median is None else
            (int(median) if float(median).is_integer() else float(median))}


@dataclass
class Diff:
    """Two replays of one log, incident by incident."""

    only_baseline: list[dict[str, Any]] = field(default_factory=list)
    only_change: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)  # baseline, change, fields
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.only_baseline or self.only_change or self.changed)


def _end(row: Mapping[str, Any]) -> int:
    return int(row["resolved_ms"]) if row["resolved_ms"] is not None else 1 << 62


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return int(a["onset_ms"]) <= _end(b) and int(b["onset_ms"]) <= _end(a)


def diff(baseline: Sequence[Mapping[str, Any]], change: Sequence[Mapping[str, Any]]) -> Diff:
    """Pair the rows of two replays (same id, then same env and family with overlapping
    spans, in onset order) and say what differs."""
    out = Diff()
    left = {str(r["id"]): r for r in baseline}
    right = {str(r["id"]): r for r in change}
    pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
    for incident_id in sorted(left.keys() & right.keys()):
        pairs.append((left.pop(incident_id), right.pop(incident_id)))
    rest = sorted(right.values(), key=lambda r: (r["onset_ms"], r["id"]))
    for a in sorted(left.values(), key=lambda r: (r["onset_ms"], r["id"])):
        match = next((b for b in rest if (b["env"], b["family"]) == (a["env"], a["family"])
                      and _overlap(a, b)), None)
        if match is None:
            out.only_baseline.append(dict(a))
        else:
            rest.remove(match)
            pairs.append((a, match))
    out.only_change = [dict(b) for b in rest]
    for a, b in sorted(pairs, key=lambda p: (p[0]["onset_ms"], p[0]["id"])):
        fields = [f for f in COMPARED if a.get(f) != b.get(f)]
        if fields:
            out.changed.append({"baseline": dict(a), "change": dict(b), "fields": fields})
        else:
            out.unchanged += 1
    return out


def diff_json(d: Diff, baseline: Sequence[Mapping[str, Any]],
              change: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The difference as one JSON-able object, with both sides' totals."""
    return {"totals": {"baseline": totals(baseline), "change": totals(change)},
            "only_baseline": d.only_baseline, "only_change": d.only_change,
            "changed": d.changed, "unchanged": d.unchanged, "empty": d.empty}
