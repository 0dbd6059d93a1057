"""(h) Scale-out figures of issue 10 (ADR 0015, migration steps 5 and 6).

Every run here has an app id and every topic of its own (``bench.<label>.<setting>``), so
nothing it reads or writes is shared with the other phases or with another run.

- **Restart 1x / 10x.** A log of healthy wide events (:func:`healthy_events`: 20 services x
  4 steps round-robin, one event every ``EVERY_MS`` of event time, 2% background errors over
  160 fixed families, never enough for an incident) of ``RESTART_EVENTS`` (1x) and 10 times
  as many (10x: ten times longer in event time, the same services, steps and families, so
  the detector's live windows, 40 minutes of event time, hold the same at the end of
  both). A ``--role all`` worker (the worker's own checkpoint interval) reads it until
  settled (:func:`settle`: every stage's group committed at the end of its input — the
  detector commits after its checkpoint —, the triage through its global inputs with its
  versions acknowledged, and the DuckDB positions at the end of every projected topic),
  is SIGKILLed, ``RESTART_TAIL`` more events are produced while it is down, and it is
  started again: restart-to-ready (spawn -> ``/readyz`` 200) and
  restart-to-caught-up (spawn -> settled again, the tail included) in wall seconds.
- **Projected records.** The records on the topics the DuckDB projection reads
  (:data:`tocsin.testing.PROJECTED_TOPICS`), end minus start, per 1,000 input events
  (counted by ``bench/__main__.py`` on the worker of (b)) or per 1,000 spans (the
  1-worker span run below, its own topics).
- **Spans/s with 1 and 2 workers.** ``--role detect`` workers in one group (same app id,
  own topics, their spans topic among them), all of them ready and every stage group
  (spans, detect, traces, triage) Stable with that many members before the span workload
  of (f) is produced (the same records, prebuilt) on their spans topic, from a thread of
  this process; then as (f) measures the worker: ``/healthz`` of every worker polled
  every 50 ms, the clock from the first poll that sees ``spans_read`` move on any of them
  until the sum of ``spans_in`` reaches the total.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tocsin import testing
from tocsin.processors.otlp import decode_batch, wide_events
from tocsin.streams.kafka.io import (
    CachedKeyPartitioner,
    Outgoing,
    TopicSpec,
    ensure_topics,
    send_batches,
    stop_quietly,
)
from tocsin.streams.worker.settings import Topics

from .spans import SPANS_PER_TRACE, TRACES, TRACES_PER_RECORD, span_records
from .worker import TocsinWorker
from .workload import PARTITIONS, SERVICES, T0_MS, steps_of

RESTART_EVENTS = 20_000  # the 1x log
RESTART_FACTOR = 10
RESTART_TAIL = 1_000  # events produced while the worker is down, before its restart
EVERY_MS = 180  # event time between two events: 1x = 1 h, 10x = 10 h
ERROR_EVERY = 50  # 2% of each service's events fail
CODES = 2  # background error codes per step: 20 x 4 x 2 = 160 families
RETENTION_MS = 7 * 24 * 3600 * 1000
POLL_S = 0.05
# (h)'s span workload: 3x (f)'s, so a run lasts seconds, not one or two, and fetch and
# poll granularity weigh less in the figure.
SCALE_TRACES = 3 * TRACES
TAIL_ROUNDS = 2  # records per partition produced after the workload (measure_scale)

# Every partitioned stage's group suffix and the topic setting it consumes (ADR 0015).
STAGES = (("detect", "events"), ("spans", "spans"), ("traces", "spans_by_trace"),
          ("triage", "summaries"))

TARGET_RESTART_RATIO = 1.5  # 10x within 1.5x of 1x
TARGET_TWO_WORKERS = 1.5  # 2 workers >= 1.5x one
TARGET_SPAN_RATIO = 0.3  # worker end to end >= 0.3x the bare decode loop


def bench_names(label: str) -> testing.Names:
    """A fresh app id ``bench-<label>-<hex>`` and ``bench.<label>-<hex>.<setting>`` for every
    topic setting."""
    tag = f"{label}-{uuid.uuid4().hex[:6]}"
    return testing.Names(f"bench-{tag}", Topics(**{
        f: f"bench.{tag}.{f}" for f in testing.TOPIC_FIELDS}))


# ------------------------------------------------------------------ workload


def healthy_events(first: int, count: int) -> Iterator[dict[str, Any]]:
    """Events ``first`` .. ``first + count - 1`` of the restart log: event ``n`` at
    ``T0_MS + n * EVERY_MS``, services round-robin, each service's steps round-robin; 2%
    fail, spread over ``CODES`` codes per step (each family gets about one error per
    10-minute window: below MIN_COUNT, no incident ever opens)."""
    count_s = len(SERVICES)
    for n in range(first, first + count):
        i, k = n % count_s, n // count_s
        service = SERVICES[i]
        steps = steps_of(service)
        event: dict[str, Any] = {
            "event_time_ms": T0_MS + n * EVERY_MS, "service": service,
            "step": steps[k % len(steps)], "env": "prod", "status": "ok",
            "duration_ms": 5.0 + (n * 7919) % 250 / 10, "service_version": "2.3.1",
            "trace_id": f"{(n + 1) * 0x9E3779B97F4A7C15 % (1 << 128):032x}",
            "span_id": f"{n:016x}", "request_id": f"req-{n}",
            "user_id": f"user-{n % 5000}", "attributes": {"region": "eu-west-1"},
        }
        if k % ERROR_EVERY == i % ERROR_EVERY:
            e = k // ERROR_EVERY
            code = f"E{(e // len(steps)) % CODES:03d}"
            event.update(step=steps[e % len(steps)], status="error", error_code=code,
                         error_message=f"{code} while handling {steps[e % len(steps)]}")
        yield event


async def produce_healthy(bootstrap: str, topic: str, first: int, count: int) -> int:
    """Publish :func:`healthy_events` keyed by service on ``topic`` (created with
    ``PARTITIONS``); the bytes sent."""
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, RETENTION_MS)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=256 * 1024, enable_idempotence=False)
    await producer.start()
    size = 0
    partitioner, partitions = CachedKeyPartitioner(), list(range(PARTITIONS))

    def records() -> Iterator[Outgoing]:
        nonlocal size
        for event in healthy_events(first, count):
            key = event["service"].encode()
            body = orjson.dumps(event)
            size += len(body)
            yield partitioner(key, partitions, partitions), key, body, []

    try:
        await asyncio.gather(*await send_batches(producer, topic, records()))
    finally:
        await producer.stop()
    return size


async def _send_spans(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    """The prebuilt span records, unkeyed round-robin, as :func:`bench.spans.produce_spans`."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024,
                                enable_idempotence=False)
    await producer.start()
    try:
        rows: Iterator[Outgoing] = ((i % PARTITIONS, None, body, [])
                                    for i, body in enumerate(payloads))
        await asyncio.gather(*await send_batches(producer, topic, rows))
    finally:
        await producer.stop()


# ------------------------------------------------------------------ facts on the broker


async def _ends(bootstrap: str, topics: list[str], timeout_s: float
                ) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50)
    await consumer.start()
    try:
        existing = await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in existing
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        consumer.assign(tps)
        # ListOffsets answers at or before the end on Tansu (the base offset of the last
        # batch): the fetch from there carries the true end, the high watermark.
        await consumer.seek_to_end(*tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {topics} in {timeout_s:g}s")
            await consumer.getmany(timeout_ms=100, max_records=1)
        return {(tp.topic, tp.partition): int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await stop_quietly(consumer)


def topic_ends(bootstrap: str, topics: list[str], timeout_s: float = 30.0
               ) -> dict[tuple[str, int], int]:
    """High watermarks (from a fetch, never ListOffsets) of every partition of ``topics``
    that exists; a missing topic has none."""
    return asyncio.run(_ends(bootstrap, topics, timeout_s))


def projected_records(bootstrap: str, names: testing.Names,
                      starts: dict[tuple[str, int], int] | None = None) -> int:
    """Records on the projected topics now, minus ``starts`` (ends taken earlier)."""
    ends = topic_ends(bootstrap, names.projected())
    return sum(ends.values()) - sum((starts or {}).get(k, 0) for k in ends)


def changelog_records(bootstrap: str, app_id: str) -> int:
    """Records on the worker's Faust changelog topics (its checkpoints): what table
    recovery reads on every start."""
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            topics = [t for t in await consumer.topics()
                      if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
        finally:
            await stop_quietly(consumer)
        return sum((await _ends(bootstrap, topics, 30.0)).values()) if topics else 0
    return asyncio.run(run())


def wait_groups(bootstrap: str, groups: list[str], members: int, timeout_s: float = 60.0
                ) -> float:
    """Until every group is Stable with ``members`` members (DescribeGroups, one group a
    request: Tansu's answer for several does not decode); seconds."""
    async def state(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
        answers = await admin.describe_consumer_groups([group])
        g = answers[0].groups[0]
        return str(g[2]), len(g[5])

    async def run() -> float:
        started = time.monotonic()
        last: dict[str, object] = {}
        admin: AIOKafkaAdminClient | None = None
        try:
            while True:
                if admin is None:
                    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                    await admin.start()
                try:
                    for g in groups:
                        last[g] = await state(admin, g)
                except (KafkaError, ValueError) as exc:  # an answer that does not decode
                    last["error"] = repr(exc)
                    await admin.close()
                    admin = None
                else:
                    if all(last[g] == ("Stable", members) for g in groups):
                        return time.monotonic() - started
                if time.monotonic() - started > timeout_s:
                    raise testing.WaitTimeout(f"groups not Stable with {members} members "
                                              f"in {timeout_s:g}s: {last}")
                await asyncio.sleep(0.1)
        finally:
            if admin is not None:
                await admin.close()
    return asyncio.run(run())


def settle(worker: testing.Worker, timeout_s: float = 120.0,
           peers: Iterable[testing.Worker] = ()) -> None:
    """Every stage's group committed at the end of its input (the detector commits after
    its checkpoint), the triage (on ``worker`` and ``peers``, its group) through every
    incident, signal and summary with its report versions acknowledged
    (:meth:`tocsin.testing.Worker.wait_triaged`), then (unless the role is detect)
    DuckDB's positions at the end of every projected topic."""
    deadline = time.monotonic() + timeout_s
    if worker.role != "project":
        for stage, topic in STAGES:
            worker.wait_committed(stage, topic, max(1.0, deadline - time.monotonic()))
        worker.wait_triaged(max(1.0, deadline - time.monotonic()), peers=peers)
    if worker.role != "detect":
        worker.wait_caught_up(max(1.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ restart


@dataclass(frozen=True)
class RestartRun:
    events: int
    event_hours: float
    produce_s: float
    first_settle_s: float  # spawn -> settled, the whole log
    ready_s: float  # restart's spawn -> /readyz 200
    caught_up_s: float  # restart's spawn -> settled again (the tail included)
    changelog_records: int  # checkpoint records table recovery reads on start
    window_records: int  # records on the windows topic
    incidents: int  # records on the incidents topic (read on every assignment)
    checkpoints: int  # the first run's detector checkpoints
    exit_code: int | None


def measure_restart(bootstrap: str, workdir: Path, events: int, label: str,
                    say: Callable[[str], None]) -> RestartRun:
    names = bench_names(label)
    t = time.perf_counter()
    asyncio.run(produce_healthy(bootstrap, names.topic("events"), 0, events))
    produce_s = time.perf_counter() - t
    say(f"(h) {label}: {events:,} events ({events * EVERY_MS / 3.6e6:.1f} h of event time) "
        f"produced in {produce_s:.1f}s; worker until settled")
    worker = TocsinWorker(bootstrap, workdir, name=label, names=names)
    code = None
    try:
        t = time.perf_counter()
        worker.start().wait_ready(120.0)
        settle(worker)
        first_s = time.perf_counter() - t
        checkpoints = int(((worker.health() or {}).get("metrics") or {}).get("checkpoints", 0))
        worker.kill()
        asyncio.run(produce_healthy(bootstrap, names.topic("events"), events, RESTART_TAIL))
        changelog = changelog_records(bootstrap, names.app_id)
        say(f"(h) {label}: settled in {first_s:.1f}s, SIGKILLed ({changelog:,} changelog "
            f"records); {RESTART_TAIL:,} more events; restart")
        t = time.perf_counter()
        worker.start().wait_ready(120.0)
        ready_s = time.perf_counter() - t
        settle(worker)
        caught_up_s = time.perf_counter() - t
        ends = topic_ends(bootstrap, [names.topic("windows"), names.topic("incidents")])
    finally:
        code = worker.stop()
    say(f"(h) {label}: ready {ready_s:.2f}s, caught up {caught_up_s:.2f}s after the spawn")
    return RestartRun(
        events, events * EVERY_MS / 3.6e6, produce_s, first_s, ready_s, caught_up_s,
        changelog,
        sum(v for (tp, _), v in ends.items() if tp == names.topic("windows")),
        sum(v for (tp, _), v in ends.items() if tp == names.topic("incidents")),
        checkpoints, code)


# ------------------------------------------------------------------ span workers


@dataclass(frozen=True)
class SpanWorkersRun:
    workers: int
    spans: int
    seconds: float
    join_s: float  # every worker ready and every stage group Stable with them all
    produce_s: float  # the span records published (overlaps the clock)
    projected: int  # records on the projected topics once every stage settled
    spans_in_each: list[int]
    metrics: list[dict[str, Any]]

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds if self.seconds > 0 else 0.0


def measure_span_workers(bootstrap: str, workdir: Path, payloads: list[bytes], spans: int,
                         events: int, count: int, say: Callable[[str], None]
                         ) -> SpanWorkersRun:
    """``spans`` of the payloads' (the workload's, before the tail records) through the
    span intakes and their ``events`` wide events counted by detection: the clock runs
    from the first span decoded until both hold."""
    label = f"spans{count}w"
    names = bench_names(label)
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(names.topic("spans"), PARTITIONS,
                                                    RETENTION_MS)]))
    workers = [TocsinWorker(bootstrap, workdir, role="detect", name=f"{label}-{i}",
                            names=names) for i in range(count)]
    try:
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(120.0)
        wait_groups(bootstrap, [f"{names.app_id}-{s}" for s, _ in STAGES], count)
        join_s = time.perf_counter() - t
        say(f"(h) {count} span worker(s) ready, groups Stable after {join_s:.1f}s; "
            f"producing {len(payloads):,} span records")
        produced: dict[str, float | BaseException] = {}

        def produce() -> None:
            started = time.perf_counter()
            try:
                asyncio.run(_send_spans(bootstrap, names.topic("spans"), payloads))
                produced["s"] = time.perf_counter() - started
            except BaseException as exc:  # noqa: BLE001 - re-raised in the measuring thread
                produced["error"] = exc

        thread = threading.Thread(target=produce, name="bench-span-producer", daemon=True)
        thread.start()
        first: float | None = None
        deadline = time.monotonic() + max(90.0, spans / 1000)
        while True:
            bodies = [w.health() or {} for w in workers]
            now = time.perf_counter()
            read = sum(int(b.get("metrics", {}).get("spans_read", 0)) for b in bodies)
            through = [int(b.get("metrics", {}).get("spans_in", 0)) for b in bodies]
            detected = sum(int(b.get("metrics", {}).get("events_in", 0)) for b in bodies)
            if first is None and read:
                first = now
            if first is not None and sum(through) >= spans and detected >= events:
                break
            if "error" in produced:
                raise RuntimeError(f"producing the spans failed: {produced['error']!r}")
            if time.monotonic() > deadline:
                raise testing.WaitTimeout(f"{count} worker(s) passed {sum(through):,} of "
                                          f"{spans:,} spans, detected {detected:,} of "
                                          f"{events:,} events")
            time.sleep(POLL_S)
        seconds = now - first
        thread.join(60.0)
        settle(workers[0], peers=workers[1:])
        projected = projected_records(bootstrap, names)
        metrics = [dict((w.health() or {}).get("metrics") or {}) for w in workers]
    finally:
        for w in workers:
            w.stop()
    produce_s = produced.get("s")
    return SpanWorkersRun(count, spans, seconds, join_s,
                          produce_s if isinstance(produce_s, float) else float("nan"),
                          projected, through, metrics)


# ------------------------------------------------------------------ the phase


@dataclass(frozen=True)
class ScaleRun:
    """What (h) measured; a figure is None when its part failed (``errors`` says why)."""

    restart_1x: RestartRun | None = None
    restart_10x: RestartRun | None = None
    spans_1: SpanWorkersRun | None = None
    spans_2: SpanWorkersRun | None = None
    bare_decode_spans_per_s: float | None = None  # (f)'s bare decode loop
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    load_1m: float | None = None  # 1-minute load average when (h) started


def measure_scale(bootstrap: str, workdir: Path, say: Callable[[str], None],
                  bare_decode_spans_per_s: float | None) -> ScaleRun:
    """Restart 1x then 10x, then the span workload with 1 and 2 workers; each part on its
    own, a failure kept in ``errors`` and the others still run."""
    errors: dict[str, str] = {}
    runs: dict[str, Any] = {}
    load = os.getloadavg()[0]

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            runs[key] = fn()
        except Exception as exc:  # noqa: BLE001 - keep the other figures
            errors[key] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            say(f"(h) {key} failed: {errors[key]}")

    attempt("restart_1x", lambda: measure_restart(bootstrap, workdir, RESTART_EVENTS,
                                                  "restart-1x", say))
    attempt("restart_10x", lambda: measure_restart(
        bootstrap, workdir, RESTART_EVENTS * RESTART_FACTOR, "restart-10x", say))
    # Two more rounds of one record per partition after the workload, with later spans:
    # the traffic that keeps coming in production. Without them the workload's last
    # records wait out the merge's idle time (TOCSIN_SPANS_IDLE_MS, 2 s: a caught-up quiet
    # partition may still receive an earlier span), in the intake and again in
    # detection's merge of the sources' marks, and the figure measures that wait, not the
    # throughput (it was half of it). One round is not enough: the intake releases a
    # partition's last record only when every partition has one after it. The clock
    # stops when the workload's spans are through and their events detected.
    payloads = [body for body, _ in
                span_records(SCALE_TRACES + TAIL_ROUNDS * PARTITIONS * TRACES_PER_RECORD)]
    spans = SCALE_TRACES * SPANS_PER_TRACE
    # The wide events the workload's entry spans become, as the intake maps them.
    events = sum(len(wide_events(decode_batch(p).spans))
                 for p in payloads[:-TAIL_ROUNDS * PARTITIONS])
    for n in (1, 2):
        attempt(f"spans_{n}", partial(measure_span_workers, bootstrap, workdir, payloads,
                                      spans, events, n, say))
        if f"spans_{n}" in runs:
            r = runs[f"spans_{n}"]
            say(f"(h) {n} worker(s): {r.spans_per_s:,.0f} spans/s ({r.spans_in_each}), "
                f"{r.projected:,} projected records")
    return ScaleRun(runs.get("restart_1x"), runs.get("restart_10x"), runs.get("spans_1"),
                    runs.get("spans_2"), bare_decode_spans_per_s, errors, load_1m=load)

