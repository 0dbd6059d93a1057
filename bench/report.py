"""The figures of one run: one JSON-able dict, and its text rendering with the targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .bare import BareResult
from .latency import LatencyResult
from .quix import QuixResult
from .worker import Throughput
from .workload import PARTITIONS, SERVICES, Workload

TARGET_RATIO_VS_BARE = 0.5
TARGET_RATIO_VS_QUIX = 1.0
TARGET_P99_MS = 1000.0
BUSY_LOAD = 0.7  # 1-minute load average above which other work skews the figures


@dataclass(frozen=True)
class TocsinRun:
    """What (b) and the latency phase measured on one worker."""

    throughput: Throughput
    settle_s: float | None  # from the N-th event counted until the worker went quiet
    latency: LatencyResult
    peak_rss_mb: float | None
    metrics: dict[str, Any]
    exit_code: int | None


@dataclass(frozen=True)
class Run:
    workload: Workload
    bare: BareResult
    tocsin: TocsinRun
    quix: QuixResult | None


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
        "ahead_of_quix": None if vs_quix is None else vs_quix > TARGET_RATIO_VS_QUIX,
        "p99_detect": p99 is not None and p99 <= TARGET_P99_MS and r["detect_missed"] == 0,
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
        "worker_exit_code": t.exit_code,
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
    return [
        f"(a) {'bare aiokafka getmany + WideEventDecoder':<46}"
        f"{_num(r['bare_events_per_s'], ' ev/s'):>13}",
        f"(b) {'Tocsin worker (run --role all)':<46}"
        f"{_num(r['tocsin_events_per_s'], ' ev/s'):>13}",
        f"    {'... counting its settle time too':<46}"
        f"{_num(r['tocsin_settled_events_per_s'], ' ev/s'):>13}",
        f"(c) {quix_name:<46}{quix:>13}",
    ]


def _target_lines(r: dict[str, Any]) -> list[str]:
    t = r["targets_met"]
    return [
        f"Tocsin / bare         {_num(r['ratio_vs_bare'], '', '.2f'):>9}   "
        f"target >= {TARGET_RATIO_VS_BARE}          {_mark(t['ratio_vs_bare'])}",
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


def _check_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"replay spikes opened during (b): {r['replay_spikes_opened']} of "
        f"{r['replay_spikes_expected']}; unexpected incidents: {r['unexpected_opened']}",
        f"worker: lifecycle events {r['worker_lifecycle']}, dead letters "
        f"{r['worker_dead_letters']}, rows projected {r['worker_rows_projected']}, "
        f"exit code {r['worker_exit_code']}",
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
                      *_check_lines(r)])
