"""Per-partition spike detector: windows, baseline, lifecycle, bounded state.

One :class:`PartitionDetector` owns every family of one input partition. Events are fed
in log order with :meth:`observe`; it returns the lifecycle changes they caused. Its state
round-trips through :meth:`snapshot` / :meth:`restore`, so it can be checkpointed together
with the input position it reflects (ADR 0004).

Time: each service has its own clock, the largest event time seen from it. Since the
events topic is keyed by service, a service's events reach one partition in log order, so
every decision is a function of that service's own event sequence, whatever the number
of partitions, workers or batch sizes (ADR 0002). The partition's watermark only moves a
service that went silent for longer than ``idle_grace_ms``.
"""

from __future__ import annotations

from dataclasses import replace
from math import frexp
from typing import Any

from tocsin.processors import (
    detector_actions,
    detector_snapshot,
    runtime_detection,
    step_detection,
)
from tocsin.processors.actions import Command, Refusal
from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector_actions import CLOSED_KEPT_MS as CLOSED_KEPT_MS
from tocsin.processors.detector_state import (
    Counters,
    FamilyState,
    FamilyWindow,
    StepWindow,
    VersionChanged,
)
from tocsin.processors.family import Family
from tocsin.processors.incident_timelines import IncidentTimelines
from tocsin.processors.lifecycle import (
    IncidentEvent,
    OpenIncident,
    event,
    incident_id,
)
from tocsin.processors.rules import RuleSet
from tocsin.processors.timeline import HUGE_MS, SUB, TOP_BIN, ZERO_BIN
from tocsin.processors.windows import baseline, bucket_index, trim, window_sum

SNAPSHOT_VERSION = 6
NONE: list[IncidentEvent] = []

StepKey = tuple[str, str, str]
SAMPLE_TRACES = 8  # trace ids an incident keeps as samples: its first errors', in log order
KNOWN_VERSIONS = 8  # versions remembered per (service, env): a rolling deploy's old and
# new instances interleave, and only a version not seen lately is a deploy
MAX_CLOSED = 10_000  # resolved incidents kept for people's actions (oldest resolved go first)


class PartitionDetector:
    """All detection state of one input partition. Not thread-safe; one owner."""

    def __init__(self, config: DetectorConfig, rules: RuleSet | None = None) -> None:
        self.config = config
        # Settings per family from the rules file (ADR 0022); without one, ``config``.
        self.rules = rules or RuleSet.empty()
        self._rules_hash = None if self.rules.is_empty else self.rules.hash
        # The rules file's per-step rules (ADR 0022, processors/step_detection.py)
        self._step_rules = bool(self.rules.error_rate or self.rules.latency)
        self.ruled_steps: dict[StepKey, list[Any]] = {}
        self.ruled_services: dict[str, list[StepKey]] = {}
        self.window_memo: dict[StepKey, Any] = {}  # a cache of step windows (not state)
        # [runtime]: (env, service, reason) -> [since, last, occurrences] of its stretch
        self.runtime: dict[tuple[str, str, str], list[int]] = {}
        self.families: dict[Family, FamilyState] = {}
        self.clocks: dict[str, int] = {}
        self.watermark_ms: int | None = None
        self.open_by_service: dict[str, set[Family]] = {}
        # [requests, errors, generation, duration histogram] by bucket index
        self.steps: dict[StepKey, dict[int, list[Any]]] = {}
        self.counters = Counters()
        self._dirty_families: set[tuple[Family, int]] = set()
        self._dirty_steps: set[tuple[StepKey, int]] = set()
        self._pending_families: dict[tuple[Family, int], FamilyWindow] = {}
        self._pending_steps: dict[tuple[StepKey, int], StepWindow] = {}
        self._idle_check_ms: int | None = None
        # Read on every event: plain attributes, not properties.
        self._generation = 0
        self._out: list[IncidentEvent] = []
        self.versions: dict[tuple[str, str], list[str]] = {}
        self.sources: dict[str, tuple[int, int]] = {}
        # Resolved incidents by id, for people's later actions, oldest resolved first
        self.closed: dict[str, tuple[Family, OpenIncident]] = {}
        self.timelines = IncidentTimelines(config.timeline, config.bucket_ms)  # ADR 0019
        self._bucket_ms = config.bucket_ms
        self._buckets_per_window = config.buckets_per_window

    # ------------------------------------------------------------------ feeding

    def observe(
        self, t_ms: int, env: str, service: str, step: str, family: Family | None,
        downstream: str | None = None, trace_id: str | None = None,
        duration_ms: float | None = None,
    ) -> list[IncidentEvent]:
        """Feed one counted wide event (not suppressed); ``family`` is None when it is ok.

        Returns the lifecycle changes it caused, usually none (a shared empty list: do not
        keep or change it)."""
        out = self._out
        self._advance(service, t_ms, out)
        self._advance_watermark(t_ms, out)
        self._count_step(t_ms, (env, service, step), family is not None, duration_ms)
        if family is not None:
            self._count_error(t_ms, family, downstream, trace_id, out)
        if out:
            self._out = []
            return self._stamped(out)
        return NONE

    def _stamped(self, out: list[IncidentEvent]) -> list[IncidentEvent]:
        """The changes with the rules file's hash, when there is one (ADR 0022)."""
        if self._rules_hash is None:
            return out
        return [replace(e, rules_hash=self._rules_hash) for e in out]

    def config_for(self, family: Family) -> DetectorConfig:
        """The settings that apply to a family: the rules file's, else the base."""
        return self.rules.detector_for(family.env, family.service, family.key, self.config)

    def version_seen(self, t_ms: int, env: str, service: str, version: str
                     ) -> VersionChanged | None:
        """Note a service's version; a version not among the last few seen for this
        (service, env) is a deploy. The first version ever seen is not one."""
        seen = self.versions.get((service, env))
        if seen is None:
            self.versions[(service, env)] = [version]
            return None
        if seen[-1] == version:
            return None
        if version in seen:
            seen.remove(version)
            seen.append(version)
            return None
        previous = seen[-1]
        seen.append(version)
        del seen[:-KNOWN_VERSIONS]
        return VersionChanged(service, env, version, previous, t_ms)

    def accept_source(self, source: str, position: tuple[int, int]) -> bool:
        """Whether an event republished from another topic is new here.

        Events translated from spans carry where they came from (span partition, and the
        record offset and event index there). One translator produces them in that order,
        so on this partition the positions of one source only grow; a batch translated
        again after a crash repeats positions already seen, and is dropped (ADR 0011)."""
        seen = self.sources.get(source)
        if seen is not None and position <= seen:
            self.counters.duplicates_dropped += 1
            return False
        self.sources[source] = position
        return True

    def tick(self, t_ms: int, service: str) -> list[IncidentEvent]:
        """Advance a service's clock without counting (a suppressed event still tells time)."""
        out: list[IncidentEvent] = []
        self.tick_into(service, t_ms, out)
        return self._stamped(out)

    def tick_into(self, service: str, t_ms: int, out: list[IncidentEvent]) -> None:
        self._advance(service, t_ms, out)
        self._advance_watermark(t_ms, out)

    def runtime_signal(self, signal: Any) -> list[IncidentEvent]:
        """A runtime signal the intake put on the events topic for the [runtime] rule
        (:mod:`tocsin.processors.runtime_detection`): the changes it causes."""
        return self._stamped(runtime_detection.observe(self, signal))

    # ------------------------------------------------------------------ rules

    def evaluate(self, fs: FamilyState, index: int) -> tuple[bool, int, float]:
        """(qualifies, window count, baseline) of the window ending at bucket ``index``."""
        if fs.step_rule is not None:
            return step_detection.evaluate(self, fs, index)
        cfg = fs.config or self.config
        width = cfg.buckets_per_window
        count = window_sum(fs.buckets, index, width)
        if count < cfg.min_count:
            return False, count, 0.0
        base = baseline(fs.buckets, index, width, cfg.baseline_windows)
        if base > 0 and count < cfg.min_lift * base:
            return False, count, base
        rate = cfg.min_rate_per_min
        if rate is not None and count * 60_000 < rate * cfg.window_ms:
            return False, count, base
        return True, count, base

    def holds(self, fs: FamilyState, index: int) -> bool:
        """Whether the window ending at bucket ``index`` is still at or above the re-arm
        thresholds (ADR 0002, hysteresis): REARM x MIN_COUNT errors, a lift of
        1 + REARM x (MIN_LIFT - 1) over the baseline, REARM x MIN_RATE. An active incident
        recovers, and a family whose incident resolved re-arms, only once it does not."""
        if fs.step_rule is not None:
            return step_detection.holds(self, fs, index)
        cfg = fs.config or self.config
        share = cfg.rearm_ratio
        width = cfg.buckets_per_window
        count = window_sum(fs.buckets, index, width)
        if count < share * cfg.min_count:
            return False
        base = baseline(fs.buckets, index, width, cfg.baseline_windows)
        if base > 0 and count < (1 + share * (cfg.min_lift - 1)) * base:
            return False
        rate = cfg.min_rate_per_min
        return rate is None or count * 60_000 >= share * rate * cfg.window_ms

    def _count_error(self, t_ms: int, family: Family, downstream: str | None,
                     trace_id: str | None, out: list[IncidentEvent]) -> None:
        fs = self.families.get(family)
        cfg = self.config_for(family) if fs is None else fs.config or self.config
        clock = self.clocks[family.service]
        now_index = bucket_index(clock, cfg.bucket_ms)
        index = bucket_index(t_ms, cfg.bucket_ms)
        if index <= now_index - cfg.retained_buckets:
            self.counters.late_dropped += 1
            return
        if fs is None:
            fs = self.new_family(family)
            if fs is None:
                return
        fs.buckets[index] = fs.buckets.get(index, 0) + 1
        fs.downstream = downstream
        self._dirty_families.add((family, index))
        fs.last_error_ms = max(fs.last_error_ms, t_ms)
        incident = fs.incident
        if trace_id and trace_id not in fs.traces:
            fs.traces.append(trace_id)
            del fs.traces[:-SAMPLE_TRACES]
            if incident is not None and len(incident.sample_traces) < SAMPLE_TRACES:
                incident.sample_traces.append(trace_id)
        if incident is not None:
            incident.error_count += 1
        qualifies, count, base = self.evaluate(fs, now_index)
        if incident is None:
            if not fs.armed and not self.holds(fs, now_index):
                fs.armed = True
            if qualifies and fs.armed:
                self.open_at(fs, clock, count, base, out)
            return
        incident.peak_count = max(incident.peak_count, count)
        if incident.status == "recovering" and qualifies:
            incident.status = "active"
            incident.status_since_ms = clock
            out.append(event(incident, family, "reopened", clock, count, base, fs.last_error_ms,
                             timeline=self.view(incident.incident_id)))

    def open_at(
        self, fs: FamilyState, clock: int, count: int, base: float, out: list[IncidentEvent]
    ) -> None:
        family = fs.family
        fs.incident = OpenIncident(
            incident_id=incident_id(family, clock),
            onset_ms=clock,
            status="active",
            seq=0,
            status_since_ms=clock,
            peak_count=count,
            error_count=count,
            downstream=fs.downstream,
            sample_traces=list(fs.traces),
        )
        self.open_by_service.setdefault(family.service, set()).add(family)
        self._idle_check_ms = None
        self.timelines.start(family, fs.incident.incident_id, clock)
        out.append(event(fs.incident, family, "opened", clock, count, base, fs.last_error_ms,
                         timeline=self.view(fs.incident.incident_id)))

    def _advance(self, service: str, t_ms: int, out: list[IncidentEvent]) -> None:
        """Move a service's clock forward; evaluate its open incidents at each bucket
        boundary crossed (the reference's 30 s tick, on event time) and at resolve time."""
        before = self.clocks.get(service)
        if before is not None and t_ms <= before:
            return
        self.clocks[service] = t_ms
        if before is None:
            return
        if service in self.timelines.due:
            self._complete_timelines(service, t_ms, out)
        if self._step_rules and service in self.ruled_services:
            step_detection.crossed(self, service, before, t_ms, out)
        open_families = self.open_by_service.get(service)
        if not open_families:
            return
        first = bucket_index(before, self._bucket_ms) + 1
        now_index = bucket_index(t_ms, self._bucket_ms)
        for family in sorted(open_families):
            fs = self.families[family]
            cfg = fs.config or self.config
            incident = fs.incident
            assert incident is not None
            if fs.step_rule is not None and now_index >= first:
                step_detection.moved(self, fs, incident, first - 1, now_index, out)
            if incident.held:
                continue  # reopened by a person: a person resolves it
            if incident.status == "active":
                # Not before MIN_ACTIVE since it (re)opened, and only below the re-arm
                # thresholds: a family hovering at its threshold stays one incident. A
                # window past the first boundary checked holds no bucket not seen there.
                settled = -(-(incident.status_since_ms + cfg.min_active_ms) // cfg.bucket_ms)
                start = max(first, settled)
                for index in range(start, min(now_index, start + cfg.buckets_per_window - 1)
                                   + 1):
                    if self.holds(fs, index):
                        continue
                    _, count, base = self.evaluate(fs, index)
                    at_ms = index * cfg.bucket_ms
                    incident.status = "recovering"
                    incident.status_since_ms = at_ms
                    out.append(event(incident, family, "recovering", at_ms, count, base,
                                     fs.last_error_ms,
                                     timeline=self.view(incident.incident_id)))
                    break
            if incident.status == "recovering":
                # The quiet stretch: RESOLVE_AFTER with the window below the re-arm level.
                # A boundary where it is back above restarts it (below MIN to reopen).
                quiet = incident.status_since_ms
                start = max(first, quiet // cfg.bucket_ms + 1)
                for index in range(start, min(now_index, start + cfg.buckets_per_window - 1)
                                   + 1):
                    at_ms = index * cfg.bucket_ms
                    if at_ms > quiet + cfg.resolve_after_ms:
                        break
                    if self.holds(fs, index):
                        quiet = at_ms
                incident.status_since_ms = quiet
                due = quiet + cfg.resolve_after_ms
                if t_ms >= due:
                    self._resolve(fs, incident, due, out)

    def _resolve(
        self, fs: FamilyState, incident: OpenIncident, at_ms: int, out: list[IncidentEvent]
    ) -> None:
        cfg = self.config
        incident.status = "resolved"
        incident.phase = "resolved"
        incident.status_since_ms = at_ms
        index = bucket_index(at_ms, cfg.bucket_ms)
        _, count, base = self.evaluate(fs, index)
        self.timeline_resolved(incident.incident_id, at_ms)
        out.append(event(incident, fs.family, "resolved", at_ms, count, base, fs.last_error_ms,
                         timeline=self.view(incident.incident_id)))
        self.close(fs, incident, count, base)
        fs.armed = not self.holds(fs, index)

    def close(self, fs: FamilyState, incident: OpenIncident, count: int, base: float
               ) -> None:
        """The family's incident resolved: kept by id for people's later actions."""
        incident.closed_at = [fs.last_error_ms, count, base]
        fs.incident = None
        services = self.open_by_service[fs.family.service]
        services.discard(fs.family)
        if not services:
            del self.open_by_service[fs.family.service]
        self._idle_check_ms = None
        self.closed.pop(incident.incident_id, None)
        self.closed[incident.incident_id] = (fs.family, incident)
        if len(self.closed) > MAX_CLOSED:
            del self.closed[next(iter(self.closed))]
            self.counters.closed_forgotten += 1

    # ------------------------------------------------------------------ people

    def act(self, command: Command) -> list[IncidentEvent] | Refusal:
        """Apply an operator action to the incident it names (ADR 0016): the lifecycle
        event it publishes (none when this action was applied before), or why not
        (:func:`tocsin.processors.detector_actions.act`)."""
        outcome = detector_actions.act(self, command)
        return outcome if isinstance(outcome, Refusal) else self._stamped(outcome)

    def rewatch(self) -> None:
        """The set of watched services changed: the next watermark checks them all."""
        self._idle_check_ms = None

    def _advance_watermark(self, t_ms: int, out: list[IncidentEvent]) -> None:
        """Move services with open incidents, or timelines not complete yet, that fell
        silent for longer than the grace."""
        if self.watermark_ms is not None and t_ms <= self.watermark_ms:
            return
        self.watermark_ms = t_ms
        if not self.open_by_service and not self.timelines.due:
            return
        horizon = t_ms - self.config.idle_grace_ms
        if self._idle_check_ms is not None and horizon <= self._idle_check_ms:
            return
        for service in sorted(self.open_by_service.keys() | self.timelines.due.keys()):
            if self.clocks[service] < horizon:
                self._advance(service, horizon, out)
        self._idle_check_ms = min(
            (self.clocks[s] for s in self.open_by_service.keys() | self.timelines.due.keys()),
            default=None)

    def _count_step(self, t_ms: int, key: StepKey, failed: bool,
                    duration_ms: float | None) -> None:
        """The hottest line of Tocsin: one call per wide event, kept to dict lookups."""
        bucket_ms = self._bucket_ms
        index = t_ms // bucket_ms
        if index <= self.clocks[key[1]] // bucket_ms - self._buckets_per_window:
            self.counters.late_dropped += 1
            return
        buckets = self.steps.get(key)
        if buckets is None:
            buckets = self.steps[key] = {}
            if self._step_rules:
                step_detection.register(self, key)
        cell = buckets.get(index)
        if cell is None:
            cell = buckets[index] = [0, 0, -1, {}]
        if cell[2] != self._generation:  # [requests, errors, generation last marked dirty]
            cell[2] = self._generation
            self._dirty_steps.add((key, index))
        cell[0] += 1
        if failed:
            cell[1] += 1
        if duration_ms is not None:  # timeline.duration_bin, inlined
            if 0.0 < duration_ms < HUGE_MS:
                mantissa, exponent = frexp(duration_ms)
                b = exponent * SUB + int(mantissa * 2 * SUB) - SUB
            else:
                b = TOP_BIN if duration_ms >= HUGE_MS else ZERO_BIN
            hist = cell[3]
            hist[b] = hist.get(b, 0) + 1

    # ------------------------------------------------------------------ timelines

    def view(self, incident_id: str, complete: bool = False) -> dict[str, Any] | None:
        drawn = self.timelines.drawn.get(incident_id)
        if drawn is None:
            return None
        family = drawn[0]
        fs = self.families.get(family)
        step = self.steps.get((family.env, family.service, family.step))
        errors = None if fs is None else step_detection.errors_of(self, fs)
        timeline = self.timelines.draw(incident_id, self.clocks[family.service], errors, step)
        return None if timeline is None else timeline.view(complete)

    def timeline_resolved(self, incident_id: str, at_ms: int) -> None:
        if self.timelines.resolved(incident_id, at_ms):
            self._idle_check_ms = None  # its service is watched until it completes

    def _complete_timelines(self, service: str, t_ms: int, out: list[IncidentEvent]
                            ) -> None:
        """Publish the timelines of the service whose window after resolution is over."""
        for drawn_id, family, due_ms in self.timelines.complete(service, t_ms):
            view = self.view(drawn_id, complete=True)
            self.timelines.forget(drawn_id)
            kept = self.closed.get(drawn_id)
            if kept is None:  # forgotten (MAX_CLOSED): nothing left to describe it
                continue
            incident = kept[1]
            last_error_ms, count, base = incident.closed_at or (incident.onset_ms, 0, 0.0)
            out.append(event(incident, family, "timeline", due_ms, count, base, last_error_ms,
                             timeline=view))

    # ------------------------------------------------------------------ bounds

    def new_family(self, family: Family) -> FamilyState | None:
        if len(self.families) >= self.config.max_families:
            self.evict_idle()
            if len(self.families) >= self.config.max_families:
                self.counters.families_overflowed += 1
                return None
        fs = self.families[family] = FamilyState(family, config=self.config_for(family))
        return fs

    def evict_idle(self) -> None:
        """Forget families with no open incident whose every bucket fell out of reach, and
        step buckets past the lateness horizon. Invisible in the output: an evicted family
        is indistinguishable from a new one."""
        cfg = self.config
        self._flush_dirty()
        for drawn_id in list(self.timelines.drawn):  # before their buckets go
            self.view(drawn_id)
        for family in [f for f, fs in self.families.items() if self._evictable(fs)]:
            del self.families[family]
            self.counters.families_evicted += 1
        for key, buckets in list(self.steps.items()):
            kept = step_detection.retained(self, key) if self.ruled_steps.get(key) \
                else cfg.buckets_per_window
            trim(buckets, bucket_index(self.clocks[key[1]], cfg.bucket_ms) - kept + 1)
            if not buckets:
                del self.steps[key]
        for fs in self.families.values():
            horizon = bucket_index(self.clocks[fs.family.service], cfg.bucket_ms)
            trim(fs.buckets, horizon - (fs.config or cfg).retained_buckets + 1)
        step_detection.forget_stale(self)
        persistent = self.rules.runtime.persistent_after_ms
        for key in [k for k, (_, last, _) in self.runtime.items()
                    if self.clocks.get(k[1], last) - last > persistent]:
            del self.runtime[key]  # a stretch over: the next occurrence starts a new one
        if self.watermark_ms is not None:
            kept_from = self.watermark_ms - CLOSED_KEPT_MS
            for closed_id in [k for k, (_, inc) in self.closed.items()
                              if inc.status_since_ms < kept_from]:
                del self.closed[closed_id]
                self.counters.closed_forgotten += 1

    def _evictable(self, fs: FamilyState) -> bool:
        clock = self.clocks[fs.family.service]
        return fs.incident is None and \
            clock - fs.last_error_ms >= (fs.config or self.config).evict_after_ms

    # ------------------------------------------------------------------ outputs

    def _flush_dirty(self) -> None:
        """Turn changed buckets into rows before anything may forget them."""
        bucket_ms = self.config.bucket_ms
        families = self.families
        pending = self._pending_families
        for f, i in self._dirty_families:
            pending[(f, i)] = FamilyWindow(f.env, f.key, f.service, f.step, f.error_code,
                                           i * bucket_ms, families[f].buckets[i])
        for k, i in self._dirty_steps:
            cell = self.steps[k][i]
            self._pending_steps[(k, i)] = StepWindow(*k, i * bucket_ms, cell[0], cell[1])
        self._dirty_families.clear()
        self._dirty_steps.clear()
        self._generation += 1

    def drain_windows(self) -> tuple[list[FamilyWindow], list[StepWindow]]:
        """The bucket counts changed since the last drain, as absolute values, sorted."""
        self._flush_dirty()
        fams = [self._pending_families[k] for k in sorted(self._pending_families)]
        steps = [self._pending_steps[k] for k in sorted(self._pending_steps)]
        self._pending_families.clear()
        self._pending_steps.clear()
        return fams, steps

    def open_incidents(self) -> list[tuple[Family, OpenIncident]]:
        return [
            (fs.family, fs.incident)
            for fs in sorted(self.families.values(), key=lambda s: s.family)
            if fs.incident is not None
        ]

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state; :meth:`restore` of it gives an equal detector."""
        return {"v": SNAPSHOT_VERSION, "config": self.fingerprint(),
                **detector_snapshot.dump(self)}

    def fingerprint(self) -> str:
        """The settings' fingerprint, and the rules file's when there is one."""
        base = self.config.fingerprint()
        return base if self.rules.is_empty else f"{base}-r{self.rules.fingerprint()}"

    @classmethod
    def restore(cls, config: DetectorConfig, snap: dict[str, Any],
                rules: RuleSet | None = None) -> PartitionDetector:
        det = cls(config, rules)
        if snap.get("v") != SNAPSHOT_VERSION or snap.get("config") != det.fingerprint():
            raise ValueError("checkpoint was written by another snapshot version or detector "
                             "settings; replay the input with a new state name instead of "
                             "misreading it")
        detector_snapshot.load(det, snap)
        for fs in det.families.values():
            fs.config = det.config_for(fs.family)
            fs.step_rule = step_detection.rule_for(det, fs.family)
        if det._step_rules:
            for key in sorted(det.steps):
                step_detection.register(det, key)
        return det
