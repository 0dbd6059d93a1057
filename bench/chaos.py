"""``python -m bench.chaos``: the fault campaign.

One seeded input log (:mod:`bench.chaos_workload`: wide events, OTLP spans made with the
OpenTelemetry SDK, webhooks from Alertmanager, Kubernetes and Tocsin's native form) is
played twice, each time on its own embedded broker with its own DuckDB file:

1. **chaos**: three worker processes on one broker — ``detect-1`` (``--role detect``:
   detection and the span intake), ``detect-2`` (``--role detect``, detection only: its
   span topic is pointed at an unused topic, because ADR 0011 keeps the translated order a
   function of the log only with one span-intake member) and ``project`` (``--role
   project``: the triage fold, reports and DuckDB). The log is published in ``--steps``
   paced steps: events and span records by a producer that is never killed, then the
   step's webhooks, spread over the step, POSTed to the workers over HTTP by a sender that
   retries each request on the next worker until it is answered 202, with the same
   ``Idempotency-Key`` on every attempt. The kill plan (:func:`bench.chaos_workload.
   kill_plan`, from the seed) arms each kill once its step's records are acknowledged; it
   then fires ``instant`` (a seeded delay into the step; sometimes two workers at once),
   on ``effect`` (the first worker of a role whose effect counters on ``/healthz`` move:
   detection armed one step before a step known to make it emit a deploy, a dead letter
   or a lifecycle event; the projection on its next report version — so that the kill
   falls between the effect and its checkpoint or DuckDB transaction), or on ``webhook``
   (while a request to the victim is in flight). Victims are restarted at once (same
   port, same DuckDB file); ``--kills`` SIGKILLs in all, every role hit at least once. A
   worker that exits by itself is restarted as well and reported. The kill log says, per
   kill, the step, trigger, victim, how long it waited and the victim's counters.
2. **reference**: a fresh broker and one ``--role all`` worker, never interrupted; the
   same records published (unpaced), the same webhooks POSTed.

Each run ends when it has settled (:func:`bench.chaos_cluster.wait_settled`: consumer
groups and DuckDB positions at every topic's end, twice in a row); its workers are then
SIGKILLed (all that is compared is committed by then; a clean SIGTERM stop costs ~17 s a
run in Faust's shutdown), the output topics read from the start and DuckDB opened.

Compared, chaos against reference:

- every DuckDB table, all rows (as multisets), all columns, except:
  ``positions`` — only the rows of ``otlp_spans``, the input topic the producer wrote:
  the other rows are offsets on topics the run itself wrote (incidents, windows, dead
  letters, signals), which a replay or another interleaving of writers legitimately
  moves; ``triage_reports`` — without ``written_seq`` (a DuckDB sequence numbering the
  versions this file stored, so it counts intermediate versions) and ``provenance``
  (topic/partition/offset of each cited record: run-specific offsets as above), and only
  the latest version of each incident: ADR 0009 makes the final version a function of
  the input and the intermediate ones a function of batching; ``evidence`` — the rows
  of those latest versions; ``dead_letters`` — without ``dlq_partition`` and
  ``dlq_offset``, where the letter landed on the dead-letter topic: letters of a replayed
  range are re-sent (ADR 0004), and a letter is keyed by its source record's key, so the
  letter of an unkeyed record (the Collector writes ``otlp_spans`` unkeyed) goes to a
  random partition — in two uninterrupted runs as well; and the ``source_offset`` of
  letters from any topic but ``otlp_spans``: the events topic also carries the span
  intake's events and progress marks, so the producer's records after them land at
  offsets set by timing (letters are told apart by content, ``sha256``);
- ``tocsin.incidents``: the set of lifecycle identities ``(incident_id, seq)`` with their
  decoded content; lost = in the reference, not in chaos; duplicated = an identity more
  than once;
- ``tocsin.reports``: ``(incident_id, report_hash)`` never twice on the topic, the
  latest version of every incident the same, and (each run on its own) every version on
  the topic also in DuckDB and the other way round;
- ``tocsin.signals``: each signal id in one delivery (every request carries distinct
  signals; a deploy registered from a version change is one signal). A request retried
  after an unanswered attempt may be published again under the same delivery id (header
  ``tocsin.delivery``, from its Idempotency-Key), which the fold applies once: that is
  counted as ``redelivered``, not duplicated; a second record without a shared delivery
  id is a duplicate. Every id answered 202 is in DuckDB's ``signals`` exactly once, with
  the reference's occurrence count (a signal applied twice folds into ``occurrences`` 2);
- sanity: both brokers got the same input (digests of the producer's records per
  partition), and the span intake released translated spans in the same order.

Signals' receive time (``received_ms`` in streams/web/intake.py) only dates payloads that carry
no time of their own; every webhook of the workload has its own, so signals are the same
bytes in both runs.

``--json`` prints one line: seed, kills, restarts, records, elapsed_s, lost, duplicated
(both with a per-kind breakdown), tables_identical, incidents, reports, signals_202,
signals_present_once, ok, and the details. Exit 0 only if ok; 1 otherwise (with the
reason); the whole campaign aborts as failed when ``--max-seconds`` passes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from tocsin.streams.kafka.broker import EmbeddedBroker
from tocsin.streams.kafka.io import read_to_end

from .chaos_cluster import (
    TOPICS,
    UNUSED_SPANS_TOPIC,
    CampaignTimeout,
    Deadline,
    Killer,
    KillRecord,
    Proc,
    Publisher,
    SignalLog,
    SignalSender,
    Watermarks,
    create_topics,
    get_json,
    wait_ready,
    wait_settled,
    worker_env,
)
from .chaos_compare import Comparison, Table, Topics, compare, dump_tables, read_topics
from .chaos_compare import report_versions as db_report_versions
from .chaos_workload import Config, Kill, Workload, build, fingerprint
from .workload import PARTITIONS

STARTED = time.monotonic()
OUTPUT_TOPICS = (TOPICS.incidents, TOPICS.reports, TOPICS.signals, TOPICS.events,
                 TOPICS.spans)


def say(message: str) -> None:
    print(f"[chaos {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    name: str
    db: Path
    seconds: float = 0.0
    settle_s: float = 0.0
    tables: dict[str, Table] = field(default_factory=dict)
    topics: Topics = field(default_factory=Topics)
    versions: set[tuple[str, str]] = field(default_factory=set)
    signals: SignalLog = field(default_factory=SignalLog)
    kills: list[KillRecord] = field(default_factory=list)
    restarts: int = 0
    unexpected_exits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


async def _read_outputs(bootstrap: str) -> Topics:
    records = [await read_to_end(bootstrap, t, idle_timeout_s=20.0) for t in OUTPUT_TOPICS]
    return read_topics(*records)


async def _finish(result: RunResult, bootstrap: str, procs: list[Proc],
                  session: aiohttp.ClientSession) -> None:
    """Last health bodies; then SIGKILL every worker (everything compared is settled and
    committed by now, and a clean stop costs Faust's shutdown, ~17 s a run on the 2-core
    machine; DuckDB replays its WAL when the file is opened), read the topics and
    DuckDB."""
    for proc in procs:
        body = await get_json(session, proc.base_url + "/healthz")
        if body is not None:
            result.metrics[proc.name] = body.get("metrics")
    for proc in procs:
        proc.supervise(restart=False)
        if proc.unexpected_exits:
            result.unexpected_exits[proc.name] = proc.unexpected_exits
        proc.kill()
    started = time.monotonic()
    result.topics = await _read_outputs(bootstrap)
    result.tables = dump_tables(result.db, TOPICS.spans)
    result.versions = db_report_versions(result.db)
    say(f"{result.name}: topics and DuckDB read in {time.monotonic() - started:.1f}s")


async def chaos_run(w: Workload, workdir: Path, deadline: Deadline, step_s: float
                    ) -> RunResult:
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    bootstrap = broker.bootstrap
    procs = [Proc("detect-1", "detect", bootstrap, workdir, worker_env()),
             Proc("detect-2", "detect", bootstrap, workdir, worker_env(UNUSED_SPANS_TOPIC)),
             Proc("project", "project", bootstrap, workdir, worker_env())]
    projector = procs[2]
    result = RunResult("chaos", projector.db_path)
    publisher = Publisher(bootstrap)
    marks = Watermarks(bootstrap, [*OUTPUT_TOPICS, TOPICS.windows, TOPICS.dlq])
    sender = SignalSender([p.base_url for p in procs], 4, deadline)
    session = aiohttp.ClientSession()
    killer = Killer(bootstrap, procs, sender, publisher, session, say)
    try:
        await create_topics(bootstrap)
        for proc in procs:
            proc.start()
        await wait_ready(session, procs, deadline, "chaos: starting the workers")
        say(f"chaos: broker {bootstrap}; workers ready "
            f"({', '.join(f'{p.name} pid {p.pid}' for p in procs)})")
        await marks.start()
        await publisher.start()
        await sender.start()
        plan: dict[int, list[Kill]] = {}
        for kill in w.kills:
            plan.setdefault(kill.step, []).append(kill)
        t0 = time.monotonic()
        await killer.start(t0, sum(len(k.victims) for k in w.kills))
        for step in range(w.config.steps):
            deadline.check(f"chaos: step {step}")
            await publisher.publish(w.events[step], w.spans[step])
            sender.submit(w.signals[step], spread_s=step_s)
            for proc in procs:
                if proc.supervise():
                    say(f"chaos: {proc.name} exited by itself; restarted")
            for kill in plan.get(step, []):
                killer.arm(kill, step)
            await asyncio.sleep(max(0.0, t0 + (step + 1) * step_s - time.monotonic()))
        await killer.finish(deadline)
        result.kills = killer.records
        say(f"chaos: log published ({publisher.events:,} events, {publisher.span_records} "
            f"span records); waiting for {sender.pending} webhook requests")
        await sender.drain("chaos: webhooks")
        result.signals = sender.log
        say(f"chaos: {len(sender.log.acked)} requests answered 202; waiting until settled")
        result.settle_s = await wait_settled(bootstrap, marks, session, projector, procs,
                                             PARTITIONS, deadline, say, "chaos: settling")
        # Every start after the first of each worker: after a kill or an exit of its own.
        result.restarts = sum(p.incarnations - 1 for p in procs)
        await _finish(result, bootstrap, procs, session)
        result.seconds = time.monotonic() - t0
        return result
    finally:
        await killer.stop()
        await sender.stop()
        await session.close()
        await marks.stop()
        await publisher.stop()
        for proc in procs:
            proc.kill()
        broker.stop()


async def reference_run(w: Workload, workdir: Path, deadline: Deadline) -> RunResult:
    ref_dir = workdir / "reference"
    ref_dir.mkdir()
    broker = EmbeddedBroker(log_path=ref_dir / "tansu.log").start()
    bootstrap = broker.bootstrap
    proc = Proc("reference", "all", bootstrap, ref_dir, worker_env())
    result = RunResult("reference", proc.db_path)
    publisher = Publisher(bootstrap)
    marks = Watermarks(bootstrap, [*OUTPUT_TOPICS, TOPICS.windows, TOPICS.dlq])
    sender = SignalSender([proc.base_url], 8, deadline)
    session = aiohttp.ClientSession()
    try:
        await create_topics(bootstrap)
        proc.start()
        await wait_ready(session, [proc], deadline, "reference: starting the worker")
        await marks.start()
        await publisher.start()
        await sender.start()
        t0 = time.monotonic()
        for step in range(w.config.steps):
            deadline.check("reference: publishing")
            await publisher.publish(w.events[step], w.spans[step])
            sender.submit(w.signals[step])
        await sender.drain("reference: webhooks")
        result.signals = sender.log
        result.settle_s = await wait_settled(bootstrap, marks, session, proc, [proc],
                                             PARTITIONS, deadline, say,
                                             "reference: settling")
        if proc.unexpected_exits:
            raise RuntimeError(f"the reference worker exited by itself: "
                               f"{proc.unexpected_exits}")
        await _finish(result, bootstrap, [proc], session)
        result.seconds = time.monotonic() - t0
        return result
    finally:
        await sender.stop()
        await session.close()
        await marks.stop()
        await publisher.stop()
        proc.kill()
        broker.stop()


COUNTED = ("events_in", "spans_in", "duplicates_suppressed", "deploys_registered",
           "dead_letters", "reports_published", "signals_accepted")


def exercised(chaos: RunResult, ref: RunResult | None) -> dict[str, Any]:
    """Work done over all incarnations (killed ones as last seen, so at least this much)
    against the reference's: what the kills made the workers do again."""
    def add(total: Counter[str], metrics: dict[str, Any] | None) -> None:
        if metrics:
            for key in COUNTED:
                total[key] += int(metrics.get(key, 0))
            total["lifecycle"] += sum(dict(metrics.get("lifecycle") or {}).values())

    done: Counter[str] = Counter()
    for kill in chaos.kills:
        add(done, kill.metrics)
    for metrics in chaos.metrics.values():
        add(done, metrics)
    reference: Counter[str] = Counter()
    if ref is not None:
        for metrics in ref.metrics.values():
            add(reference, metrics)
    return {"chaos_at_least": dict(done), "reference": dict(reference),
            "killed_unseen": sum(1 for k in chaos.kills if k.metrics is None),
            "triggers": dict(Counter(f"{k.trigger}{'' if k.fired else ' (missed)'}"
                                     for k in chaos.kills))}


def summarize(args: argparse.Namespace, w: Workload, chaos: RunResult | None,
              ref: RunResult | None, c: Comparison | None, error: str | None
              ) -> dict[str, Any]:
    cfg = w.config
    out: dict[str, Any] = {
        "seed": cfg.seed, "steps": cfg.steps, "workload": fingerprint(w),
        "kills": len(chaos.kills) if chaos else 0, "kills_planned": cfg.kills,
        "restarts": chaos.restarts if chaos else 0,
        "records": w.event_records + w.span_records + w.signal_requests,
        "events": w.event_records, "span_records": w.span_records,
        "signal_requests": w.signal_requests,
        "elapsed_s": round(time.monotonic() - STARTED, 1),
        "chaos_s": round(chaos.seconds, 1) if chaos else None,
        "reference_s": round(ref.seconds, 1) if ref else None,
        "error": error,
    }
    if chaos is not None:
        out["kill_log"] = [dataclasses.asdict(k) for k in chaos.kills]
        out["unexpected_exits"] = {k: [{**e, "tail": e["tail"][-600:]} for e in v]
                                   for k, v in chaos.unexpected_exits.items()}
        log = chaos.signals
        out["signal_attempts"] = sum(log.attempts.values())
        out["signal_failures"] = dict(log.failures)
        out["signal_requests_ambiguous"] = len(log.ambiguous)
        out["signal_requests_rejected"] = {str(k): v for k, v in log.rejected.items()}
        out["signal_ids_mismatched"] = len(log.mismatched)
        out["signal_requests_ambiguous_then_202"] = len(log.acked_after_retry_ambiguous)
        out["exercised"] = exercised(chaos, ref)
    if c is None:
        out.update(lost=None, duplicated=None, tables_identical=False, incidents=None,
                   reports=None, signals_202=None, signals_present_once=None, ok=False)
        return out
    lost, dup = sum(c.lost.values()), sum(c.duplicated.values())
    out.update(
        lost=lost, duplicated=dup, lost_detail=c.lost, duplicated_detail=c.duplicated,
        tables_identical=c.tables_identical, tables=c.tables,
        incidents=c.incidents["incident_ids"], incidents_detail=c.incidents,
        reports=c.reports["incidents_reported"], reports_detail=c.reports,
        signals_expected=w.signal_ids, signals_202=c.signals["signals_202"],
        signals_present_once=c.signals["present_once"], signals_detail=c.signals,
        inputs_identical=c.inputs_identical,
        span_events_order_identical=c.span_events_order_identical, notes=c.notes,
        settle_s={"chaos": round(chaos.settle_s, 1) if chaos else None,
                  "reference": round(ref.settle_s, 1) if ref else None},
    )
    out["ok"] = bool(
        error is None and lost == 0 and dup == 0 and c.tables_identical
        and c.incidents["identical"] and c.reports["final_identical"]
        and c.signals["signals_202"] == w.signal_ids
        and c.signals["present_once"] == w.signal_ids
        and out["kills"] == cfg.kills and c.inputs_identical)
    return out


def render(r: dict[str, Any]) -> str:
    lines = [
        f"seed {r['seed']} (workload {r['workload']}): {r['records']:,} input records "
        f"({r['events']:,} events, {r['span_records']} span records, "
        f"{r['signal_requests']} webhook requests), {r['steps']} steps",
        f"kills {r['kills']} of {r['kills_planned']} planned, restarts {r['restarts']}; "
        f"chaos run {r['chaos_s']}s, reference run {r['reference_s']}s, "
        f"elapsed {r['elapsed_s']}s",
    ]
    if r.get("exercised"):
        e = r["exercised"]
        lines.append(f"kill triggers {e['triggers']}; work over all incarnations (at least) "
                     f"{e['chaos_at_least']}, reference {e['reference']}")
    if r.get("error"):
        lines.append(f"ERROR: {r['error']}")
    if r.get("lost") is not None:
        lines += [
            f"lost {r['lost']} {r['lost_detail']}",
            f"duplicated {r['duplicated']} {r['duplicated_detail']}",
            f"tables identical: {r['tables_identical']}",
        ]
        for name, t in r["tables"].items():
            if not t["identical"]:
                lines.append(f"  {name}: {json.dumps(t, default=str)}")
        lines += [
            f"incidents {r['incidents']} (lifecycle events "
            f"{r['incidents_detail']['lifecycle_events']}, identical: "
            f"{r['incidents_detail']['identical']})",
            f"reports: {r['reports']} incidents reported, latest versions identical: "
            f"{r['reports_detail']['final_identical']} (versions: chaos "
            f"{r['reports_detail']['versions_chaos']}, reference "
            f"{r['reports_detail']['versions_reference']})",
            f"signals: {r['signals_202']} answered 202 of {r['signals_expected']}, present "
            f"exactly once: {r['signals_present_once']}; ambiguous requests "
            f"{r.get('signal_requests_ambiguous')}",
        ]
        lines += [f"note: {n}" for n in r["notes"]]
    if r.get("unexpected_exits"):
        lines.append(f"workers that exited by themselves: "
                     f"{ {k: len(v) for k, v in r['unexpected_exits'].items()} }")
    lines.append("OK" if r["ok"] else "NOT OK")
    return "\n".join(lines)


async def campaign(args: argparse.Namespace, w: Workload, workdir: Path
                   ) -> dict[str, Any]:
    deadline = Deadline(args.max_seconds - (time.monotonic() - STARTED))
    chaos = ref = None
    comparison = None
    error = None
    try:
        say(f"chaos run: {w.config.steps} steps of {args.step_seconds}s, "
            f"{w.config.kills} SIGKILLs at steps {[k.step for k in w.kills]}")
        chaos = await chaos_run(w, workdir, deadline, args.step_seconds)
        say(f"chaos run done in {chaos.seconds:.1f}s (settled in {chaos.settle_s:.1f}s); "
            "reference run")
        ref = await reference_run(w, workdir, deadline)
        say(f"reference run done in {ref.seconds:.1f}s; comparing")
        comparison = compare(chaos.tables, ref.tables, chaos.topics, ref.topics,
                             chaos.versions, ref.versions, chaos.signals.acked_ids)
    except CampaignTimeout as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the campaign reports what failed
        error = f"{type(exc).__name__}: {exc}"
    return summarize(args, w, chaos, ref, comparison, error)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Fault campaign: SIGKILL workers at seeded instants while a seeded "
        "workload flows; compare with an uninterrupted run.")
    d = Config()
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--kills", type=int, default=d.kills, help=f"SIGKILLs (default {d.kills})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"default {d.steps}")
    p.add_argument("--events", type=int, default=d.events, help=f"default {d.events}")
    p.add_argument("--signals", type=int, default=d.signals,
                   help=f"webhook requests (default {d.signals})")
    p.add_argument("--step-seconds", type=float, default=1.0,
                   help="wall time of one step of the chaos run (default 1.0)")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="time bound of the whole campaign (default 600)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (logs, DuckDB files) even when ok")
    args = p.parse_args(argv)
    if not 10 <= args.steps <= 10_000:
        p.error("--steps must be within 10..10000")
    if args.events < 2_000:
        p.error("--events must be at least 2000")
    if args.signals < 1:
        p.error("--signals must be at least 1")
    if not 0 <= args.kills <= args.steps - 4:
        p.error("--kills must be within 0..steps-4")
    if not 0 < args.step_seconds <= 10:
        p.error("--step-seconds must be within (0, 10]")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    cfg = Config(seed=args.seed, steps=args.steps, events=args.events, signals=args.signals,
                 kills=args.kills)
    workdir = Path(tempfile.mkdtemp(prefix="tocsin-chaos-"))
    try:
        w = build(cfg, int(args.step_seconds * 1000))
        say(f"workload {fingerprint(w)}: {w.event_records:,} events, {w.span_records} span "
            f"records, {w.signal_requests} webhook requests ({w.signal_ids} signals); "
            f"work dir {workdir}")
        result = asyncio.run(campaign(args, w, workdir))
    except KeyboardInterrupt:
        say(f"interrupted (workers and brokers stopped); logs kept in {workdir}")
        return 130
    result["workdir"] = str(workdir) if (args.keep or not result["ok"]) else None
    if result["workdir"] is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"work dir kept: {workdir}")
    print(json.dumps(result, sort_keys=True, default=str) if args.json else render(result),
          flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
