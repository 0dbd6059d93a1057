"""Triage: fold incidents and signals, correlate them, and emit a report version whenever
its hash changes (ADR 0009).

The fold is order-independent by construction, so a signal arriving before or after the
events it relates to, in any interleaving, gives the same final report bytes:

- signals with the same ``signal_id`` fold into one: occurrences add up, first and last
  seen are the min and max event times, and the other fields come from the occurrence
  with the latest event time (ties: resolved > acknowledged > firing, then the larger
  canonical form);
- correlation is a predicate over event times and keys, never over arrival;
- ``generated_at_ms`` is the latest event time among the incident's own changes and its
  correlated signals, so it too is a function of the evidence set.

Signals are held 72 h after they were last seen, and at most ``max_signals`` of them (50,000
by default). Past the cap, signals the retention would forget go first (not counted), then
the oldest resolved ones (by last seen, then id), then the oldest of any state, each counted
in :attr:`Triage.signals_dropped`. The cap is checked after every signal applied, so what
it drops is a function of the sequence of inputs alone (not of batch boundaries, the
clock or when retention last ran). Unlike the rest of the fold it depends on their order:
a dropped signal that occurs again starts a new fold. A drop builds no report version by
itself; only incidents that cite a dropped signal (with the cap or without it) get reports
other than an uncapped fold's: their next version no longer cites it, or cites its new fold.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from tocsin.processors.classify import ClassifierConfig, IncidentFacts, classify
from tocsin.processors.news import COOLDOWN_MS, Basis, basis, cooled, news
from tocsin.processors.report import (
    IncidentState,
    Opening,
    build,
    canonical_json,
    response_section,
)
from tocsin.processors.rules import RuleSet
from tocsin.processors.signals.model import Signal
from tocsin.processors.traces import BlastRadius, ClosedTrace, TraceSummary, summarize
from tocsin.processors.traces.summary import decode_summary, encode_summary

STATE_RANK = {"firing": 0, "acknowledged": 1, "resolved": 2}
EVICT_EVERY_MS = 3_600_000  # retention is checked once per hour of event time
OCCURRENCES_MAX = (1 << 31) - 1  # signal.v1's int: a folded count saturates there


@dataclass(frozen=True, slots=True)
class TriageConfig:
    correlation_window_ms: int = 15 * 60_000
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    signal_retention_ms: int = 72 * 3_600_000  # events and signals are kept 72 h
    traces_per_family: int = 2_000  # failing trace summaries kept per family, newest
    incident_retention_ms: int = 168 * 3_600_000  # resolved incidents 168 h
    max_signals: int = 50_000  # folded signals held; beyond, oldest resolved dropped first
    news_cooldown_ms: int = COOLDOWN_MS  # the same news is told again only after this
    # The rules file (ADR 0022): a correlation window per service, env or family
    rules: RuleSet | None = None

    def __post_init__(self) -> None:
        if self.max_signals < 1:
            raise ValueError(f"max_signals must be at least 1, got {self.max_signals}")


@dataclass(frozen=True, slots=True)
class Folded:
    """A signal after folding its duplicates."""

    signal: Any  # processors.signals.model.Signal
    occurrences: int
    first_seen_ms: int
    last_seen_ms: int
    folded_view: Any = field(default=None, compare=False)

    def merge(self, other: Any) -> Folded:
        def key(s: Any) -> tuple[int, int, bytes]:
            return (s.event_time_ms, STATE_RANK.get(s.state, -1), canonical_json(s.to_dict()))

        latest = max(self.signal, other, key=key)
        return Folded(latest, min(self.occurrences + int(other.occurrences), OCCURRENCES_MAX),
                      min(self.first_seen_ms, other.event_time_ms),
                      max(self.last_seen_ms, other.event_time_ms))

    def view(self) -> Any:
        """The signal as reports see it: its folded occurrence count (built once)."""
        if self.folded_view is None:
            view = self.signal if self.signal.occurrences == self.occurrences \
                else replace(self.signal, occurrences=self.occurrences)
            object.__setattr__(self, "folded_view", view)
        return self.folded_view


def fold(previous: Folded | None, signal: Any) -> Folded:
    if previous is None:
        return Folded(signal, int(signal.occurrences), signal.event_time_ms,
                      signal.event_time_ms)
    return previous.merge(signal)


def incident_state(event: Mapping[str, Any], downstream: str | None) -> IncidentState:
    facts = IncidentFacts(event["incident_id"], event["env"], event["service"], event["step"],
                          event["error_code"], event["onset_ms"], downstream)
    return IncidentState(
        facts, event["family"], event["status"], event["seq"], event["window_count"],
        event["peak_count"], event["error_count"], event["baseline"], event["lift"],
        event["last_error_ms"], event["at_ms"] if event["status"] == "resolved" else None,
        tuple(event.get("sample_trace_ids") or ()), event.get("phase") or "triggered",
        event.get("rules_hash"))


ACTION_FIELDS = ("kind", "actor", "at_ms", "note", "title", "hypothesis_status")


def _traces(blast: BlastRadius | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The report's (blast, propagation) sections from traces, None without any."""
    if blast is None or not blast.affected_requests:
        return None
    return blast.to_dict(), blast.propagation_dict()


def correlates(incident: IncidentState, signal: Any, window_ms: int) -> bool:
    """Whether a signal is evidence for an incident (ADR 0009). A resolved incident absorbs
    nothing that happened after it resolved."""
    f = incident.facts
    t = signal.event_time_ms
    if incident.resolved_ms is not None and t > incident.resolved_ms:
        return False
    if signal.incident_id is not None:
        return bool(signal.incident_id == f.incident_id)
    if signal.trace_id is not None and signal.trace_id in incident.sample_traces:
        return True
    if not f.onset_ms - window_ms <= t <= incident.last_error_ms + window_ms:
        return False
    if signal.env is not None and signal.env != f.env:
        return False
    if signal.error_code is not None and signal.error_code == f.error_code:
        return True
    names = {f.service} | ({f.downstream} if f.downstream else set())
    return bool(signal.service in names or (signal.downstream is not None
                                            and signal.downstream in names))


class Triage:
    """All incidents and signals of the stream; reports when something material changes."""

    def __init__(self, config: TriageConfig | None = None) -> None:
        self.config = config or TriageConfig()
        self.incidents: dict[str, IncidentState] = {}
        self.signals: dict[str, Folded] = {}
        self.last_hash: dict[str, str] = {}
        self.downstreams: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.horizon_ms = 0  # the latest event time seen: what retention counts from
        # Failing traces by family key, kept so an incident that opens after its traces
        # closed still counts them: (end ms, trace id) -> summary, newest kept.
        self.traces: dict[str, dict[tuple[int, str], TraceSummary]] = {}
        self.blasts: dict[str, BlastRadius] = {}
        # The snapshot "at opening" (ADR 0012): the incident as its `opened` event described
        # it, and the failing traces that had ended by that event's time.
        self.opened: dict[str, tuple[int, IncidentState]] = {}
        self.opening_blasts: dict[str, BlastRadius] = {}
        self._counted: dict[str, set[str]] = {}
        self._evicted_at_ms = 0
        self.signals_dropped = 0  # forgotten over max_signals (retention's are not counted)
        # (last seen ms, signal id) of the held signals, and of the resolved ones: min-heaps,
        # read lazily (an entry is current while it matches the signal's fold).
        self._by_age: list[tuple[int, str]] = []
        self._resolved_by_age: list[tuple[int, str]] = []
        # The snapshot form of each kept summary, by its key: (the summary, its form)
        self._trace_docs: dict[tuple[int, str], tuple[TraceSummary, Any]] = {}
        # Operator actions by incident, by seq (ADR 0016): whatever order they arrive in
        self.actions: dict[str, dict[int, dict[str, Any]]] = {}
        # News (ADR 0018): each incident's last version reduced to what news is measured
        # against, the news told (signature -> event time), and the `updated` events made
        # since the last take_updates()
        self.news_basis: dict[str, Basis] = {}
        self.news_told: dict[str, dict[str, int]] = {}
        self.updates: list[dict[str, Any]] = []
        # The latest timeline detection drew of each incident (ADR 0019): (seq, timeline)
        self.timelines: dict[str, tuple[int, dict[str, Any]]] = {}

    # Each input marks the incidents it touches; flush() evaluates each of them once.

    def apply_incident_event(self, event: Mapping[str, Any],
                             downstream: str | None = None) -> None:
        if event["kind"] == "updated":
            return  # news this fold (or another partition's) told: no change of state
        incident_id = event["incident_id"]
        if downstream is not None:
            self.downstreams[incident_id] = downstream
        if event["kind"] == "opened" and incident_id not in self.opened:
            self.opened[incident_id] = (int(event["at_ms"]),
                                        incident_state(event, downstream))
        if event.get("action_id"):
            actions = self.actions.setdefault(incident_id, {})
            if event["seq"] not in actions:
                actions[event["seq"]] = {k: event.get(k) for k in ACTION_FIELDS}
                self.dirty.add(incident_id)
        timeline = event.get("timeline")
        if timeline is not None:
            drawn = self.timelines.get(incident_id)
            if drawn is None or drawn[0] < event["seq"]:
                self.timelines[incident_id] = (int(event["seq"]), timeline)
                self.dirty.add(incident_id)
        current = self.incidents.get(incident_id)
        if current is not None and current.seq >= event["seq"]:
            return
        state = self.incidents[incident_id] = incident_state(
            event, self.downstreams.get(incident_id))
        self.horizon_ms = max(self.horizon_ms, int(event["at_ms"]))
        self.dirty.add(incident_id)
        if current is not None and self._window_end(state) < self._window_end(current):
            # The window closed in (it resolved): the traces it counted while it reached
            # further go, and the kept ones are counted again, so its traces are those of
            # its final window whatever order summaries and lifecycle arrived in.
            self.blasts.pop(incident_id, None)
            self.opening_blasts.pop(incident_id, None)
            self._counted.pop(incident_id, None)
        self._route_kept_traces(incident_id)

    def apply_signal(self, signal: Any) -> None:
        previous = self.signals.get(signal.signal_id)
        folded = fold(previous, signal)
        self.signals[signal.signal_id] = folded
        self._track(signal.signal_id, previous, folded)
        self.horizon_ms = max(self.horizon_ms, signal.event_time_ms)
        window = self.window_of
        # Correlation reads the fold's latest occurrence: when that changes, the incidents
        # the previous one correlated with are touched too (the signal may have left their
        # evidence), so each one's last version is its report as of this input.
        before = previous.signal if previous is not None \
            and previous.signal is not folded.signal else None
        self.dirty.update(i for i, inc in self.incidents.items()
                          if correlates(inc, folded.signal, window(inc))
                          or (before is not None and correlates(inc, before, window(inc))))
        self._cap()

    # The cap on held signals (see the module docstring).

    def _track(self, signal_id: str, previous: Folded | None, folded: Folded) -> None:
        entry = (folded.last_seen_ms, signal_id)
        moved = previous is None or previous.last_seen_ms != folded.last_seen_ms
        if moved:
            heapq.heappush(self._by_age, entry)
        if folded.signal.state == "resolved" and (
                previous is None or moved or previous.signal.state != "resolved"):
            heapq.heappush(self._resolved_by_age, entry)
        if max(len(self._by_age), len(self._resolved_by_age)) > 2 * len(self.signals) + 1024:
            self._by_age = sorted((f.last_seen_ms, k) for k, f in self.signals.items())
            self._resolved_by_age = sorted((f.last_seen_ms, k) for k, f in self.signals.items()
                                           if f.signal.state == "resolved")

    def _oldest(self, heap: list[tuple[int, str]], resolved: bool) -> tuple[int, str] | None:
        """The heap's oldest current entry (stale ones above it are discarded)."""
        while heap:
            last_seen_ms, signal_id = heap[0]
            held = self.signals.get(signal_id)
            if held is not None and held.last_seen_ms == last_seen_ms and (
                    not resolved or held.signal.state == "resolved"):
                return heap[0]
            heapq.heappop(heap)
        return None

    def _cap(self) -> None:
        """At most ``max_signals``: past retention first (not counted; retention would forget
        them at its next hourly check), then the oldest resolved, then the oldest."""
        cap = self.config.max_signals
        expired_before = self.horizon_ms - self.config.signal_retention_ms
        while len(self.signals) > cap:
            oldest = self._oldest(self._by_age, False)
            assert oldest is not None  # every held signal has a current entry
            if oldest[0] >= expired_before:
                break
            heapq.heappop(self._by_age)
            del self.signals[oldest[1]]
        while len(self.signals) > cap:
            heap = self._resolved_by_age
            victim = self._oldest(heap, True)
            if victim is None:
                heap = self._by_age
                victim = self._oldest(heap, False)
            assert victim is not None
            heapq.heappop(heap)
            del self.signals[victim[1]]
            self.signals_dropped += 1

    def apply_trace(self, trace: ClosedTrace) -> None:
        """A closed trace: if it failed, evidence for the incidents of its failing
        families whose window holds it (ADR 0012). Its summary and last span end, as
        :meth:`apply_summary` takes them."""
        if not trace.failing:
            return
        self.apply_summary(summarize(trace), max(s.end_ms for s in trace.spans))

    def apply_summary(self, summary: TraceSummary, end_ms: int) -> None:
        """A failing trace's summary and its last span end (``end_ms``, the trace's event
        time), as trace assembly publishes them (``traces.summary_records``, decoded by
        ``traces.decode_summary``; ADR 0015): the same effect as :meth:`apply_trace` of the
        trace. A summary seen again (both copies of a trace failing in two services of one
        partition, a replay) changes nothing. A summary of a trace that did not fail is
        ignored."""
        if not summary.failing:
            return
        self.horizon_ms = max(self.horizon_ms, end_ms)
        for family in summary.families:
            kept = self.traces.setdefault(family, {})
            kept[(end_ms, summary.trace_id)] = summary
            if len(kept) > self.config.traces_per_family:
                del kept[min(kept)]
        for incident_id, incident in self.incidents.items():
            if incident.family in summary.families and self._in_window(incident, end_ms):
                self._count_trace(incident_id, summary, end_ms)

    def _window_end(self, incident: IncidentState) -> int:
        """The last trace end an incident counts: when it resolved, else its last error
        plus the correlation window (ADR 0012)."""
        return incident.resolved_ms if incident.resolved_ms is not None \
            else incident.last_error_ms + self.window_of(incident)

    def _in_window(self, incident: IncidentState, t_ms: int) -> bool:
        window = self.window_of(incident)
        return incident.facts.onset_ms - window <= t_ms <= self._window_end(incident)

    def _count_trace(self, incident_id: str, summary: TraceSummary, end_ms: int) -> None:
        service = self.incidents[incident_id].facts.service
        blast = self.blasts.setdefault(incident_id, BlastRadius(incident_id, service))
        if summary.trace_id not in self._counted.setdefault(incident_id, set()):
            self._counted[incident_id].add(summary.trace_id)
            if blast.add(summary):
                self.dirty.add(incident_id)
            opened = self.opened.get(incident_id)
            if opened is not None and end_ms <= opened[0]:
                self.opening_blasts.setdefault(
                    incident_id, BlastRadius(incident_id, service)).add(summary)

    def _route_kept_traces(self, incident_id: str) -> None:
        incident = self.incidents[incident_id]
        for (end_ms, _), summary in sorted(self.traces.get(incident.family, {}).items()):
            if self._in_window(incident, end_ms):
                self._count_trace(incident_id, summary, end_ms)

    def flush(self) -> list[dict[str, Any]]:
        """Report versions of the touched incidents whose hash changed, by incident id."""
        touched, self.dirty = sorted(self.dirty), set()
        reports = self._evaluate(touched)
        self.evict()
        return reports

    def evict(self) -> None:
        """Forget, by event time, signals past their retention and incidents resolved
        longer ago than theirs (retention)."""
        cfg = self.config
        if self.horizon_ms - self._evicted_at_ms < EVICT_EVERY_MS:
            return
        self._evicted_at_ms = self.horizon_ms
        for signal_id in [k for k, f in self.signals.items()
                          if f.last_seen_ms < self.horizon_ms - cfg.signal_retention_ms]:
            del self.signals[signal_id]
        for incident_id in [k for k, inc in self.incidents.items()
                            if inc.resolved_ms is not None
                            and inc.resolved_ms < self.horizon_ms - cfg.incident_retention_ms]:
            del self.incidents[incident_id]
            self.last_hash.pop(incident_id, None)
            self.downstreams.pop(incident_id, None)
            self.blasts.pop(incident_id, None)
            self.opened.pop(incident_id, None)
            self.opening_blasts.pop(incident_id, None)
            self._counted.pop(incident_id, None)
            self.actions.pop(incident_id, None)
            self.news_basis.pop(incident_id, None)
            self.news_told.pop(incident_id, None)
            self.timelines.pop(incident_id, None)
        horizon = self.horizon_ms - cfg.signal_retention_ms
        for family in list(self.traces):
            kept = self.traces[family]
            for key in [k for k in kept if k[0] < horizon]:
                del kept[key]
            if not kept:
                del self.traces[family]

    def on_incident_event(self, event: Mapping[str, Any], downstream: str | None = None
                          ) -> list[dict[str, Any]]:
        self.apply_incident_event(event, downstream)
        return self.flush()

    def on_signal(self, signal: Any) -> list[dict[str, Any]]:
        self.apply_signal(signal)
        return self.flush()

    def window_of(self, incident: IncidentState) -> int:
        """The correlation window of an incident: the rules file's for its family, if
        any (ADR 0022), else the configured one."""
        rules, default = self.config.rules, self.config.correlation_window_ms
        if rules is None:
            return default
        f = incident.facts
        return rules.correlation_window_ms(f.env, f.service, incident.family, default)

    def evidence_for(self, incident: IncidentState) -> list[Any]:
        window = self.window_of(incident)
        return [f.view() for _, f in sorted(self.signals.items())
                if correlates(incident, f.signal, window)]

    def report(self, incident_id: str) -> dict[str, Any]:
        incident = self.incidents[incident_id]
        evidence = self.evidence_for(incident)
        blast = self.blasts.get(incident_id)
        trace_facts = blast.trace_facts() if blast is not None else None
        decision = classify(incident.facts, evidence, self.config.classifier, trace_facts)
        actions = [a for _, a in sorted(self.actions.get(incident_id, {}).items())]
        times = [incident.last_error_ms, incident.resolved_ms or 0,
                 *(s.event_time_ms for s in evidence), *(a["at_ms"] for a in actions)]
        opened = self.opened.get(incident_id)
        opening = None if opened is None else Opening(
            opened[0], opened[1], _traces(self.opening_blasts.get(incident_id)))
        drawn = self.timelines.get(incident_id)
        return build(incident, evidence, decision, max(times), _traces(blast), opening,
                     trace_facts if decision.rule_id == "trace_downstream" else None,
                     response_section(incident, actions),
                     None if drawn is None else drawn[1])

    def _evaluate(self, incident_ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for incident_id in incident_ids:
            report = self.report(incident_id)
            if self.last_hash.get(incident_id) != report["report_hash"]:
                self.last_hash[incident_id] = report["report_hash"]
                out.append(report)
                self._news(incident_id, report)
        return out

    def _news(self, incident_id: str, report: dict[str, Any]) -> None:
        """An ``updated`` event when a new version of an open incident tells something
        its previous one did not (ADR 0018), unless the same news was told within the
        cooldown. The first version (the opening) is not news."""
        after = basis(report)
        before = self.news_basis.get(incident_id)
        self.news_basis[incident_id] = after
        incident = self.incidents[incident_id]
        if before is None or incident.status == "resolved":
            return
        found = news(before, after)
        if found is None:
            return
        at_ms = int(report["generated_at_ms"])
        told = self.news_told.setdefault(incident_id, {})
        if not cooled(told, found["signature"], at_ms, self.config.news_cooldown_ms):
            return
        told[found["signature"]] = at_ms
        f = incident.facts
        self.updates.append({
            "incident_id": incident_id, "seq": incident.seq, "kind": "updated",
            "status": incident.status, "env": f.env, "service": f.service, "step": f.step,
            "error_code": f.error_code, "family": incident.family, "onset_ms": f.onset_ms,
            "at_ms": at_ms, "window_count": incident.window_count,
            "baseline": incident.baseline, "lift": incident.lift,
            "peak_count": incident.peak_count, "error_count": incident.error_count,
            "last_error_ms": incident.last_error_ms, "rule": "spike.v1",
            "downstream": f.downstream, "sample_trace_ids": list(incident.sample_traces),
            "phase": incident.phase, "action_id": None, "actor": None, "note": None,
            "title": None, "hypothesis_status": None, "added": found["added"],
            "removed": found["removed"], "news_signature": found["signature"],
            "news_cause": None if found["cause"] is None
            else f"{found['cause']['from']} -> {found['cause']['to']}",
            "report_hash": report["report_hash"]})

    def take_updates(self) -> list[dict[str, Any]]:
        """The ``updated`` events made since the last call, in the order made."""
        updates, self.updates = self.updates, []
        return updates

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state (after :meth:`flush`); :meth:`restore` of it gives a fold
        that answers every later input as this one would."""
        docs, kept_docs = self._trace_docs, {}

        def summary(key: tuple[int, str], s: TraceSummary) -> Any:
            # The wire form, but with every user: the wire cuts them at USERS_PER_TRACE
            # (a trace applied with apply_trace may hold more); decode_summary reads them.
            # Built once per kept summary object, not at every checkpoint.
            cached = docs.get(key)
            if cached is not None and cached[0] is s:
                doc = cached[1]
            else:
                doc = orjson.loads(encode_summary(s, key[0]))
                doc.pop("users_cut", None)
                doc["users"] = list(s.users)
            kept_docs[key] = (s, doc)
            return doc

        snap = {
            "v": SNAPSHOT_VERSION,
            "incidents": {k: _incident_list(v) for k, v in sorted(self.incidents.items())},
            "signals": [[f.signal.to_dict(), f.occurrences, f.first_seen_ms, f.last_seen_ms]
                        for _, f in sorted(self.signals.items())],
            "last_hash": dict(sorted(self.last_hash.items())),
            "downstreams": dict(sorted(self.downstreams.items())),
            "dirty": sorted(self.dirty),
            "horizon_ms": self.horizon_ms,
            "traces": {family: [summary(key, s) for key, s in sorted(kept.items())]
                       for family, kept in sorted(self.traces.items())},
            "blasts": {k: b.snapshot() for k, b in sorted(self.blasts.items())},
            "opened": {k: [at, _incident_list(s)] for k, (at, s) in sorted(self.opened.items())},
            "opening_blasts": {k: b.snapshot() for k, b in sorted(self.opening_blasts.items())},
            "counted": {k: sorted(v) for k, v in sorted(self._counted.items())},
            "evicted_at_ms": self._evicted_at_ms,
            "signals_dropped": self.signals_dropped,
            "actions": {k: [[seq, a] for seq, a in sorted(v.items())]
                        for k, v in sorted(self.actions.items())},
            "news_basis": {k: b.to_list() for k, b in sorted(self.news_basis.items())},
            "news_told": {k: dict(sorted(v.items())) for k, v in sorted(self.news_told.items())},
            "updates": list(self.updates),
            "timelines": {k: [seq, t] for k, (seq, t) in sorted(self.timelines.items())},
        }
        self._trace_docs = kept_docs
        return snap

    @classmethod
    def restore(cls, snap: dict[str, Any], config: TriageConfig | None = None) -> Triage:
        if snap.get("v") != SNAPSHOT_VERSION:
            raise ValueError("triage checkpoint of another snapshot version")
        triage = cls(config)
        triage.incidents = {k: _incident_of(v) for k, v in snap["incidents"].items()}
        for raw, occurrences, first, last in snap["signals"]:
            # signal_id is computed (init=False), never passed: to_dict() has it, Signal()
            # refuses it; the recomputed one must be the one the snapshot held.
            signal = Signal(**{k: v for k, v in raw.items() if k != "signal_id"})
            if signal.signal_id != raw["signal_id"]:
                raise ValueError(f"triage checkpoint: signal {raw['signal_id']} reads back "
                                 f"as {signal.signal_id}")
            triage.signals[signal.signal_id] = Folded(signal, int(occurrences), int(first),
                                                      int(last))
        triage.last_hash = dict(snap["last_hash"])
        triage.downstreams = dict(snap["downstreams"])
        triage.dirty = set(snap["dirty"])
        triage.horizon_ms = int(snap["horizon_ms"])
        for family, kept in snap["traces"].items():
            for raw in kept:
                s, end_ms = decode_summary(orjson.dumps(raw))
                triage.traces.setdefault(family, {})[(end_ms, s.trace_id)] = s
        triage.blasts = {k: BlastRadius.restore(v) for k, v in snap["blasts"].items()}
        triage.opened = {k: (int(at), _incident_of(s)) for k, (at, s) in snap["opened"].items()}
        triage.opening_blasts = {k: BlastRadius.restore(v)
                                 for k, v in snap["opening_blasts"].items()}
        triage._counted = {k: set(v) for k, v in snap["counted"].items()}
        triage._evicted_at_ms = int(snap["evicted_at_ms"])
        triage.signals_dropped = int(snap["signals_dropped"])
        triage.actions = {k: {int(seq): dict(a) for seq, a in v}
                          for k, v in snap.get("actions", {}).items()}
        triage.news_basis = {k: Basis.from_list(v)
                             for k, v in snap.get("news_basis", {}).items()}
        triage.news_told = {k: {sig: int(at) for sig, at in v.items()}
                            for k, v in snap.get("news_told", {}).items()}
        triage.updates = list(snap.get("updates", []))
        triage.timelines = {k: (int(seq), t) for k, (seq, t) in
                            snap.get("timelines", {}).items()}
        triage._by_age = sorted((f.last_seen_ms, k) for k, f in triage.signals.items())
        triage._resolved_by_age = sorted((f.last_seen_ms, k)
                                         for k, f in triage.signals.items()
                                         if f.signal.state == "resolved")
        return triage


SNAPSHOT_VERSION = 1


def _incident_list(s: IncidentState) -> list[Any]:
    f = s.facts
    return [[f.incident_id, f.env, f.service, f.step, f.error_code, f.onset_ms, f.downstream,
             f.version], s.family, s.status, s.seq, s.window_count, s.peak_count,
            s.error_count, s.baseline, s.lift, s.last_error_ms, s.resolved_ms,
            list(s.sample_traces), s.phase, *([s.rules_hash] if s.rules_hash else [])]


def _incident_of(v: list[Any]) -> IncidentState:
    """An incident of a snapshot; one written before ADR 0016 has no phase (triggered),
    and one decided without a rules file no rules hash (ADR 0022)."""
    facts, family, status, seq, window_count, peak_count, error_count, baseline, lift, \
        last_error_ms, resolved_ms, sample_traces, *phase = v
    return IncidentState(IncidentFacts(*facts), family, status, seq, window_count,
                         peak_count, error_count, baseline, lift, last_error_ms, resolved_ms,
                         tuple(sample_traces), *phase)
