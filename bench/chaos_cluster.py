"""The moving parts of one campaign run: a broker, worker processes that can be SIGKILLed
and restarted, the producer of the input log, a webhook sender that retries, and the
wait for "everything read, processed and projected".

Workers are ``python -m tocsin run`` subprocesses (:class:`bench.worker.TocsinWorker`,
one per incarnation, each with its own log file; the same HTTP port and DuckDB file
across restarts). A worker that exits without being killed is restarted too (as a
supervisor would) and reported.

Settled means, with the topics' ends taken from fetch high watermarks (Tansu's
``end_offsets`` is not the high watermark): the detection group's committed offsets are
at the end of every events partition (the detector commits after its checkpoint, which
follows the broker's acknowledgement of every effect), the span group's are at the end of
every ``otlp_spans`` partition, the projection's positions in DuckDB are at the end of
every topic it reads, and all of that twice in a row, at least a checkpoint interval
apart, with the same ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tocsin.streams.kafka.broker import free_port
from tocsin.streams.kafka.io import ensure_topics, send_batches, stop_quietly, wait_partitions
from tocsin.streams.worker.app import topic_specs
from tocsin.streams.worker.settings import Settings
from tocsin.testing import Names, Role

from .chaos_workload import Record, SignalRequest
from .tail import TopicTail
from .worker import TocsinWorker

APP_ID = "chaos"
UNUSED_SPANS_TOPIC = "chaos.spans-unused"
# The span merge's idle hold (ADR 0011): a caught-up partition quiet for less than this
# still holds the merge back. Every step writes one record to each partition; 10 s (the
# demo's value) keeps a loaded machine's pauses from ordering records by timing.
SPANS_IDLE_MS = "10000"
SETTLE_GAP_S = 1.5  # > TOCSIN_CHECKPOINT_INTERVAL_MS (1 s, the default)


class CampaignTimeout(RuntimeError):
    """The campaign's time bound passed."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.seconds = seconds

    def check(self, phase: str) -> None:
        if time.monotonic() > self.at:
            raise CampaignTimeout(f"time bound of {self.seconds:.0f}s exceeded during {phase}")


def settings() -> Settings:
    return Settings(app_id=APP_ID)


TOPICS = settings().topics


def worker_env(spans_topic: str | None = None) -> dict[str, str]:
    env = {"TOCSIN_SPANS_IDLE_MS": SPANS_IDLE_MS}  # app id: TocsinWorker sets it
    if spans_topic is not None:
        env["TOCSIN_TOPICS__SPANS"] = spans_topic
    return env


@dataclass
class KillRecord:
    victim: str
    step: int
    trigger: str  # instant | effect | webhook
    fired: bool  # False: the trigger did not fire in time, killed anyway
    waited_s: float  # from arming to the kill
    pid: int
    at_s: float  # since the run started
    uptime_s: float  # since this incarnation was started
    events_published: int
    span_records_published: int
    signals_acked: int
    in_flight_to_victim: int  # webhook requests to the victim not answered at the kill
    metrics: dict[str, Any] | None  # the victim's /healthz metrics just before (None:
    # it did not answer, e.g. still starting)


@dataclass
class Proc:
    """One logical worker (a name, a role, a port, a DuckDB file) across incarnations."""

    name: str
    role: Role
    bootstrap: str
    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    incarnations: int = 0
    worker: TocsinWorker | None = None
    started_at: float = 0.0
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.workdir / f"{self.name}.duckdb"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.incarnations += 1
        w = TocsinWorker(self.bootstrap, self.workdir, role=self.role, env=self.env,
                         name=self.name, http_port=self.port, app_id=APP_ID,
                         log_path=self.workdir / f"{self.name}.{self.incarnations}.log")
        assert w.db_path == self.db_path
        self.worker = w.start()
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.worker is not None and self.worker.proc is not None
        return self.worker.proc.pid

    def kill(self) -> None:
        """SIGKILL this incarnation (if it runs) and reap it."""
        if self.worker is None or self.worker.proc is None:
            return
        proc = self.worker.proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.worker.proc = None

    def exited(self) -> int | None:
        """The exit code if this incarnation ended by itself."""
        if self.worker is None or self.worker.proc is None:
            return None
        return self.worker.proc.poll()

    def supervise(self, restart: bool = True) -> bool:
        """Note (and restart) an incarnation that exited by itself; True if it had."""
        code = self.exited()
        if code is None:
            return False
        assert self.worker is not None
        self.unexpected_exits.append({"incarnation": self.incarnations, "code": code,
                                      "log": str(self.worker.log_path),
                                      "tail": self.worker.log_tail(15)})
        self.worker.proc = None
        if restart:
            self.start()
        return True


async def get_json(session: aiohttp.ClientSession, url: str, body: Any = None,
                   timeout_s: float = 5.0) -> Any:
    """GET (or POST ``body``) and decode; None when there is no good answer."""
    try:
        to = aiohttp.ClientTimeout(total=timeout_s)
        if body is None:
            async with session.get(url, timeout=to) as resp:
                return orjson.loads(await resp.read()) if resp.status == 200 else None
        async with session.post(url, data=orjson.dumps(body), timeout=to,
                                headers={"Content-Type": "application/json"}) as resp:
            return orjson.loads(await resp.read()) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ValueError):
        return None


async def create_topics(bootstrap: str) -> None:
    """Every topic the workers use, created up front with their own specs (explicit
    partitions), so the producer and the watermark reader never race the workers."""
    s = settings()
    specs = topic_specs(s) + topic_specs(Settings(app_id=APP_ID, topics=s.topics.model_copy(
        update={"spans": UNUSED_SPANS_TOPIC})))[-1:]
    await ensure_topics(bootstrap, specs)


class Publisher:
    """The input's producer (never killed): per-partition batches, acks=all."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
            max_batch_size=256 * 1024, max_request_size=8 * 1024 * 1024, linger_ms=2)
        self.events = 0
        self.span_records = 0

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await stop_quietly(self.producer)

    async def publish(self, events: Sequence[Record], spans: Sequence[Record]) -> None:
        futures = await send_batches(self.producer, TOPICS.events,
                                     ((p, k, v, []) for p, k, v in events))
        futures += await send_batches(self.producer, TOPICS.spans,
                                      ((p, k, v, []) for p, k, v in spans))
        await asyncio.gather(*futures)
        self.events += len(events)
        self.span_records += len(spans)


@dataclass
class SignalLog:
    acked: dict[int, list[str]] = field(default_factory=dict)  # request index -> ids
    acked_after_retry_ambiguous: list[int] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    ambiguous: dict[int, list[str]] = field(default_factory=dict)  # sent, no answer
    rejected: dict[int, str] = field(default_factory=dict)  # 4xx other than 429
    mismatched: dict[int, tuple[list[str], list[str]]] = field(default_factory=dict)

    @property
    def acked_ids(self) -> list[str]:
        return [i for ids in self.acked.values() for i in ids]


class SignalSender:
    """POSTs webhooks over ``concurrency`` connections; each request is retried, on the
    next worker in turn, until it is answered 202 (the header ``Idempotency-Key`` carries
    the same key on every attempt). A failure after the request was written (reset,
    timeout, disconnect) is noted as ambiguous: the signal may have been published."""

    def __init__(self, urls: Sequence[str], concurrency: int, deadline: Deadline) -> None:
        self.urls = list(urls)
        self.concurrency = concurrency
        self.deadline = deadline
        self.queue: asyncio.Queue[SignalRequest | None] = asyncio.Queue()
        self.log = SignalLog()
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.pending = 0
        self.in_flight_to: Counter[str] = Counter()  # base URL -> requests not answered

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=True),
            timeout=aiohttp.ClientTimeout(total=15))
        self.tasks = [asyncio.ensure_future(self._client()) for _ in range(self.concurrency)]

    def submit(self, requests: Sequence[SignalRequest], spread_s: float = 0.0) -> None:
        """Queue requests, evenly over the next ``spread_s`` seconds."""
        self.pending += len(requests)
        if spread_s <= 0:
            for r in requests:
                self.queue.put_nowait(r)
            return

        async def paced() -> None:
            start = time.monotonic()
            for j, r in enumerate(requests):
                due = start + (j + 0.5) * spread_s / len(requests)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                self.queue.put_nowait(r)

        self.tasks.append(asyncio.ensure_future(paced()))

    async def drain(self, phase: str) -> None:
        """Until every submitted request was answered 202 (or refused for good)."""
        while self.pending:
            self.deadline.check(phase)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for _ in range(self.concurrency):
            self.queue.put_nowait(None)
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        if self.session is not None:
            await self.session.close()

    async def _client(self) -> None:
        while True:
            request = await self.queue.get()
            if request is None:
                return
            try:
                await self._send(request)
            finally:
                self.pending -= 1

    async def _send(self, r: SignalRequest) -> None:
        assert self.session is not None
        log = self.log
        turn = r.index
        headers = {"Content-Type": "application/json", "Idempotency-Key": r.key}
        while True:
            base = self.urls[turn % len(self.urls)]
            turn += 1
            log.attempts[r.index] += 1
            self.in_flight_to[base] += 1
            try:
                async with self.session.post(base + r.path, data=r.body,
                                             headers=headers) as resp:
                    status, data = resp.status, await resp.read()
            except aiohttp.ClientConnectorError:
                log.failures["connection refused"] += 1
                status = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent, and no answer: the signal may or may not have been published.
                log.failures[type(exc).__name__] += 1
                log.ambiguous.setdefault(r.index, []).append(type(exc).__name__)
                status = None
            finally:
                self.in_flight_to[base] -= 1
            if status == 202:
                ids = list(orjson.loads(data)["signal_ids"])
                log.acked[r.index] = ids
                if r.index in log.ambiguous:
                    log.acked_after_retry_ambiguous.append(r.index)
                if tuple(ids) != r.expected_ids:
                    log.mismatched[r.index] = (ids, list(r.expected_ids))
                return
            if status is not None:
                log.failures[f"HTTP {status}"] += 1
                if 400 <= status < 500 and status != 429:
                    log.rejected[r.index] = f"{status}: {data[:300]!r}"
                    return
            if time.monotonic() > self.deadline.at:
                log.failures["gave up at the time bound"] += 1
                return
            await asyncio.sleep(0.05 + 0.1 * random.random())


class Watermarks:
    """Follows every partition of the given topics to learn their fetch high watermarks
    (the records themselves are dropped)."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []
        self.task: asyncio.Task[None] | None = None
        self.next: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20)
        await self.consumer.start()
        for topic in self.topics:
            parts = await wait_partitions(self.consumer, topic, 20.0)
            self.tps += [TopicPartition(topic, p) for p in parts]
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=50_000)
            for tp, records in batch.items():
                self.next[tp] = records[-1].offset + 1

    def ends(self) -> dict[tuple[str, int], int] | None:
        """Every partition's end, if this reader is at the end of each; else None."""
        assert self.consumer is not None
        out = {}
        for tp in self.tps:
            high = self.consumer.highwater(tp)
            if high is None or self.next.get(tp, 0) < high:
                return None
            out[(tp.topic, tp.partition)] = high
        return out

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await stop_quietly(self.consumer)


async def committed(bootstrap: str, group: str, topic: str, partitions: int
                    ) -> dict[int, int]:
    """A group's committed offsets (0 where none), read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0
                for p in range(partitions)}
    finally:
        await stop_quietly(consumer)


async def positions(session: aiohttp.ClientSession, projector: Proc
                    ) -> dict[tuple[str, int], int] | None:
    body = await get_json(session, projector.base_url + "/v1/query",
                          {"sql": 'SELECT topic, "partition", next_offset FROM positions'})
    if body is None:
        return None
    return {(t, p): o for t, p, o in body["rows"]}


PROJECTED = tuple(Names(APP_ID, TOPICS).projected())  # what the DuckDB projection reads


async def lag(bootstrap: str, marks: Watermarks, session: aiohttp.ClientSession,
              projector: Proc, partitions: int, procs: Sequence[Proc] = ()
              ) -> tuple[dict[str, int], Any]:
    """(records behind, per stage; the ends seen) — all zeros means caught up. Span
    events a detector holds for its sources' progress count as behind (its commits are
    at the end: they are in its checkpoint)."""
    ends = marks.ends()
    if ends is None:
        return {"watermarks": -1}, None
    behind: dict[str, int] = {}
    for group, topic in ((f"{APP_ID}-detect", TOPICS.events),
                         (f"{APP_ID}-spans", TOPICS.spans)):
        done = await committed(bootstrap, group, topic, partitions)
        behind[group] = sum(ends[(topic, p)] - done[p] for p in range(partitions))
    pos = await positions(session, projector)
    if pos is None:
        behind["projection"] = -1
    else:
        behind["projection"] = sum(ends[(t, p)] - pos.get((t, p), 0)
                                   for t in PROJECTED for p in range(partitions))
    for proc in procs:
        if proc.role != "project" and proc.exited() is None:
            body = await get_json(session, proc.base_url + "/healthz", timeout_s=1.0) or {}
            behind["held"] = behind.get("held", 0) + int(body.get("held_span_events", 1))
    if marks.ends() != ends:
        behind["moving"] = 1
    return behind, ends


async def wait_settled(bootstrap: str, marks: Watermarks, session: aiohttp.ClientSession,
                       projector: Proc, procs: Sequence[Proc], partitions: int,
                       deadline: Deadline, say: Any, phase: str) -> float:
    """Seconds until two checks in a row, ``SETTLE_GAP_S`` apart, see nothing behind
    and the same ends (a worker exiting by itself meanwhile is restarted)."""
    started = time.monotonic()
    previous: Any = None
    last_note = 0.0
    while True:
        deadline.check(phase)
        for proc in procs:
            if proc.supervise():
                say(f"{proc.name} exited by itself; restarted (incarnation "
                    f"{proc.incarnations})")
        behind, ends = await lag(bootstrap, marks, session, projector, partitions, procs)
        if ends is not None and not any(behind.values()):
            if previous == ends:
                return time.monotonic() - started
            previous = ends
            await asyncio.sleep(SETTLE_GAP_S)
            continue
        previous = None
        if time.monotonic() - last_note > 10:
            last_note = time.monotonic()
            say(f"{phase}: behind {behind}")
        await asyncio.sleep(0.25)


async def wait_ready(session: aiohttp.ClientSession, procs: Sequence[Proc],
                     deadline: Deadline, phase: str) -> None:
    """Every worker answers; every detection worker holds partitions; the projection
    has read what there was."""
    while True:
        deadline.check(phase)
        ready = True
        for proc in procs:
            if proc.exited() is not None:
                assert proc.worker is not None
                raise RuntimeError(f"{proc.name} exited with {proc.exited()} at start:\n"
                                   f"{proc.worker.log_tail()}")
            body = await get_json(session, proc.base_url + "/healthz") or {}
            detecting = proc.role == "project" or bool(body.get("partitions"))
            projecting = proc.role == "detect" or bool(body.get("projection_caught_up"))
            ready = ready and bool(body) and detecting and projecting
        if ready:
            return
        await asyncio.sleep(0.2)


def effects(metrics: dict[str, Any]) -> int:
    """What a detection worker has sent that a replay would derive again: lifecycle
    events, deploys and dead letters."""
    return (sum(dict(metrics.get("lifecycle") or {}).values())
            + int(metrics.get("deploys_registered", 0)) + int(metrics.get("dead_letters", 0)))


EFFECT_WAIT_S = 10.0
WEBHOOK_WAIT_S = 5.0


class Killer:
    """Executes the kill plan, one kill at a time, beside the step loop: each kill is
    armed when its step's records are acknowledged, waits for its trigger, SIGKILLs the
    victims and restarts them at once.

    Effects are watched where they show first: a detection worker's counters on
    ``/healthz`` (it checkpoints only every second after them); the projection's report
    versions on ``tocsin.reports`` itself (followed with :class:`bench.tail.TopicTail`):
    once a version is readable there the broker has it, and the projection's DuckDB
    transaction for that batch comes only after the acknowledgement."""

    def __init__(self, bootstrap: str, procs: Sequence[Proc], sender: SignalSender,
                 publisher: Publisher, session: aiohttp.ClientSession, say: Any) -> None:
        self.procs = list(procs)
        self.by_name = {p.name: p for p in procs}
        self.sender = sender
        self.publisher = publisher
        self.session = session
        self.say = say
        self.queue: asyncio.Queue[tuple[Any, int] | None] = asyncio.Queue()
        self.records: list[KillRecord] = []
        self.t0 = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.planned = 0
        self.reports_seen = 0
        self.reports = TopicTail(bootstrap, TOPICS.reports, self._on_report)

    def _on_report(self, record: Any, arrived: float) -> None:
        self.reports_seen += 1

    async def start(self, t0: float, planned: int) -> None:
        self.t0, self.planned = t0, planned
        await self.reports.start()
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.reports.stop()

    def arm(self, kill: Any, step: int) -> None:
        self.queue.put_nowait((kill, step))

    async def finish(self, deadline: Deadline) -> None:
        """Until every armed kill happened."""
        self.queue.put_nowait(None)
        assert self.task is not None
        while not self.task.done():
            deadline.check("chaos: the last kills")
            await asyncio.sleep(0.05)
        self.task.result()

    async def _health(self, proc: Proc) -> dict[str, Any] | None:
        body = await get_json(self.session, proc.base_url + "/healthz", timeout_s=1.0)
        return None if body is None else dict(body["metrics"])

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kill, step = item
            armed = time.monotonic()
            victims, fired, seen = await self._wait(kill)
            for proc in victims:
                metrics = seen.get(proc.name)
                if kill.trigger == "instant" or metrics is None:
                    metrics = await self._health(proc)
                self.records.append(KillRecord(
                    proc.name, step, kill.trigger, fired, round(time.monotonic() - armed, 3),
                    proc.pid, round(time.monotonic() - self.t0, 2),
                    round(time.monotonic() - proc.started_at, 2), self.publisher.events,
                    self.publisher.span_records, len(self.sender.log.acked),
                    self.sender.in_flight_to[proc.base_url], metrics))
                proc.kill()
            for proc in victims:
                proc.start()
            note = "" if fired else " (trigger did not fire in time)"
            self.say(f"chaos: step {step}: SIGKILL {'+'.join(p.name for p in victims)} "
                     f"[{kill.trigger}{note}] ({len(self.records)}/{self.planned}), "
                     "restarted")

    async def _wait(self, kill: Any) -> tuple[list[Proc], bool, dict[str, Any]]:
        """(victims, whether the trigger fired, their metrics as last seen)."""
        delay = kill.delay_ms / 1000
        if kill.trigger == "instant":
            await asyncio.sleep(delay)
            return [self.by_name[n] for n in kill.victims], True, {}
        if kill.trigger == "webhook":
            victim = self.by_name[kill.victims[0]]
            until = time.monotonic() + WEBHOOK_WAIT_S
            while time.monotonic() < until and not self.sender.in_flight_to[victim.base_url]:
                await asyncio.sleep(0.001)
            fired = bool(self.sender.in_flight_to[victim.base_url])
            await asyncio.sleep(delay)
            return [victim], fired, {}
        role = kill.victims[0]
        candidates = [p for p in self.procs if p.role == role]
        if role == "project":
            seen_before = self.reports_seen
            until = time.monotonic() + EFFECT_WAIT_S
            while time.monotonic() < until and self.reports_seen == seen_before:
                await asyncio.sleep(0.001)
            fired = self.reports_seen > seen_before
            await asyncio.sleep(delay)
            return candidates[:1], fired, {}
        base: dict[str, int] = {}
        seen: dict[str, Any] = {}
        until = time.monotonic() + EFFECT_WAIT_S
        while time.monotonic() < until:
            for proc in candidates:
                metrics = await self._health(proc)
                if metrics is None:
                    continue
                seen[proc.name] = metrics
                count = effects(metrics)
                if proc.name not in base:
                    base[proc.name] = count
                elif count > base[proc.name]:
                    await asyncio.sleep(delay)
                    return [proc], True, seen
            await asyncio.sleep(0.005)
        return [candidates[kill.delay_ms % len(candidates)]], False, seen
