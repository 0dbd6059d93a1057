"""Triage, a partitioned stage: lifecycle events, signals and failing-trace summaries in,
report versions out (ADR 0009, ADR 0015).

Keyed by service, as detection is: the consumer group ``<app>-triage`` shares the
partitions of the summaries topic (key = service) among the workers, and partition p's
fold — the pure :class:`~tocsin.processors.triage.Triage` — owns the incidents of the
services that hash to p. Lifecycle events and signals are low volume and correlate across
services (an alert naming only an error code, a downstream), so every fold reads every
partition of both topics: global inputs, read by one assigned consumer and applied to each
fold from its own position.

Every report whose hash changed is published on the reports topic (key = incident id,
value = the report's canonical bytes, headers ``tocsin.report_hash`` and
``tocsin.provenance`` — where each cited record lies, outside the bytes and the hash).
Then, every checkpoint interval, the fold and the position of every input are saved as one
changelog-backed table record (the checkpoint-with-position pattern of ADR 0004): a
restarted worker resumes from it and reads only what came after, never the whole log.
Versions published after the last checkpoint are read back from the reports topic on
restore, so a replay does not publish them twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.partitioner import murmur2

from tocsin.processors.report import canonical_json
from tocsin.processors.traces.summary import SummaryError, decode_summary
from tocsin.processors.triage import Triage, TriageConfig
from tocsin.processors.triage_loop import TriageLoop
from tocsin.schemas.codec import SchemaError, decode_incident, encode_incident
from tocsin.schemas.signal_wire import decode_signal
from tocsin.streams.kafka.dead_letters import DeadLetterSender, of_record
from tocsin.streams.kafka.headers import DELIVERY_HEADER, PROVENANCE_HEADER
from tocsin.streams.kafka.io import (
    commit_quietly,
    new_producer,
    read_to_end,
    stage_consumer,
    stop_quietly,
    wait_partitions,
)
from tocsin.streams.stages.checkpoints import CheckpointStore, checkpoint_due
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, rules_of

log = logging.getLogger("tocsin.triage")

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def _where(rec: Record) -> list[Any]:
    return [rec.topic, rec.partition, rec.offset]


def _delivery(rec: Record) -> str | None:
    for key, value in rec.headers or ():
        if key == DELIVERY_HEADER:
            return bytes(value or b"").decode(errors="replace")
    return None


def owner_of(service: str, partitions: int) -> int:
    """The summaries partition of a service: where aiokafka's default partitioner puts its
    key, as on the events topic (co-partitioned)."""
    return int(murmur2(service.encode()) & 0x7FFFFFFF) % partitions


Decoded: TypeAlias = tuple[str, Any, Any]  # ("incident", event, None) | ("signal", s, delivery)


@dataclass
class TriageRun:
    """One summaries partition's fold and the next position of every input it reads."""

    loop: TriageLoop
    summaries_next: int
    positions: dict[str, int]  # "topic:partition" -> next offset, incidents and signals
    reports_from: dict[int, int]  # reports partition -> first offset not yet checkpointed
    # Each incident's latest version on the reports topic (its hash): what a consumer
    # reading the topic holds now. A version is published only when the fold's differs.
    on_topic: dict[str, str] = field(default_factory=dict)
    # While a restored fold re-reads what its previous owner may already have reported:
    # the input ends ("topic:partition" -> offset, "summaries" -> offset) to reach first.
    catch_up: dict[str, int] | None = None
    pending: list[Any] = field(default_factory=list)  # report sends since the checkpoint
    letters: list[Any] = field(default_factory=list)  # dead-letter sends since then
    changed: bool = True

    def caught_up(self) -> bool:
        ends = self.catch_up or {}
        return all((self.summaries_next if key == "summaries" else
                    self.positions.get(key, 0)) >= end for key, end in ends.items())


class TriageStage(ConsumerRebalanceListener):  # type: ignore[misc]
    """Owns the summaries consumer (group ``<app>-triage``), the consumer of the global
    inputs, one fold per owned partition, their checkpoints and the reports they publish.

    Rebalance callbacks run in the group coordinator's task, beside the main loop: an
    assignment only prepares runs (installed by the main loop between two fetches, so no
    batch fetched before a run's seek reaches it), and a revocation takes the same lock
    as the main loop's apply-publish-checkpoint step."""

    def __init__(self, settings: Settings, bootstrap: str, store: CheckpointStore,
                 metrics: Metrics, registry_lookup: Any = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.metrics = metrics
        self.lookup = registry_lookup
        self.runs: dict[int, TriageRun] = {}
        self.owned: AIOKafkaConsumer | None = None
        self.inputs: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters: DeadLetterSender | None = None
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_checkpoint = time.monotonic()
        self._checkpoint_cost = 0.0  # seconds the last checkpoint took
        self._global: list[TopicPartition] = []
        self._summary_partitions = 1
        self._assigned: dict[int, TriageRun] = {}  # prepared, not installed yet
        self._outbox: list[tuple[TriageRun, str, str, bytes, bytes]] = []
        self._news_outbox: list[tuple[TriageRun, dict[str, Any]]] = []
        rules = rules_of(settings)
        self.config = TriageConfig(news_cooldown_ms=settings.news_cooldown_ms,
                                   rules=None if rules.is_empty else rules)
        self._lock = asyncio.Lock()

    def stop(self) -> None:
        self._stopping.set()

    def positions(self) -> dict[str, Any]:
        """Where the folds stand: each owned summaries partition's next offset, and for
        each global input the least next offset of the folds (what is certainly
        applied everywhere here), plus whether any fold is still catching up."""
        runs = list(self.runs.values())
        topic = self.settings.topics.summaries
        inputs = {f"{tp.topic}:{tp.partition}" for tp in self._global}
        return {"summaries": {f"{topic}:{p}": run.summaries_next
                              for p, run in sorted(self.runs.items())},
                "inputs": {key: min(run.positions.get(key, 0) for run in runs)
                           for key in sorted(inputs)} if runs else {},
                "catching_up": sorted(p for p, run in self.runs.items()
                                      if run.catch_up is not None),
                "outbox": len(self._outbox) + sum(len(r.pending) for r in runs)}

    def owner_of(self, service: str) -> int:
        return owner_of(service, self._summary_partitions)

    async def run(self) -> None:
        s = self.settings
        self.producer = new_producer(self.bootstrap)
        self.dead_letters = DeadLetterSender(self.producer, s.topics.dlq)
        self.owned = stage_consumer(
            self.bootstrap, s.fetch_max_bytes, group=f"{s.app_id}-triage",
            session_timeout_ms=s.session_timeout_ms, max_poll_records=s.max_poll_records)
        self.inputs = stage_consumer(self.bootstrap, s.fetch_max_bytes,
                                     max_poll_records=s.max_poll_records)
        await self.producer.start()
        await self.owned.start()
        await self.inputs.start()
        try:
            self._summary_partitions = len(
                await wait_partitions(self.owned, s.topics.summaries, 20.0))
            self._global = [TopicPartition(t, p) for t in (s.topics.incidents, s.topics.signals)
                            for p in await wait_partitions(self.inputs, t, 20.0)]
            self.inputs.assign(self._global)
            self.owned.subscribe([s.topics.summaries], listener=self)
            while not self._stopping.is_set():
                if self._assigned:
                    await self._install()
                owned = await self.owned.getmany(timeout_ms=50)
                inputs = await self.inputs.getmany(timeout_ms=0 if owned else 50) \
                    if self.runs else {}
                async with self._lock:
                    self._apply_inputs(inputs)
                    for tp, records in owned.items():
                        run = self.runs.get(tp.partition)
                        if run is not None:
                            self._apply_summaries(run, records)
                    await self._publish()
                    due = checkpoint_due(time.monotonic(), self._last_checkpoint,
                                         self._checkpoint_cost, s.checkpoint_interval_ms / 1000)
                    offsets = await self._checkpoint(sorted(self.runs)) if due else {}
                await self._commit(offsets)
            async with self._lock:
                offsets = await self._checkpoint(sorted(self.runs))
            await self._commit(offsets)
        finally:
            await stop_quietly(self.owned, self.inputs, self.producer)

    # ------------------------------------------------------------------ rebalance

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                self._assigned.pop(tp.partition, None)
            parts = sorted(tp.partition for tp in revoked if tp.partition in self.runs)
            if parts:
                await self._publish()
                offsets = await self._checkpoint(parts)
                await self._commit(offsets)
            for p in parts:
                del self.runs[p]
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.owned is not None
        for tp in sorted(assigned, key=lambda t: t.partition):
            saved = await self.store.load(tp.partition)
            if saved is None:
                run = TriageRun(TriageLoop(Triage(self.config)), 0, {}, {})
            else:
                state, offset = saved
                loop = TriageLoop.restore(state["loop"], self.config)
                run = TriageRun(loop, offset, dict(state["positions"]),
                                {int(k): int(v) for k, v in state["reports_from"].items()},
                                dict(state.get("on_topic", loop.triage.last_hash)))
                run.changed = False
            await self._read_back(run, tp.partition)
            self._assigned[tp.partition] = run
            self.owned.seek(tp, run.summaries_next)

    async def _install(self) -> None:
        """Prepared runs start here, in the main loop: every input is sought to the least
        position a run needs, and each new run is to catch up with the ends of its inputs
        as they are now before it publishes (what it re-reads, its previous owner may have
        reported already; the topic's latest versions are in ``on_topic``)."""
        assert self.owned is not None and self.inputs is not None
        async with self._lock:
            fresh, self._assigned = self._assigned, {}
            if not fresh:
                return
            topic = self.settings.topics.summaries
            ends = {f"{tp.topic}:{tp.partition}": end
                    for tp, end in (await self.inputs.end_offsets(self._global)).items()}
            summary_ends = await self.owned.end_offsets(
                [TopicPartition(topic, p) for p in fresh])
            for p, run in sorted(fresh.items()):
                run.catch_up = {**ends, "summaries": summary_ends[TopicPartition(topic, p)]}
                self.runs[p] = run
                self.owned.seek(TopicPartition(topic, p), run.summaries_next)
                log.info("triage partition %s resumes at offset %s (%d incidents, %d "
                         "signals)", p, run.summaries_next, len(run.loop.triage.incidents),
                         len(run.loop.triage.signals))
            for tp in self._global:
                key = f"{tp.topic}:{tp.partition}"
                self.inputs.seek(tp, min(run.positions.get(key, 0)
                                         for run in self.runs.values()))
            self._end_catch_up()
            self.ready.set()

    async def _read_back(self, run: TriageRun, partition: int) -> None:
        """The versions on the reports topic since the checkpoint (all of it without one),
        published by this partition's previous owners: the latest of each of its incidents
        goes into ``on_topic``."""
        records = await read_to_end(self.bootstrap, self.settings.topics.reports,
                                    starts=run.reports_from)
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            try:
                report = orjson.loads(rec.value or b"{}")
                incident, report_hash = report["incident"], report["report_hash"]
                if self.owner_of(incident["service"]) == partition:
                    run.on_topic[incident["id"]] = report_hash
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                continue

    # ------------------------------------------------------------------ inputs

    def _apply_inputs(self, batch: dict[TopicPartition, list[Record]]) -> None:
        topics = self.settings.topics
        for tp, records in sorted(batch.items(), key=lambda kv: (
                kv[0].topic != topics.incidents, kv[0].partition)):
            key = f"{tp.topic}:{tp.partition}"
            for rec in records:
                decoded = self._decode(rec)
                for p, run in self.runs.items():
                    if rec.offset < run.positions.get(key, 0):
                        continue
                    run.positions[key] = rec.offset + 1
                    run.changed = True
                    if decoded is None:
                        continue
                    kind, value, delivery = decoded
                    where = _where(rec)
                    if kind == "incident":
                        # `updated` events are triage's own news (ADR 0018), not changes
                        if self.owner_of(value["service"]) == p \
                                and value["kind"] != "updated":
                            run.loop.apply_incident(value, where)
                    else:
                        run.loop.apply_signal(value, delivery, where)

    def _decode(self, rec: Record) -> Decoded | None:
        try:
            if rec.topic == self.settings.topics.incidents:
                return "incident", decode_incident(rec.value or b"", self.lookup), None
            return "signal", decode_signal(rec.value or b""), _delivery(rec)
        except (SchemaError, KeyError, TypeError, ValueError) as exc:
            self.metrics.stages["triage_inputs_unreadable"] += 1
            log.debug("triage skips %s:%s:%s: %s", rec.topic, rec.partition, rec.offset, exc)
            return None

    def _apply_summaries(self, run: TriageRun, records: list[Record]) -> None:
        limit = self.settings.max_record_bytes
        for rec in records:
            if rec.offset < run.summaries_next:
                continue
            run.summaries_next = rec.offset + 1
            run.changed = True
            try:
                if len(rec.value or b"") > limit:
                    raise SummaryError(f"oversize: {len(rec.value or b'')} bytes > {limit}")
                summary, end_ms = decode_summary(rec.value or b"")
            except SummaryError as exc:
                self._dead_letter(run, rec, f"not a trace summary: {exc}")
                continue
            run.loop.apply_summary(summary, end_ms)
            self.metrics.stages["summaries_applied"] += 1

    def _dead_letter(self, run: TriageRun, rec: Record, reason: str) -> None:
        """Only trace assembly writes the summaries topic: anything else is dead-lettered
        (again after a replay; the projection keys letters by source position)."""
        assert self.dead_letters is not None
        self.metrics.stages["summaries_unreadable"] += 1
        self.metrics.dead_letters += 1
        log.warning("summary %s:%s unreadable: %s", rec.partition, rec.offset, reason)
        run.letters.append(asyncio.ensure_future(self.dead_letters.send(of_record(
            rec, reason, None, self.settings.dlq_max_value_bytes))))

    # ------------------------------------------------------------------ outputs

    async def _publish(self) -> None:
        """Each run's changed versions; a run still catching up folds them silently, and
        once it has caught up publishes the latest version of every incident whose topic
        version differs (a restart coalesces the versions it re-read)."""
        for run in self.runs.values():
            reports = run.loop.flush()
            updates = run.loop.triage.take_updates()
            self.metrics.signals_dropped = max(self.metrics.signals_dropped,
                                               run.loop.triage.signals_dropped)
            if run.catch_up is None:
                for report in reports:
                    self._send(run, report)
                # News goes out only once caught up: what a restart re-reads was told
                # before it (or, made after the last checkpoint, is not told: ADR 0018).
                for update in updates:
                    self._news_outbox.append((run, update))
        self._end_catch_up()
        await self._send_outbox()

    def _end_catch_up(self) -> None:
        for run in self.runs.values():
            if run.catch_up is None or not run.caught_up():
                continue
            run.loop.flush()
            run.catch_up = None
            triage = run.loop.triage
            for incident_id, report_hash in sorted(triage.last_hash.items()):
                if run.on_topic.get(incident_id) != report_hash:
                    self._send(run, triage.report(incident_id))

    def _send(self, run: TriageRun, report: dict[str, Any]) -> None:
        """Queue a version unless it is the incident's latest on the topic already."""
        incident_id, report_hash = report["incident"]["id"], report["report_hash"]
        if run.on_topic.get(incident_id) == report_hash:
            return
        run.on_topic[incident_id] = report_hash
        provenance = orjson.dumps(run.loop.provenance_of(report), option=orjson.OPT_SORT_KEYS)
        self._outbox.append((run, incident_id, report_hash, canonical_json(report),
                             provenance))

    async def _send_outbox(self) -> None:
        """The queued versions, in the order they were made, then the news they carried
        (an `updated` event on the incidents topic names its report version)."""
        assert self.producer is not None
        outbox, self._outbox = self._outbox, []
        news, self._news_outbox = self._news_outbox, []
        for run, incident_id, report_hash, body, provenance in outbox:
            run.pending.append(await self.producer.send(
                self.settings.topics.reports, body, key=incident_id.encode(),
                headers=[("tocsin.report_hash", report_hash.encode()),
                         (PROVENANCE_HEADER, provenance)]))
            self.metrics.reports_published += 1
        for run, update in news:
            event_id = f"{update['incident_id']}:{update['seq']}:{update['news_signature']}"
            run.pending.append(await self.producer.send(
                self.settings.topics.incidents,
                encode_incident(update, self.settings.incident_encoding),
                key=update["incident_id"].encode(),
                headers=[("tocsin.event_id", event_id.encode()),
                         ("tocsin.kind", b"updated")]))
            self.metrics.lifecycle["updated"] += 1

    async def checkpoint(self) -> None:
        """Every run's checkpoint now (the stage's own loop does this on its interval)."""
        async with self._lock:
            offsets = await self._checkpoint(sorted(self.runs))
        await self._commit(offsets)

    async def _checkpoint(self, parts: list[int]) -> dict[TopicPartition, int]:
        """Reports acknowledged, then fold + every input position in one record; the
        summaries offsets to commit (informative: the checkpoint holds the truth)."""
        started = self._last_checkpoint = time.monotonic()
        for p in parts:
            run = self.runs[p]
            if not run.changed and not run.pending and not run.letters:
                continue
            letters, run.letters = run.letters, []
            await asyncio.gather(*letters)
            pending, run.pending = run.pending, []
            for meta in await asyncio.gather(*pending):
                run.reports_from[meta.partition] = max(run.reports_from.get(meta.partition, 0),
                                                       meta.offset + 1)
            if run.catch_up is None:  # incidents the fold forgot leave the topic's map
                run.on_topic = {k: v for k, v in run.on_topic.items()
                                if k in run.loop.triage.incidents}
            await self.store.save(p, {"loop": run.loop.snapshot(), "positions": run.positions,
                                      "reports_from": {str(k): v for k, v in
                                                       run.reports_from.items()},
                                      "on_topic": run.on_topic},
                                  run.summaries_next)
            run.changed = False
            self.metrics.stages["triage_checkpoints"] += 1
        self._checkpoint_cost = time.monotonic() - started
        topic = self.settings.topics.summaries
        return {TopicPartition(topic, p): self.runs[p].summaries_next for p in parts
                if self.runs[p].summaries_next > 0}

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        await commit_quietly(self.owned, offsets, log)
