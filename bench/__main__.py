"""``python -m bench [--json] [--events N] [--no-quix] [--no-intake] [--no-queries]
[--no-spans] [--no-scale] [--no-rules] [--no-replay]``.

One embedded broker per run; the workload is produced once, then read by (a) the bare
consumer, (b) the Tocsin worker (followed, while it is caught up, by the live-spike
latency phase, (e) the report burst and (d) its HTTP intake under load), (b2) a
``--role detect`` worker, (b3) the same under a rules file with a latency and an
error-rate rule on every step, (c) the quixstreams peer and (g) four more workers, alone
and under six heavy queries, one after the other so they never share the CPU. The bare
HTTP intake endpoint of (d) runs right after (b2) and (b3). (i) then exports the events
topic as (b) left it (``tocsin.clients.export``) and runs ``tocsin replay`` on it, with its
default ``--jobs`` (the CPUs) and with one, in a subprocess, before (c): replay events/s
against (b)'s, and its incidents against those (b)'s worker projected. (f), the OTLP span
workload, is produced and measured after them: the worker of (b) would otherwise translate
it into its own workload's topic. (h), the scale-out figures (restart after a 1x and a 10x
log, spans/s with 1 and 2 workers), comes last, every run on topics of its own; the
projected records per 1,000 events are counted on the worker of (b). Progress goes to
stderr; the figures to stdout. Every subprocess and the broker are stopped whatever
happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from tocsin import testing
from tocsin.streams.kafka.broker import EmbeddedBroker

from .bare import measure_bare
from .burst import BurstResult, measure_burst
from .intake import CONCURRENCY, REQUESTS, SECONDS, BareIntake, LoadResult, measure_load
from .latency import measure_latency
from .queries import CLIENTS, QueriesPhase, measure_queries
from .quix import QuixResult, run_quix
from .replay import ReplayRun, measure_replay
from .report import BUSY_LOAD, IntakeRun, Run, TocsinRun, render, to_dict
from .rules import RulesRun, write_rules
from .scale import ScaleRun, measure_scale, projected_records, topic_ends
from .spans import (
    SpansRun,
    assembler_memory,
    measure_loop,
    measure_worker,
    produce_spans,
)
from .worker import Throughput, TocsinWorker
from .workload import Workload, produce

STARTED = time.monotonic()
MIN_EVENTS = 50_000


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Tocsin's benchmark: events/s of (a) a bare consumer, (b) the Tocsin "
        "worker, (c) quixstreams on one workload; detection latency; peak RSS.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--events", type=int, default=300_000, help="workload size (default 300000)")
    p.add_argument("--spikes", type=int, default=20, help="live spikes for latency (default 20)")
    p.add_argument("--no-quix", action="store_true", help="skip (c), the quixstreams peer")
    p.add_argument("--no-intake", action="store_true",
                   help="skip (d) HTTP intake signals/s and (e) the report burst")
    p.add_argument("--no-queries", action="store_true",
                   help="skip (g), detection and projection under six heavy queries")
    p.add_argument("--no-spans", action="store_true",
                   help="skip (f), OTLP spans/s (bare, Tocsin, worker) and assembler RSS")
    p.add_argument("--no-scale", action="store_true",
                   help="skip (h), restart after a 1x and a 10x log and spans/s with 1 and 2 "
                   "workers")
    p.add_argument("--no-rules", action="store_true",
                   help="skip (b3), the --role detect worker under latency and error-rate "
                   "rules on every step")
    p.add_argument("--no-replay", action="store_true",
                   help="skip (i), the export of the events topic and tocsin replay on it")
    p.add_argument("--burst", type=int, default=2000,
                   help="alerts POSTed on one incident in (e) (default 2000)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, DuckDB)")
    p.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    args = p.parse_args(argv)
    if args.events < MIN_EVENTS:
        p.error(f"--events must be at least {MIN_EVENTS} (the worker is polled every 50 ms)")
    if not 1 <= args.spikes <= 200:
        p.error("--spikes must be within 1..200")
    if not 10 <= args.burst <= 20_000:
        p.error("--burst must be within 10..20000")
    return args


def _load_line(name: str, r: LoadResult) -> str:
    errors = f", errors {dict(r.errors)}" if r.errors else ""
    return (f"{name}: {r.signals_per_s or 0:,.0f} signals/s ({r.requests_per_s or 0:,.0f} "
            f"req/s), p50 {r.p(50) or 0:.1f} ms, p99 {r.p(99) or 0:.1f} ms{errors}")


def bare_intake_phase(bootstrap: str, workdir: Path) -> LoadResult:
    """(d) the bare HTTP endpoint, right after the worker stopped: alone on the machine,
    and against the broker as the Tocsin intake left it."""
    bare = BareIntake(bootstrap, workdir).start()
    try:
        say(f"(d) bare intake pid {bare.pid} on {bare.base_url}; {REQUESTS:,} requests or "
            f"{SECONDS:.0f} s over {CONCURRENCY} connections")
        result = measure_load(bare.base_url, uuid.uuid4().hex[:6])
    finally:
        bare.stop()
    say(_load_line("(d) bare", result))
    return result


def worker_intake_phases(worker: TocsinWorker, bootstrap: str, workload: Workload,
                         spikes: int, burst: int) -> tuple[BurstResult, LoadResult]:
    """(e) the report burst, then (d) the worker's intake under load."""
    tag = uuid.uuid4().hex[:6]
    say(f"(e) report burst: a fresh incident, then {burst:,} correlated alerts POSTed")
    result = measure_burst(bootstrap, worker.base_url, workload, spikes, tag, burst,
                           timeout_s=30 + burst * burst / 50_000)
    say(f"(e) {result.versions} report versions for {result.signals:,} signals on "
        f"{result.incident_id} in {result.burst_s or float('nan'):.1f}s "
        f"(complete: {result.complete}); waiting for the worker to settle")
    worker.wait_settled_s(timeout_s=60.0)
    say(f"(d) Tocsin intake on {worker.base_url}; {REQUESTS:,} requests or {SECONDS:.0f} s "
        f"over {CONCURRENCY} connections")
    load = measure_load(worker.base_url, tag)
    say(_load_line("(d) Tocsin", load))
    return result, load


def live_incidents(worker: TocsinWorker) -> tuple[str, ...] | None:
    """The families of the incidents (b)'s worker projected into its DuckDB, once it
    settled (for (i)); None when they could not be read."""
    try:
        if worker.wait_settled_s(timeout_s=60.0) is None:
            say("(b) not settled within 60 s before its incidents were read")
        rows = worker.query("SELECT family FROM incidents ORDER BY family")
        return tuple(str(r["family"]) for r in rows)
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        say(f"(b) incidents not read: {type(exc).__name__}: {exc}")
        return None


def tocsin_phase(bootstrap: str, workload: Workload, spikes: int, workdir: Path,
                 intake: IntakeRun, burst_n: int, incidents: bool = False
                 ) -> tuple[TocsinRun, IntakeRun]:
    """(b), the latency phase, then (e) and (d) on one worker; it is stopped (SIGTERM) at
    the end. ``intake.skipped`` says why (d)/(e) do not run. With ``incidents``, the
    families of its DuckDB's incidents are read last, once it settled again (for (i))."""
    worker = TocsinWorker(bootstrap, workdir)
    # The projected topics before the worker (a fresh broker: none of them exists yet).
    starts = topic_ends(bootstrap, worker.names.projected())
    worker.start()
    try:
        say(f"(b) worker pid {worker.pid} ({worker.app_id}); waiting for it to count "
            f"{workload.events:,} events")
        tput = worker.measure(workload.events, timeout_s=max(120.0, workload.events / 2000))
        say(f"(b) {tput.events_per_s:,.0f} events/s; waiting for the worker to settle")
        settle = worker.wait_settled_s()
        projected = None
        if settle is not None:
            try:
                projected = projected_records(bootstrap, worker.names, starts)
            except Exception as exc:  # noqa: BLE001 - keep the other figures
                say(f"(b) projected records not counted: {type(exc).__name__}: {exc}")
        worker.wait_detecting(30.0)
        say(f"(b) settled after {settle if settle is not None else float('nan'):.1f}s; "
            f"{spikes} live spikes for detection latency")
        latency = measure_latency(bootstrap, workload, spikes, uuid.uuid4().hex[:6])
        rss = worker.peak_rss_mb()  # before (d)/(e): the detection workload's figure
        if not intake.skipped:
            try:
                burst, load = worker_intake_phases(worker, bootstrap, workload, spikes,
                                                   burst_n)
                intake = IntakeRun(tocsin=load, burst=burst, rss_after_mb=worker.peak_rss_mb())
            except Exception as exc:  # noqa: BLE001 - keep (b) and (c); say what failed
                say(f"(d)/(e) failed: {type(exc).__name__}: {exc}")
                intake = IntakeRun(skipped=f"failed: {type(exc).__name__}: {exc}")
        families = live_incidents(worker) if incidents else None
        body = worker.health() or {}
    finally:
        code = worker.stop()
    say(f"(b) worker stopped (exit code {code})"
        + (f"; {len(families)} incidents in its DuckDB" if families is not None else ""))
    return TocsinRun(tput, settle, latency, rss, body.get("metrics", {}), code,
                     projected, families), intake


def detect_worker(bootstrap: str, workload: Workload, workdir: Path, name: str,
                  env: dict[str, str] | None = None) -> tuple[Throughput, dict[str, Any]]:
    """A ``run --role detect`` worker on the workload's events topic (a fresh app id
    ``bench-<name>-*``, its outputs on topics of its own), measured as (b); its /healthz
    metrics once it counted them. Stopped at the end."""
    app = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    names = testing.Names.defaults(app)
    names = names.with_topics(**{f: f"{app}.{f}" for f in names.all_topics()
                                 if f != "events"})
    worker = TocsinWorker(bootstrap, workdir, role="detect", name=name, names=names,
                          env=env)
    worker.start()
    try:
        tput = worker.measure(workload.events, timeout_s=max(120.0, workload.events / 2000))
        return tput, (worker.health() or {}).get("metrics", {})
    finally:
        worker.stop()


def detect_phase(bootstrap: str, workload: Workload, workdir: Path) -> Throughput | None:
    """(b2) The same events on a ``run --role detect`` worker (a fresh app id, its outputs
    on topics of its own): the event path of one worker of the scale-out layout, where the
    projection runs elsewhere. Measured as (b)."""
    try:
        tput, _ = detect_worker(bootstrap, workload, workdir, "detect")
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        say(f"(b2) failed: {type(exc).__name__}: {exc}")
        return None
    say(f"(b2) --role detect: {tput.events_per_s:,.0f} events/s")
    return tput


def rules_phase(bootstrap: str, workload: Workload, workdir: Path,
                detect: Throughput | None) -> RulesRun:
    """(b3) (b2) again under ``TOCSIN_RULES``: a latency and an error-rate rule on every
    step of every service (ADR 0022), read at every bucket boundary of every step."""
    try:
        path = write_rules(workdir / "rules.toml")
        say(f"(b3) --role detect under {path} (latency and error-rate rules on every step)")
        tput, metrics = detect_worker(bootstrap, workload, workdir, "rules",
                                      env={"TOCSIN_RULES": str(path)})
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        say(f"(b3) failed: {type(exc).__name__}: {exc}")
        return RulesRun(error=f"{type(exc).__name__}: {exc}")
    ratio = f"{tput.events_per_s / detect.events_per_s:.2f}" if detect else "n/a"
    say(f"(b3) --role detect with rules: {tput.events_per_s:,.0f} events/s ({ratio} of "
        f"(b2)); lifecycle {metrics.get('lifecycle', {})}")
    return RulesRun(tput, dict(metrics.get("lifecycle", {})))


def replay_phase(bootstrap: str, workload: Workload, workdir: Path, live: TocsinRun
                 ) -> ReplayRun:
    """(i) the events topic as (b) left it, exported, then ``tocsin replay`` on it."""
    try:
        result = measure_replay(bootstrap, workdir, workload, say)
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        say(f"(i) failed: {type(exc).__name__}: {exc}")
        return ReplayRun(skipped=f"failed: {type(exc).__name__}: {exc}")
    rate = live.throughput.events_per_s
    for r in (result.replay, result.replay_1):
        if r is not None and rate:
            say(f"(i) replay --jobs {r.jobs} / (b): {r.events_per_s / rate:.2f}")
    return result


def quix_phase(bootstrap: str, events: int, workdir: Path) -> QuixResult:
    notes: list[str] = []
    say("(c) quixstreams peer (venv under ~/.cache/tocsin-bench)")
    result = run_quix(bootstrap, events, workdir, notes)
    for note in notes:
        say(f"(c) {note}")
    if result.skipped:
        say(f"(c) skipped: {result.skipped}")
    else:
        say(f"(c) {result.events_per_s or 0:,.0f} events/s")
    return result


def queries_phase(bootstrap: str, workload: Workload, workdir: Path) -> QueriesPhase:
    """(g): a fresh worker alone, then another under six heavy queries (before (f): a
    worker of role all would translate the span workload too)."""
    say(f"(g) fresh workers alone and under {CLIENTS} heavy queries, in turn")
    try:
        result = measure_queries(bootstrap, workload, workdir, say)
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        say(f"(g) failed: {type(exc).__name__}: {exc}")
        return QueriesPhase(skipped=f"failed: {type(exc).__name__}: {exc}")
    return result


def spans_phase(bootstrap: str, workdir: Path) -> SpansRun:
    """(f): produce the span workload, then the bare loop, Tocsin's pure loop, the worker's
    span intake, and the assembler's RSS in a child interpreter."""
    say("(f) producing the OTLP span workload on otlp_spans")
    w = asyncio.run(produce_spans(bootstrap))
    say(f"(f) produced {w.spans:,} spans ({w.traces:,} traces, {w.failing_traces} failing) "
        f"in {w.records:,} records ({w.bytes / 1e6:.1f} MB otlp_proto); bare parse loop")
    parse = measure_loop(bootstrap, w.spans, "parse")
    say(f"(f) bare parse {parse.spans_per_s:,.0f} spans/s; bare decode loop")
    bare = measure_loop(bootstrap, w.spans, "decode")
    say(f"(f) bare decode {bare.spans_per_s:,.0f} spans/s; Tocsin decode_batch + wide_events")
    pure = measure_loop(bootstrap, w.spans, "tocsin")
    say(f"(f) Tocsin {pure.spans_per_s:,.0f} spans/s ({pure.events:,} wide events); "
        "worker span intake (run --role detect)")
    worker = metrics = error = None
    try:
        worker, metrics = measure_worker(bootstrap, workdir, w.spans)
        say(f"(f) worker {worker.events_per_s:,.0f} spans/s")
    except Exception as exc:  # noqa: BLE001 - keep the other figures
        error = f"{type(exc).__name__}: {exc}"
        say(f"(f) worker failed: {error}")
    say("(f) assembler RSS, 10,000 traces in flight (child interpreter)")
    memory = assembler_memory()
    say(f"(f) assembler: +{memory['rss_growth_mb']} MB RSS, {memory['traced_mb']} MB traced")
    return SpansRun(w, bare, parse, pure, worker, error, metrics, memory)


def scale_phase(bootstrap: str, workdir: Path, spans: SpansRun) -> ScaleRun:
    """(h): restart after a 1x and a 10x log, then the span workload with 1 and 2
    workers. The bare decode loop's figure is (f)'s; without it, the span workload is
    produced on otlp_spans here and the loop measured."""
    bare = spans.bare.spans_per_s if spans.bare else None
    if bare is None:
        say("(h) (f) gave no bare decode figure: producing the span workload, bare decode")
        w = spans.workload or asyncio.run(produce_spans(bootstrap))
        bare = measure_loop(bootstrap, w.spans, "decode").spans_per_s
    say(f"(h) scale-out: bare decode {bare:,.0f} spans/s; restart after a 1x and a 10x log")
    return measure_scale(bootstrap, workdir, say, bare)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        say(f"the machine is busy (1-minute load {load:.2f}): figures may be noisy")
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        say(f"broker on {broker.bootstrap}; producing {args.events:,} events")
        workload = asyncio.run(produce(broker.bootstrap, args.events))
        say(f"produced {workload.events:,} events ({workload.bytes / 1e6:.1f} MB); (a) bare")
        bare = measure_bare(broker.bootstrap, workload.events)
        say(f"(a) {bare.events_per_s:,.0f} events/s ({bare.keys} keys)")
        intake = IntakeRun(skipped="--no-intake" if args.no_intake else None)
        tocsin, intake = tocsin_phase(broker.bootstrap, workload, args.spikes, workdir,
                                      intake, args.burst, incidents=not args.no_replay)
        detect = detect_phase(broker.bootstrap, workload, workdir)
        rules = (RulesRun(skipped="--no-rules") if args.no_rules
                 else rules_phase(broker.bootstrap, workload, workdir, detect))
        if not intake.skipped:
            try:
                intake = replace(intake, bare=bare_intake_phase(broker.bootstrap, workdir))
            except Exception as exc:  # noqa: BLE001 - keep the other figures
                say(f"(d) bare intake failed: {type(exc).__name__}: {exc}")
        replay = (ReplayRun(skipped="--no-replay") if args.no_replay
                  else replay_phase(broker.bootstrap, workload, workdir, tocsin))
        quix = None if args.no_quix else quix_phase(broker.bootstrap, workload.events, workdir)
        queries = QueriesPhase(skipped="--no-queries")
        if not args.no_queries:
            queries = queries_phase(broker.bootstrap, workload, workdir)
        spans = SpansRun(skipped="--no-spans")
        if not args.no_spans:
            try:
                spans = spans_phase(broker.bootstrap, workdir)
            except Exception as exc:  # noqa: BLE001 - keep the other figures
                say(f"(f) failed: {type(exc).__name__}: {exc}")
                spans = SpansRun(skipped=f"failed: {type(exc).__name__}: {exc}")
        scale = ScaleRun(skipped="--no-scale")
        if not args.no_scale:
            try:
                scale = scale_phase(broker.bootstrap, workdir, spans)
            except Exception as exc:  # noqa: BLE001 - keep the other figures
                say(f"(h) failed: {type(exc).__name__}: {exc}")
                scale = ScaleRun(skipped=f"failed: {type(exc).__name__}: {exc}")
    result = to_dict(Run(workload, bare, tocsin, quix, intake, spans, queries, scale,
                         detect, rules, replay))
    result["load_avg_1m_at_start"] = round(load, 2)
    return result


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="tocsin-bench-"))
    try:
        result = run(args, workdir)
    except KeyboardInterrupt:
        say(f"interrupted (subprocesses and broker stopped); logs kept in {workdir}")
        return 130
    except Exception as exc:  # noqa: BLE001 - report any failure, keep the logs
        say(f"failed: {type(exc).__name__}: {exc}")
        say(f"logs kept in {workdir}")
        return 1
    result["seconds"] = round(time.monotonic() - STARTED, 1)
    if args.keep or result["quix_skipped"] not in (None, "--no-quix"):
        say(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    missed = [k for k, ok in result["targets_met"].items() if ok is False]
    return 3 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
