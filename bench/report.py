"""The figures of one run: one JSON-able dict, and its text rendering with the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bare import BareResult
from .burst import BurstResult
from .intake import CONCURRENCY, LoadResult
from .latency import LatencyResult
from .queries import CLIENTS, HEAVY, QueriesPhase, QueryRun
from .quix import QuixResult
from .replay import TARGET_REPLAY_VS_LIVE, ReplayResult, ReplayRun, compare_families
from .rules import RulesRun
from .scale import (
    RESTART_TAIL,
    TARGET_RESTART_RATIO,
    TARGET_SPAN_RATIO,
    TARGET_TWO_WORKERS,
    RestartRun,
    ScaleRun,
    SpanWorkersRun,
)
from .spans import SPANS_PER_TRACE, TRACES_PER_RECORD, SpansRun
from .worker import Throughput
from .workload import PARTITIONS, SERVICES, Workload

TARGET_RATIO_VS_BARE = 0.5  # the --role all worker (b), and the span loop (f), vs bare
TARGET_EVENTS_VS_BARE = 0.6  # a --role detect worker's event path vs bare (ADR 0015)
TARGET_RATIO_VS_QUIX = 1.0
TARGET_P99_MS = 1000.0
BUSY_LOAD = 0.7  # 1-minute load average above which other work skews the figures


@dataclass(frozen=True)
class TocsinRun:
    """What (b) and the latency phase measured on one worker."""

    throughput: Throughput
    settle_s: float | None  # from the N-th event counted until the worker settled
    latency: LatencyResult
    peak_rss_mb: float | None
    metrics: dict[str, Any]
    exit_code: int | None
    # Records on the projected topics once the worker settled, minus before it started
    # (None when it did not settle or they could not be read).
    projected_records: int | None = None
    # The families of the incidents in its DuckDB at the end, once settled again (for (i);
    # None when not read).
    incident_families: tuple[str, ...] | None = None


@dataclass(frozen=True)
class IntakeRun:
    """(d) HTTP intake, Tocsin and bare, and (e) the report burst; None when not run."""

    bare: LoadResult | None = None
    tocsin: LoadResult | None = None
    burst: BurstResult | None = None
    skipped: str | None = None
    rss_after_mb: float | None = None  # the worker's peak RSS once (e) and (d) ran


@dataclass(frozen=True)
class Run:
    workload: Workload
    bare: BareResult
    tocsin: TocsinRun
    quix: QuixResult | None
    intake: IntakeRun = IntakeRun(skipped="--no-intake")
    spans: SpansRun = field(default_factory=lambda: SpansRun(skipped="--no-spans"))
    queries: QueriesPhase = field(
        default_factory=lambda: QueriesPhase(skipped="--no-queries"))
    scale: ScaleRun = field(default_factory=lambda: ScaleRun(skipped="--no-scale"))
    # (b2) the same events on a --role detect worker: the event path of one worker of
    # the scale-out layout (no projection in the process); None when it failed
    detect: Throughput | None = None
    # (b3) (b2) under a rules file: latency and error-rate rules on every step
    rules: RulesRun = field(default_factory=lambda: RulesRun(skipped="--no-rules"))
    # (i) the events topic exported, then tocsin replay on it
    replay: ReplayRun = field(default_factory=lambda: ReplayRun(skipped="--no-replay"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _settled_rate(t: TocsinRun) -> float | None:
    """events/s counting the settle time too: until every effect was published and
    projected, not only counted."""
    if t.settle_s is None:
        return None
    return t.throughput.events / (t.throughput.seconds + t.settle_s)


def _targets(r: dict[str, Any]) -> dict[str, bool | None]:
    vs_quix = r["ratio_vs_quix"]
    p99 = r["p99_detect_ms"]
    return {
        "ratio_vs_bare": r["ratio_vs_bare"] is not None
        and r["ratio_vs_bare"] >= TARGET_RATIO_VS_BARE,
        "detect_ratio_vs_bare": None if r["detect_ratio_vs_bare"] is None
        else r["detect_ratio_vs_bare"] >= TARGET_EVENTS_VS_BARE,
        "ahead_of_quix": None if vs_quix is None else vs_quix > TARGET_RATIO_VS_QUIX,
        "p99_detect": p99 is not None and p99 <= TARGET_P99_MS and r["detect_missed"] == 0,
        "spans_ratio_vs_bare": None if r["spans_ratio_vs_bare"] is None
        else r["spans_ratio_vs_bare"] >= TARGET_RATIO_VS_BARE,
        "restart_10x_within_1_5x": None if not r["restart_ratio_10x_vs_1x"]
        else max(r["restart_ratio_10x_vs_1x"], 1 / r["restart_ratio_10x_vs_1x"])
        <= TARGET_RESTART_RATIO,
        "spans_2_workers_1_5x": None if r["spans_workers_ratio"] is None
        else r["spans_workers_ratio"] >= TARGET_TWO_WORKERS,
        "span_ratio_vs_bare_decode": None if r["span_ratio_vs_bare_decode"] is None
        else r["span_ratio_vs_bare_decode"] >= TARGET_SPAN_RATIO,
        "replay_ratio_vs_live": None if r["replay_ratio_vs_live"] is None
        else r["replay_ratio_vs_live"] >= TARGET_REPLAY_VS_LIVE,
    }


def _load_dict(prefix: str, r: LoadResult | None) -> dict[str, Any]:
    return {
        f"{prefix}_signals_per_s": _round(r.signals_per_s) if r else None,
        f"{prefix}_requests_per_s": _round(r.requests_per_s) if r else None,
        f"{prefix}_requests": r.requests if r else None,
        f"{prefix}_signals": r.signals if r else None,
        f"{prefix}_p50_ms": _round(r.p(50), 2) if r else None,
        f"{prefix}_p99_ms": _round(r.p(99), 2) if r else None,
        f"{prefix}_errors": dict(r.errors) if r else None,
    }


def _intake_dict(i: IntakeRun) -> dict[str, Any]:
    b = i.burst
    result: dict[str, Any] = {
        "intake_skipped": i.skipped,
        "intake_connections": CONCURRENCY,
        **_load_dict("intake", i.tocsin),
        **_load_dict("bare_intake", i.bare),
        "peak_rss_after_intake_mb": _round(i.rss_after_mb),
        "intake_ratio_vs_bare": _ratio(i.tocsin.signals_per_s if i.tocsin else None,
                                       i.bare.signals_per_s if i.bare else None),
        "report_burst_signals": b.signals if b else None,
        "report_burst_versions": b.versions if b else None,
        "report_versions_per_s": _round(b.versions_per_s, 2) if b else None,
        "report_burst_seconds": _round(b.burst_s, 2) if b else None,
        "report_final_after_last_ack_ms": _round(b.final_after_ack_ms) if b else None,
        "report_burst_complete": b.complete if b else None,
        "report_burst_post_seconds": _round(b.post.seconds, 2) if b else None,
        "report_burst_post_p99_ms": _round(b.post.p(99), 1) if b else None,
        "report_burst_post_errors": dict(b.post.errors) if b else None,
    }
    return result


def _spans_dict(f: SpansRun) -> dict[str, Any]:
    w, m, a = f.workload, f.worker_metrics or {}, f.assembler or {}
    bare = f.bare.spans_per_s if f.bare else None
    parse = f.bare_parse.spans_per_s if f.bare_parse else None
    tocsin = f.tocsin.spans_per_s if f.tocsin else None
    worker = f.worker.events_per_s if f.worker else None
    return {
        "spans_skipped": f.skipped,
        "spans": w.spans if w else None,
        "span_traces": w.traces if w else None,
        "span_records": w.records if w else None,
        "span_failing_traces": w.failing_traces if w else None,
        "span_bytes": w.bytes if w else None,
        "spans_per_s_bare": _round(bare),
        "spans_per_s_bare_parse": _round(parse),
        "spans_per_s_tocsin": _round(tocsin),
        "spans_ratio_vs_bare": _ratio(tocsin, bare),
        "spans_ratio_vs_bare_parse": _ratio(tocsin, parse),
        "span_wide_events": f.tocsin.events if f.tocsin else None,
        "spans_per_s_worker": _round(worker),
        "spans_worker_ratio_vs_bare": _ratio(worker, bare),
        "spans_worker_error": f.worker_error,
        "spans_worker_rejected": m.get("spans_rejected"),
        "spans_worker_dead_letters": m.get("dead_letters"),
        "assembler_rss_mb_10k_traces": a.get("rss_growth_mb"),
        "assembler_traced_mb_10k_traces": a.get("traced_mb"),
        "assembler_spans_10k_traces": a.get("spans"),
    }


def _query_runs_dict(prefix: str, runs: tuple[QueryRun, ...]) -> dict[str, Any]:
    lags = [r.lag_s for r in runs]
    return {
        f"{prefix}_events_per_s": _round(QueriesPhase.mean_rate(runs)),
        f"{prefix}_events_per_s_each": [_round(r.throughput.events_per_s) for r in runs],
        f"{prefix}_projection_lag_s": _round(QueriesPhase.mean_lag(runs), 2),
        f"{prefix}_projection_lag_s_each": [_round(x, 2) for x in lags],
        f"{prefix}_rows_final_each": [r.rows_final for r in runs],
        f"{prefix}_rows_at_n_each": [r.rows_at_n for r in runs],
        f"{prefix}_peak_rss_mb": _round(max((r.peak_rss_mb or 0 for r in runs), default=0))
        if runs else None,
    }


def _queries_dict(g: QueriesPhase) -> dict[str, Any]:
    answers: dict[str, int] = {}
    for r in g.heavy:
        for k, v in r.statuses.items():
            answers[str(k)] = answers.get(str(k), 0) + v
    return {
        "queries_skipped": g.skipped,
        "queries_clients": CLIENTS,
        **_query_runs_dict("queries_alone", g.alone),
        **_query_runs_dict("queries_heavy", g.heavy),
        "queries_events_ratio": _ratio(QueriesPhase.mean_rate(g.heavy),
                                       QueriesPhase.mean_rate(g.alone)),
        "queries_lag_ratio": _ratio(QueriesPhase.mean_lag(g.heavy),
                                    QueriesPhase.mean_lag(g.alone)),
        "queries_answers": dict(sorted(answers.items())) if g.heavy else None,
        "queries_worker_stats": [r.queries for r in g.heavy] if g.heavy else None,
    }


def _per_1k(records: int | None, inputs: int | None) -> float | None:
    return round(records / (inputs / 1000), 3) if records is not None and inputs else None


def _restart_dict(suffix: str, r: RestartRun | None) -> dict[str, Any]:
    return {
        f"restart_s_{suffix}": _round(r.caught_up_s, 2) if r else None,
        f"restart_ready_s_{suffix}": _round(r.ready_s, 2) if r else None,
        f"restart_events_{suffix}": r.events if r else None,
        f"restart_event_hours_{suffix}": r.event_hours if r else None,
        f"restart_first_settle_s_{suffix}": _round(r.first_settle_s, 2) if r else None,
        f"restart_changelog_records_{suffix}": r.changelog_records if r else None,
        f"restart_window_records_{suffix}": r.window_records if r else None,
        f"restart_incident_records_{suffix}": r.incidents if r else None,
    }


def _workers_dict(suffix: str, w: SpanWorkersRun | None) -> dict[str, Any]:
    return {
        f"spans_per_s_{suffix}": _round(w.spans_per_s) if w else None,
        f"spans_{suffix}_seconds": _round(w.seconds, 2) if w else None,
        f"spans_{suffix}_each": w.spans_in_each if w else None,
        f"spans_{suffix}_join_s": _round(w.join_s, 1) if w else None,
        f"spans_{suffix}_lifecycle": [m.get("lifecycle") for m in w.metrics] if w else None,
        f"spans_{suffix}_stages": [m.get("stages") for m in w.metrics] if w else None,
    }


def _scale_dict(h: ScaleRun, t: TocsinRun, events: int) -> dict[str, Any]:
    one = h.spans_1.spans_per_s if h.spans_1 else None
    two = h.spans_2.spans_per_s if h.spans_2 else None
    r1, r10 = h.restart_1x, h.restart_10x
    return {
        "scale_skipped": h.skipped,
        "scale_errors": dict(h.errors) or None,
        "scale_load_avg_1m_at_start": _round(h.load_1m, 2),
        "restart_tail_events": None if h.skipped else RESTART_TAIL,
        **_restart_dict("1x", r1),
        **_restart_dict("10x", r10),
        "restart_ratio_10x_vs_1x": _ratio(r10.caught_up_s if r10 else None,
                                          r1.caught_up_s if r1 else None),
        "projected_records_main": t.projected_records,
        "projected_per_1k_events": _per_1k(t.projected_records, events),
        "projected_records_spans": h.spans_1.projected if h.spans_1 else None,
        "projected_per_1k_spans": _per_1k(h.spans_1.projected if h.spans_1 else None,
                                          h.spans_1.spans if h.spans_1 else None),
        **_workers_dict("1_worker", h.spans_1),
        **_workers_dict("2_workers", h.spans_2),
        "spans_workers_ratio": _ratio(two, one),
        "span_bare_decode_per_s": _round(h.bare_decode_spans_per_s),
        "span_ratio_vs_bare_decode": _ratio(one, h.bare_decode_spans_per_s),
    }


def _rules_dict(run: Run) -> dict[str, Any]:
    b3 = run.rules
    rate = b3.throughput.events_per_s if b3.throughput else None
    return {
        "rules_skipped": b3.skipped,
        "rules_error": b3.error,
        "rules_events_per_s": _round(rate),
        "rules_ratio_vs_detect": _ratio(rate, run.detect.events_per_s if run.detect
                                        else None),
        "rules_lifecycle": dict(b3.lifecycle) if b3.throughput else None,
    }


def _one_replay(suffix: str, r: ReplayResult | None, live: float) -> dict[str, Any]:
    return {
        f"replay_{suffix}events_per_s": _round(r.events_per_s) if r else None,
        f"replay_{suffix}ratio_vs_live": _ratio(r.events_per_s if r else None, live),
        f"replay_{suffix}seconds": _round(r.seconds, 3) if r else None,
        f"replay_{suffix}wall_seconds": _round(r.wall_s, 2) if r else None,
        f"replay_{suffix}jobs": r.jobs if r else None,
        f"replay_{suffix}incidents": len(r.families) if r else None,
    }


def _replay_dict(run: Run) -> dict[str, Any]:
    i, live = run.replay, run.tocsin.throughput.events_per_s
    e, r, r1 = i.export, i.replay, i.replay_1
    families = run.tocsin.incident_families
    first = r or r1
    match = compare_families(first.families if first else None, families)
    return {
        "replay_skipped": i.skipped,
        "replay_errors": dict(i.errors) or None,
        "export_records": e.records if e else None,
        "export_files": e.files if e else None,
        "export_bytes": e.bytes if e else None,
        "export_seconds": _round(e.seconds, 2) if e else None,
        "export_events_per_s": _round(e.records / e.seconds) if e and e.seconds else None,
        "replay_events": first.events if first else None,
        "replay_dead_letters": first.dead_letters if first else None,
        **_one_replay("", r, live),
        **_one_replay("1_job_", r1, live),
        "replay_jobs_speedup": _ratio(r.events_per_s if r else None,
                                      r1.events_per_s if r1 else None),
        "replay_jobs_agree": None if not (r and r1) else r.families == r1.families,
        "live_incidents": None if families is None else len(families),
        "replay_incidents_match": match["match"],
        "replay_incidents_only_replay": match["only_replay"],
        "replay_incidents_only_live": match["only_live"],
    }


def to_dict(run: Run) -> dict[str, Any]:
    w, quix, t = run.workload, run.quix, run.tocsin
    quix_rate = quix.events_per_s if quix and not quix.skipped else None
    result: dict[str, Any] = {
        "events": w.events,
        "event_bytes": w.bytes,
        "services": len(SERVICES),
        "families": w.families,
        "partitions": PARTITIONS,
        "bare_events_per_s": _round(run.bare.events_per_s),
        "tocsin_events_per_s": _round(t.throughput.events_per_s),
        "tocsin_settle_s": _round(t.settle_s),
        "tocsin_settled_events_per_s": _round(_settled_rate(t)),
        "quix_events_per_s": _round(quix_rate),
        "quix_version": quix.version if quix else None,
        "quix_skipped": (quix.skipped if quix else "--no-quix"),
        "ratio_vs_bare": _ratio(t.throughput.events_per_s, run.bare.events_per_s),
        "detect_events_per_s": _round(run.detect.events_per_s if run.detect else None),
        "detect_ratio_vs_bare": _ratio(run.detect.events_per_s if run.detect else None,
                                       run.bare.events_per_s),
        "ratio_vs_quix": _ratio(t.throughput.events_per_s, quix_rate),
        "p50_detect_ms": _round(t.latency.percentile(50)),
        "p99_detect_ms": _round(t.latency.percentile(99)),
        "detect_samples_ms": [round(x, 1) for x in t.latency.samples_ms],
        "detect_missed": t.latency.missed,
        "peak_rss_mb": _round(t.peak_rss_mb),
        "replay_spikes_expected": len(w.spikes),
        "replay_spikes_opened": len(t.latency.replay_opened),
        "unexpected_opened": [":".join(k) for k in t.latency.unexpected_opened],
        "worker_lifecycle": t.metrics.get("lifecycle", {}),
        "worker_dead_letters": t.metrics.get("dead_letters"),
        "worker_rows_projected": t.metrics.get("rows_projected"),
        "worker_signals_accepted": t.metrics.get("signals_accepted"),
        "worker_reports_published": t.metrics.get("reports_published"),
        "worker_exit_code": t.exit_code,
        **_intake_dict(run.intake),
        **_spans_dict(run.spans),
        **_queries_dict(run.queries),
        **_scale_dict(run.scale, t, w.events),
        **_rules_dict(run),
        **_replay_dict(run),
    }
    result["targets_met"] = _targets(result)
    return result


def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: "n/a"}[ok]


def _num(x: float | None, unit: str = "", fmt: str = ",.0f") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def _throughput_lines(r: dict[str, Any]) -> list[str]:
    quix_name = f"quixstreams {r['quix_version'] or ''}".rstrip() + " (group_by + 30 s window)"
    quix = (_num(r["quix_events_per_s"], " ev/s") if r["quix_events_per_s"] is not None
            else f"skipped ({r['quix_skipped']})")
    rules = (_num(r["rules_events_per_s"], " ev/s") if r["rules_events_per_s"] is not None
             else f"skipped ({r['rules_skipped']})" if r["rules_skipped"]
             else f"failed ({r['rules_error']})")
    return [
        f"(a) {'bare aiokafka getmany + WideEventDecoder':<46}"
        f"{_num(r['bare_events_per_s'], ' ev/s'):>13}",
        f"(b) {'Tocsin worker (run --role all)':<46}"
        f"{_num(r['tocsin_events_per_s'], ' ev/s'):>13}",
        f"    {'... counting its settle time too':<46}"
        f"{_num(r['tocsin_settled_events_per_s'], ' ev/s'):>13}",
        f"(b2) {'Tocsin worker (run --role detect)':<45}"
        f"{_num(r['detect_events_per_s'], ' ev/s'):>13}",
        f"(b3) {'... + latency, error-rate rules, every step':<45}{rules:>13}",
        f"(c) {quix_name:<46}{quix:>13}",
    ]


def _target_lines(r: dict[str, Any]) -> list[str]:
    t = r["targets_met"]
    return [
        f"Tocsin / bare         {_num(r['ratio_vs_bare'], '', '.2f'):>9}   "
        f"target >= {TARGET_RATIO_VS_BARE}          {_mark(t['ratio_vs_bare'])}",
        f"detect worker / bare  {_num(r['detect_ratio_vs_bare'], '', '.2f'):>9}   "
        f"target >= {TARGET_EVENTS_VS_BARE}          {_mark(t['detect_ratio_vs_bare'])}"
        f"   ({_num(r['detect_events_per_s'], ' ev/s')}: --role detect, events only)",
        f"rules / no rules      {_num(r['rules_ratio_vs_detect'], '', '.2f'):>9}   "
        f"(b3) / (b2), no target: the cost of latency and error-rate rules on every step"
        + (f"; lifecycle {r['rules_lifecycle']}" if r["rules_lifecycle"] else ""),
        f"Tocsin / quixstreams  {_num(r['ratio_vs_quix'], '', '.2f'):>9}   "
        f"target > 1 (ahead)     {_mark(t['ahead_of_quix'])}",
        f"detect p50            {_num(r['p50_detect_ms'], ' ms', '.1f'):>9}",
        f"detect p99            {_num(r['p99_detect_ms'], ' ms', '.1f'):>9}   "
        f"target <= {TARGET_P99_MS:.0f} ms     {_mark(t['p99_detect'])}"
        f"  ({len(r['detect_samples_ms'])} live spikes, {r['detect_missed']} missed)",
        f"peak RSS of worker    {_num(r['peak_rss_mb'], ' MB', '.1f'):>9}",
        f"worker settle time    {_num(r['tocsin_settle_s'], ' s', '.1f'):>9}   "
        "(N-th event counted -> checkpoints and DuckDB rows quiet)",
    ]


def _intake_lines(r: dict[str, Any]) -> list[str]:
    if r["intake_skipped"]:
        return [f"(d) HTTP intake and (e) report burst: skipped ({r['intake_skipped']})"]

    def row(name: str, p: str) -> str:
        errors = r[f"{p}_errors"]
        return (f"{name:<46}{_num(r[f'{p}_signals_per_s'], ' sig/s'):>14}"
                f"{_num(r[f'{p}_requests_per_s'], ' req/s'):>13}   p50 "
                f"{_num(r[f'{p}_p50_ms'], ' ms', '.1f')}, "
                f"p99 {_num(r[f'{p}_p99_ms'], ' ms', '.1f')}"
                + (f"   errors {errors}" if errors else ""))

    lines = [
        f"(d) HTTP intake, {r['intake_connections']} connections on loopback "
        "(3 native : 1 Alertmanager group of 2 alerts)",
        row("    bare aiohttp + orjson + aiokafka ack", "bare_intake"),
        row("    Tocsin POST /v1/signals", "intake"),
        f"    Tocsin intake / bare {_num(r['intake_ratio_vs_bare'], '', '.2f'):>9}   "
        f"({r['intake_signals'] or 0:,} signals in {r['intake_requests'] or 0:,} requests)",
    ]
    n = r["report_burst_signals"]
    if n is None:
        return [*lines, "(e) report burst: n/a"]
    post_errors = r["report_burst_post_errors"]
    return [*lines,
            f"(e) report burst: {n:,} alerts POSTed on one incident in "
            f"{_num(r['report_burst_post_seconds'], ' s', '.1f')} (POST p99 "
            f"{_num(r['report_burst_post_p99_ms'], ' ms', '.0f')}"
            + (f", errors {post_errors}" if post_errors else "") + ")",
            f"    report versions       {r['report_burst_versions']:>9,}   "
            f"{_num(r['report_versions_per_s'], ' versions/s', '.1f')} over "
            f"{_num(r['report_burst_seconds'], ' s', '.1f')} (first POST -> final version)",
            f"    final version         {_num(r['report_final_after_last_ack_ms'], ' ms'):>9}   "
            "after the last POST's 202"
            + ("" if r["report_burst_complete"] else "   INCOMPLETE: final version not seen")]


def _replay_lines(r: dict[str, Any]) -> list[str]:
    if r["replay_skipped"]:
        return [f"(i) replay vs the live worker: skipped ({r['replay_skipped']})"]
    t = r["targets_met"]

    def row(name: str, suffix: str) -> str:
        rate = r[f"replay_{suffix}events_per_s"]
        if rate is None:
            return f"    {name:<46}{'n/a':>13}"
        return (f"    {name:<46}{_num(rate, ' ev/s'):>13}   "
                f"({r[f'replay_{suffix}seconds']:.2f} s replaying, "
                f"{r[f'replay_{suffix}wall_seconds']:.1f} s wall; "
                f"{r[f'replay_{suffix}incidents']} incidents)")

    live = r["live_incidents"]
    replayed = (r["replay_incidents"] if r["replay_incidents"] is not None
                else r["replay_1_job_incidents"])  # the one compared with (b)'s
    if r["replay_incidents_match"] is None:
        check = "not compared"
    elif r["replay_incidents_match"]:
        check = "the same families"
    else:
        check = (f"MISMATCH: only replayed {r['replay_incidents_only_replay']}, "
                 f"only live {r['replay_incidents_only_live']}")
    size = r["export_bytes"]
    errors = r["replay_errors"]
    return [
        f"(i) tocsin export of the events topic as (b) left it: "
        f"{_num(r['export_records'])} events in {_num(r['export_seconds'], ' s', '.2f')} "
        f"({_num(r['export_events_per_s'], ' ev/s')}), "
        f"{'n/a' if size is None else f'{size / 1e6:.1f} MB'} in "
        f"{_num(r['export_files'])} files; then python -m tocsin replay DIR --json "
        "(events / its own seconds: process start excluded)",
        row(f"replay --jobs {r['replay_jobs'] or '?'} (default: the CPUs)", ""),
        row("replay --jobs 1", "1_job_"),
        f"    {'(b) live worker (run --role all)':<46}"
        f"{_num(r['tocsin_events_per_s'], ' ev/s'):>13}",
        f"    replay / live         {_num(r['replay_ratio_vs_live'], '', '.2f'):>9}   "
        f"target >= {TARGET_REPLAY_VS_LIVE}          {_mark(t['replay_ratio_vs_live'])}"
        f"   --jobs 1 / live {_num(r['replay_1_job_ratio_vs_live'], '', '.2f')}; "
        f"default / --jobs 1 {_num(r['replay_jobs_speedup'], '', '.2f')}",
        f"    incidents: replayed {_num(replayed)}, (b)'s DuckDB {_num(live)}: {check}"
        + ("" if r["replay_jobs_agree"] in (None, True)
           else "; --jobs 1 and the default DISAGREE"),
        *([f"    failed: {errors}"] if errors else []),
    ]


def _spans_lines(r: dict[str, Any]) -> list[str]:
    if r["spans_skipped"]:
        return [f"(f) OTLP spans: skipped ({r['spans_skipped']})"]
    worker = (_num(r["spans_per_s_worker"], " spans/s") if r["spans_per_s_worker"]
              is not None else f"n/a ({r['spans_worker_error']})")
    ratio = r["spans_ratio_vs_bare"]
    return [
        f"(f) OTLP spans: {r['spans']:,} spans, {r['span_traces']:,} traces "
        f"({r['span_failing_traces']} failing), {r['span_records']:,} otlp_proto records "
        f"of {TRACES_PER_RECORD * SPANS_PER_TRACE} spans "
        f"({r['span_bytes'] / 1e6:.1f} MB) on otlp_spans",
        f"    {'bare parse: getmany + TracesData.FromString':<46}"
        f"{_num(r['spans_per_s_bare_parse'], ' spans/s'):>16}",
        f"    {'bare decode: + every span into Python values':<46}"
        f"{_num(r['spans_per_s_bare'], ' spans/s'):>16}",
        f"    {'Tocsin decode_batch + wide_events':<46}"
        f"{_num(r['spans_per_s_tocsin'], ' spans/s'):>16}   "
        f"({r['span_wide_events'] or 0:,} wide events)",
        f"    {'Tocsin worker span intake (--role detect)':<46}{worker:>16}   "
        f"(/healthz spans_in; decode, map, publish)",
        f"    Tocsin / bare decode {_num(ratio, '', '.3f'):>9}   target >= "
        f"{TARGET_RATIO_VS_BARE}          {_mark(r['targets_met']['spans_ratio_vs_bare'])}"
        f"   worker / bare decode {_num(r['spans_worker_ratio_vs_bare'], '', '.3f')}",
        f"    Tocsin / bare parse  {_num(r['spans_ratio_vs_bare_parse'], '', '.3f'):>9}   "
        "(no target: the parse loop never brings a span into Python; Tocsin reads each "
        "span's fields, normalizes them and maps entry spans to wide events)",
        f"    assembler RSS, 10,000 traces in flight "
        f"{_num(r['assembler_rss_mb_10k_traces'], ' MB', '.1f'):>9}   "
        f"(TraceAssembler(idle_ms=10**9), {r['assembler_spans_10k_traces'] or 0:,} spans; "
        f"tracemalloc {_num(r['assembler_traced_mb_10k_traces'], ' MB', '.1f')})",
    ]


def _queries_lines(r: dict[str, Any]) -> list[str]:
    if r["queries_skipped"]:
        return [f"(g) detection and projection under heavy queries: skipped "
                f"({r['queries_skipped']})"]

    def row(name: str, p: str) -> str:
        each = ", ".join(_num(x) for x in r[f"{p}_events_per_s_each"])
        lags = ", ".join(_num(x, "", ".2f") for x in r[f"{p}_projection_lag_s_each"])
        return (f"    {name:<34}{_num(r[f'{p}_events_per_s'], ' ev/s'):>13} ({each})   "
                f"projection lag {_num(r[f'{p}_projection_lag_s'], ' s', '.2f')} ({lags}); "
                f"peak RSS {_num(r[f'{p}_peak_rss_mb'], ' MB', '.0f')}")

    return [
        f"(g) detection and projection, fresh workers alone / under {r['queries_clients']} "
        f"heavy queries / under them / alone ({r['queries_clients'] // len(HEAVY)} x each "
        "of: a CPU-bound scan to the 10 s limit, the 20M-row answer); projection lag = N-th "
        "event counted -> DuckDB rows quiet",
        row("worker alone", "queries_alone"),
        row(f"worker + {r['queries_clients']} heavy queries", "queries_heavy"),
        f"    with / without queries: events/s {_num(r['queries_events_ratio'], '', '.2f')}, "
        f"projection lag {_num(r['queries_lag_ratio'], '', '.2f')}; query answers by "
        f"status {r['queries_answers']}",
    ]


def _scale_lines(r: dict[str, Any]) -> list[str]:
    t = r["targets_met"]
    per_1k = _num(r["projected_per_1k_events"], "", ".2f")
    main = _num(r["projected_records_main"], " records")
    per_event = (f"    projected records / 1,000 events  {per_1k:>9}   ({main} on incidents, "
                 "windows, dlq, signals, reports once (b) settled, minus before it started)")
    if r["scale_skipped"]:
        return [per_event, f"(h) scale-out: skipped ({r['scale_skipped']})"]

    def restart(suffix: str) -> str:
        events, hours = r[f"restart_events_{suffix}"], r[f"restart_event_hours_{suffix}"]
        if events is None:
            return f"    restart after a {suffix} log: n/a"
        label = f"restart after a {suffix} log ({events:,} events, {hours:.0f} h)"
        return (f"    {label:<48}{_num(r[f'restart_s_{suffix}'], ' s', '.2f'):>9}   (ready "
                f"{_num(r[f'restart_ready_s_{suffix}'], ' s', '.2f')}; first run settled in "
                f"{_num(r[f'restart_first_settle_s_{suffix}'], ' s', '.1f')}; "
                f"{r[f'restart_changelog_records_{suffix}']:,} changelog records, "
                f"{r[f'restart_window_records_{suffix}']:,} window records, "
                f"{r[f'restart_incident_records_{suffix}']:,} incident records)")

    def workers(suffix: str, name: str) -> str:
        each = r[f"spans_{suffix}_each"]
        return (f"    {name:<36}{_num(r[f'spans_per_s_{suffix}'], ' spans/s'):>16}"
                + (f"   (spans_in by worker {each}; ready and groups Stable after "
                   f"{_num(r[f'spans_{suffix}_join_s'], ' s', '.1f')})" if each else ""))

    errors = r["scale_errors"]
    return [
        "(h) scale-out (issue 10), own app ids and topics: restart = SIGKILL once settled, "
        f"{r['restart_tail_events']:,} events produced while down, spawn -> /readyz 200 -> "
        "every stage group committed at the end, triage through, DuckDB positions at the end",
        restart("1x"), restart("10x"),
        f"    restart 10x / 1x      {_num(r['restart_ratio_10x_vs_1x'], '', '.2f'):>9}   "
        f"target within {TARGET_RESTART_RATIO}x      {_mark(t['restart_10x_within_1_5x'])}",
        per_event,
        f"    projected records / 1,000 spans   "
        f"{_num(r['projected_per_1k_spans'], '', '.2f'):>9}   "
        f"({_num(r['projected_records_spans'], ' records')}: the 1-worker span run below, "
        "every stage group committed at the end, triage through)",
        workers("1_worker", "spans/s, 1 worker (--role detect)"),
        workers("2_workers", "spans/s, 2 workers in one group"),
        f"    2 workers / 1         {_num(r['spans_workers_ratio'], '', '.2f'):>9}   "
        f"target >= {TARGET_TWO_WORKERS}         {_mark(t['spans_2_workers_1_5x'])}   "
        "(span workload of (f) produced once every worker is in every group; clock: "
        "first spans_read -> sum of spans_in = total)",
        f"    1 worker / bare decode {_num(r['span_ratio_vs_bare_decode'], '', '.3f'):>8}   "
        f"target >= {TARGET_SPAN_RATIO}         {_mark(t['span_ratio_vs_bare_decode'])}   "
        f"(bare decode loop {_num(r['span_bare_decode_per_s'], ' spans/s')})",
        *([f"    failed: {errors}"] if errors else []),
        f"    1-minute load average when (h) started: "
        f"{_num(r['scale_load_avg_1m_at_start'], '', '.2f')}",
    ]


def _check_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"replay spikes opened during (b): {r['replay_spikes_opened']} of "
        f"{r['replay_spikes_expected']}; unexpected incidents: {r['unexpected_opened']}",
        f"worker: lifecycle events {r['worker_lifecycle']}, dead letters "
        f"{r['worker_dead_letters']}, rows projected {r['worker_rows_projected']}, "
        f"signals accepted {r['worker_signals_accepted']}, report versions published "
        f"{r['worker_reports_published']}, exit code {r['worker_exit_code']}",
    ]
    load = r.get("load_avg_1m_at_start")
    if load is not None:
        lines.append(f"1-minute load average at start: {load:.2f}"
                     + (" (busy machine: figures may be noisy)" if load > BUSY_LOAD else ""))
    return lines


def render(r: dict[str, Any]) -> str:
    head = (f"workload: {r['events']:,} wide events ({r['event_bytes'] / 1e6:.1f} MB JSON), "
            f"{r['services']} services, {r['families']} error families, {r['partitions']} "
            f"partitions, 5% errors, {r['replay_spikes_expected']} replay spikes")
    return "\n".join([head, "", *_throughput_lines(r), "", *_target_lines(r), "",
                      *_replay_lines(r), "",
                      *_intake_lines(r), "", *_queries_lines(r), "", *_spans_lines(r), "",
                      *_scale_lines(r), "", *_check_lines(r)])
