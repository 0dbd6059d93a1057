"""The triage report ``triage.v1``: evidence, next checks, canonical bytes and two hashes.

The report is a plain JSON object. Its bytes are its canonical form (ADR 0010): keys
sorted, no insignificant whitespace, UTF-8, integers for every time. ``report_hash`` is
"sha256:" + hex sha256 of those bytes with ``generated_at_ms``, ``report_hash`` and
``evidence_fingerprint`` blanked; ``evidence_fingerprint`` is "sha256:" + hex sha256 of the
sorted, de-duplicated ``kind:id`` lines of the evidence, so it stays put across
re-evaluations until the evidence itself changes. Provenance (where each cited record was
read) is kept beside the report, never inside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tocsin.processors.classify import Decision, IncidentFacts, TraceFacts

SCHEMA = "triage.v1"
MAX_ITEMS = 8
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
HASHED_BLANKS = ("generated_at_ms", "report_hash", "evidence_fingerprint")


class SignalView(Protocol):
    """What a report reads of a normalized signal (processors.signals.model.Signal)."""

    @property
    def signal_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def service(self) -> str | None: ...
    @property
    def severity(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def event_time_ms(self) -> int: ...
    @property
    def provider_url(self) -> str | None: ...
    @property
    def downstream(self) -> str | None: ...
    @property
    def runtime_subtype(self) -> str | None: ...
    @property
    def pod(self) -> str | None: ...
    @property
    def container(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def restart_count(self) -> int | None: ...
    @property
    def version(self) -> str | None: ...
    @property
    def commit(self) -> str | None: ...
    @property
    def pr_url(self) -> str | None: ...
    @property
    def author(self) -> str | None: ...
    @property
    def occurrences(self) -> int: ...


@dataclass(frozen=True, slots=True)
class IncidentState:
    """The incident as the detection path last described it."""

    facts: IncidentFacts
    family: str
    status: str
    seq: int
    window_count: int
    peak_count: int
    error_count: int
    baseline: float
    lift: float | None
    last_error_ms: int
    resolved_ms: int | None = None
    sample_traces: tuple[str, ...] = ()
    phase: str = "triggered"  # the response phase (ADR 0016)
    rules_hash: str | None = None  # the rules file it was decided under (ADR 0022)


Traces = tuple[dict[str, Any], dict[str, Any]]  # (blast, propagation) from failing traces


@dataclass(frozen=True, slots=True)
class Opening:
    """The incident when it opened: its `opened` event's time and description, and the
    failing traces that had ended by then (None without any)."""

    at_ms: int
    state: IncidentState
    traces: Traces | None


def canonical_json(value: Any) -> bytes:
    """The one byte form of a report: sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _signal_row(s: SignalView) -> dict[str, Any]:
    return {"kind": s.type, "id": s.signal_id, "source": s.source,
            "summary": s.title, "time_ms": s.event_time_ms}


def _capped(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ordered by time, kind, summary (then id, for a total order); at most 8."""
    return sorted(rows, key=lambda r: (r["time_ms"], r["kind"], r["summary"], r["id"]))[
        :MAX_ITEMS]


def _alert(s: SignalView) -> dict[str, Any]:
    return {"id": s.signal_id, "source": s.source, "title": s.title, "state": s.state,
            "severity": s.severity, "service": s.service, "time_ms": s.event_time_ms,
            "occurrences": s.occurrences, "url": s.provider_url,
            "summary": s.title, "kind": "alert"}


def _runtime(s: SignalView) -> dict[str, Any]:
    return {"id": s.signal_id, "source": s.source, "subtype": s.runtime_subtype,
            "reason": s.reason, "severity": s.severity, "service": s.service,
            "pod": s.pod, "container": s.container, "exit_code": s.exit_code,
            "restart_count": s.restart_count, "time_ms": s.event_time_ms,
            "occurrences": s.occurrences, "title": s.title}


def _deploy(s: SignalView) -> dict[str, Any]:
    return {"id": s.signal_id, "source": s.source, "service": s.service,
            "version": s.version, "commit": s.commit, "pr_url": s.pr_url,
            "author": s.author, "time_ms": s.event_time_ms, "title": s.title}


def _strip_sort_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("summary", "kind")} for r in rows]


def _deploy_name(d: SignalView) -> str:
    """A deploy as a next check names it: service, version, commit, author."""
    what = " ".join(x for x in (d.version, f"(commit {d.commit})" if d.commit else None)
                    if x)
    who = f" by {d.author}" if d.author else ""
    return f"{d.service} {what or 'deploy'}{who}"


def _duration(ms: int) -> str:
    minutes, seconds = divmod(ms // 1000, 60)
    return " ".join(x for x in (f"{minutes} min" if minutes else None,
                                f"{seconds} s" if seconds or not minutes else None) if x)


def next_checks(incident: IncidentState, decision: Decision,
                by_id: dict[str, SignalView], traces: TraceFacts | None = None) -> list[str]:
    """What to look at first, named from the evidence that decided, not a template; then
    the deploys that landed after onset (ADR 0008), which did not start the incident."""
    f = incident.facts
    cited = [by_id[i] for i in decision.inputs if i in by_id]
    checks: list[str] = []
    if decision.kind == "deploy" and cited:
        d = cited[0]
        checks.append(f"Compare {_deploy_name(d)} with the version before "
                      f"it; roll back if {incident.family} started with it.")
        if d.pr_url:
            checks.append(f"Read the change: {d.pr_url}")
    if decision.kind == "dependency":
        # The traces' dependency when they decided (the step's peer may be a raw
        # server.address), else the step's own downstream, else the cited signal's.
        down = (traces.downstream if traces else None) or f.downstream or \
            (cited[0].downstream or cited[0].service if cited else None)
        checks.append(f"Check {down}: {f.service} {f.step} fails with {f.error_code} "
                      f"calling it ({incident.error_count} errors since onset).")
        if traces is not None:
            checks.append(f"Open trace {traces.sample_trace}: {traces.traces} of "
                          f"{traces.of} failing traces start failing in {traces.downstream}.")
        for s in cited:
            checks.append(f"Dependency signal from {s.source}: {s.title}")
    if decision.kind == "runtime" and cited:
        r = cited[0]
        where = " ".join(x for x in (f"pod {r.pod}" if r.pod else None,
                                     f"container {r.container}" if r.container else None)
                         if x) or f"{r.service}"
        detail = ", ".join(x for x in (
            f"exit code {r.exit_code}" if r.exit_code is not None else None,
            f"{r.restart_count} restarts" if r.restart_count is not None else None) if x)
        checks.append(f"Inspect {where}: {r.runtime_subtype or r.reason}"
                      + (f" ({detail})" if detail else "") + ".")
    if decision.kind == "app":
        checks.append(f"Read {f.service} {f.step} errors {f.error_code}: no downstream is "
                      "involved, so the fault is likely in the service's own code or data.")
    if decision.kind == "unknown":
        checks.append(f"Look at {f.service} {f.step} ({f.error_code}): no deploy, dependency "
                      "or runtime evidence correlated yet.")
    for d in (by_id[i] for i in decision.later_deploys if i in by_id):
        checks.append(f"{_deploy_name(d)} landed {_duration(d.event_time_ms - f.onset_ms)} "
                      f"after onset, so it did not start {incident.family}: check whether it "
                      "changed the failure (a fix, a rollback or a new fault).")
    return checks


def snapshots(incident: IncidentState, traces: Traces | None) -> dict[str, Any]:
    """The blast and propagation sections: from the failing traces when there are any
    (ADR 0012), else what the detection path alone knows, as partial or missing."""
    if traces is not None:
        return {"blast": traces[0], "propagation": traces[1]}
    f = incident.facts
    return {
        "blast": {"capture": "partial",
                  "affected_requests": incident.error_count,
                  "affected_services": [f.service],
                  "sample_traces": list(incident.sample_traces),
                  "note": "from the detection path's counts; traces enrich it later"},
        "propagation": {"capture": "partial" if f.downstream else "missing",
                        "origin": {"service": f.downstream, "step": None}
                        if f.downstream else None,
                        "path": [f.service, f.downstream] if f.downstream else [],
                        "sample_trace": incident.sample_traces[0]
                        if incident.sample_traces else None},
    }


def build(incident: IncidentState, signals: Sequence[SignalView], decision: Decision,
          as_of_ms: int, traces: Traces | None = None, opening: Opening | None = None,
          trace_facts: TraceFacts | None = None, response: dict[str, Any] | None = None,
          timeline: dict[str, Any] | None = None,
          ) -> dict[str, Any]:
    """The report, sealed with its two hashes. ``traces`` is (blast, propagation) from the
    incident's failing traces (ADR 0012); ``opening`` the same captured when it opened;
    ``trace_facts`` the traces' failing dependency when it decided the cause;
    ``response`` what people did (:func:`response_section`), absent until they act."""
    f = incident.facts
    by_id = {s.signal_id: s for s in signals}
    alerts = [s for s in signals if s.type == "alert"]
    runtime = sorted((s for s in signals if s.type == "runtime"),
                     key=lambda s: (SEVERITY_RANK.get(s.severity, 3), s.event_time_ms,
                                    s.signal_id))[:MAX_ITEMS]
    deploys = [s for s in signals if s.type == "deploy"]
    dependencies = [s for s in signals if s.type == "dependency"]
    suspect = next((by_id[i] for i in decision.inputs
                    if i in by_id and by_id[i].type == "deploy"), None)
    incident_row = {"kind": "incident", "id": f.incident_id, "source": "tocsin",
                    "summary": f"{incident.family} spiked", "time_ms": f.onset_ms}
    evidence = [incident_row, *_capped(_signal_row(s) for s in
                                       [*deploys, *dependencies, *alerts])]
    evidence += [_signal_row(s) for s in runtime]
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "incident": {
            "id": f.incident_id, "family": incident.family, "env": f.env,
            "service": f.service, "step": f.step, "error_code": f.error_code,
            "downstream": f.downstream, "status": incident.status, "seq": incident.seq,
            "onset_ms": f.onset_ms, "last_error_ms": incident.last_error_ms,
            "resolved_ms": incident.resolved_ms,
            "window": {"count": incident.window_count, "peak": incident.peak_count,
                       "errors": incident.error_count,
                       "baseline": incident.baseline, "lift": incident.lift},
            # Only under a rules file (ADR 0022): reports made with the built-in settings
            # keep the bytes they had before rules existed.
            **({"rules_hash": incident.rules_hash} if incident.rules_hash else {}),
        },
        "cause": decision.to_dict(),
        "counts": {"alerts": len(alerts), "runtime": sum(1 for s in signals
                                                          if s.type == "runtime"),
                   "deploys": len(deploys), "dependencies": len(dependencies),
                   "alert_occurrences": sum(s.occurrences for s in alerts)},
        "suspect_change": _deploy(suspect) if suspect else None,
        "evidence": evidence,
        "alerts": _strip_sort_keys(_capped(_alert(s) for s in alerts)),
        "runtime": [_runtime(s) for s in runtime],
        "deploys": [_deploy(s) for s in sorted(deploys, key=lambda s: (s.event_time_ms,
                                                                      s.signal_id))][
            :MAX_ITEMS],
        "snapshots": {
            **snapshots(incident, traces),
            "at_opening": None if opening is None else
            {"at_ms": opening.at_ms, **snapshots(opening.state, opening.traces)},
        },
        "next_checks": next_checks(incident, decision, by_id, trace_facts),
        "generated_at_ms": as_of_ms,
    }
    if response is not None:
        report["response"] = response
    if timeline is not None:
        report["timeline"] = timeline
    if traces is not None:
        for trace_id in traces[0].get("sample_traces") or ():
            report["evidence"].append({"kind": "trace", "id": trace_id, "source": "otlp",
                                       "summary": f"sample failing trace {trace_id}",
                                       "time_ms": f.onset_ms})
    return seal(report)


MAX_NOTES = 50  # the latest notes a report lists; notes_total counts them all
RESPONDED = ("acknowledged", "investigating", "mitigated", "resolved")


def response_section(incident: IncidentState, actions: Sequence[Mapping[str, Any]]
                     ) -> dict[str, Any] | None:
    """What people did to the incident (ADR 0016), from its operator actions in sequence
    order (each the lifecycle event's ``kind``, ``actor``, ``at_ms``, ``note``, ``title``,
    ``hypothesis_status``); None without any.

    ``acknowledged`` is the first response (acknowledge, investigate, mitigate or resolve);
    ``mitigated`` the latest mitigation; ``resolved`` the person's resolve in effect (None
    when the machine resolved it, or it is open); every action with a note is a note;
    each hypothesis appears once, at its latest status, in the order first proposed."""
    if not actions:
        return None

    def who(a: Mapping[str, Any]) -> dict[str, Any]:
        return {"by": a["actor"], "at_ms": a["at_ms"]}

    first = next((a for a in actions if a["kind"] in RESPONDED), None)
    mitigated = [a for a in actions if a["kind"] == "mitigated"]
    status_changes = [a for a in actions if a["kind"] in ("resolved", "reopened")]
    resolved = status_changes[-1] if status_changes and incident.status == "resolved" \
        and status_changes[-1]["kind"] == "resolved" else None
    hypotheses: dict[str, dict[str, Any]] = {}
    for a in actions:
        if a["kind"] == "hypothesis":
            title = a["title"]
            proposed = hypotheses.get(title, {}).get("proposed_by", a["actor"])
            hypotheses[title] = {"title": title, "status": a["hypothesis_status"],
                                 "by": a["actor"], "at_ms": a["at_ms"],
                                 "proposed_by": proposed}
    notes = [{"kind": a["kind"], "by": a["actor"], "at_ms": a["at_ms"], "note": a["note"]}
             for a in actions if a.get("note")]
    return {
        "phase": incident.phase,
        "acknowledged": who(first) if first is not None else None,
        "mitigated": who(mitigated[-1]) if mitigated else None,
        "resolved": who(resolved) if resolved is not None else None,
        "notes": notes[-MAX_NOTES:],
        "notes_total": len(notes),
        "hypotheses": list(hypotheses.values()),
        "actions": len(actions),
    }


def fingerprint_lines(report: dict[str, Any]) -> list[str]:
    lines = {f"{row['kind']}:{row['id']}" for row in report["evidence"]}
    for alert in report["alerts"]:
        lines.add(f"alert:{alert['id']}")
    for item in report["runtime"]:
        lines.add(f"runtime:{item['id']}")
    if report.get("suspect_change"):
        lines.add(f"deploy:{report['suspect_change']['id']}")
    trace = report["snapshots"]["propagation"].get("sample_trace")
    if trace:
        lines.add(f"trace:{trace}")
    return sorted(lines)


def seal(report: dict[str, Any]) -> dict[str, Any]:
    """Set ``evidence_fingerprint`` and ``report_hash`` (over everything else)."""
    sealed = dict(report)
    sealed["evidence_fingerprint"] = _sha256("\n".join(fingerprint_lines(report)).encode())
    blanked = {**sealed, **dict.fromkeys(HASHED_BLANKS, "")}
    sealed["report_hash"] = _sha256(canonical_json(blanked))
    return sealed


def verify(report: dict[str, Any]) -> bool:
    """Whether a report's two hashes match its content."""
    return seal({k: v for k, v in report.items()}) == report
