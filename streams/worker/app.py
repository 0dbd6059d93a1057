"""The one Faust app: its state table, its services and its HTTP surface.

Explicit wiring, no autodiscovery: :func:`create_app` builds everything from settings so
tests and the CLI get the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.errors import KafkaError

from tocsin.processors.detector import SNAPSHOT_VERSION
from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.kafka.io import TopicSpec, ensure_topics, new_producer, stop_quietly
from tocsin.streams.query import QueryService
from tocsin.streams.stages.checkpoints import TableCheckpoints
from tocsin.streams.stages.detect import Detection
from tocsin.streams.stages.handoff import HandOff
from tocsin.streams.stages.notify import Notifier
from tocsin.streams.stages.project import Projection
from tocsin.streams.stages.spans import SpanIntake
from tocsin.streams.stages.traces import TraceStage
from tocsin.streams.stages.triage import TriageStage
from tocsin.streams.web.actions import ActionDesk
from tocsin.streams.web.auth import Access
from tocsin.streams.web.intake import Intake
from tocsin.streams.web.live import LiveFeed
from tocsin.streams.web.views import register_views
from tocsin.streams.worker import logging_limits
from tocsin.streams.worker.collector import CollectionSchedule, collect_on_schedule
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, rules_of

log = logging.getLogger("tocsin")


def state_table_name(settings: Settings) -> str:
    """Versioned by snapshot layout, detector settings and rules file (ADR 0022): old
    state is never misread. Without a rules file the name is what it was before them."""
    rules = rules_of(settings)
    suffix = "" if rules.is_empty else f"-r{rules.fingerprint()}"
    return f"detector-state-v{SNAPSHOT_VERSION}-{settings.detector.fingerprint()}{suffix}"


STAGES_STATE = "stages-state-v1"
"""The trace assembly's and triage's checkpoints (keys ``traces:<p>``, ``triage:<p>``);
the version changes with their layout."""


class Worker(mode.Service):
    """Runs the detection loop and the DuckDB projection inside the Faust worker."""

    def __init__(self, app: faust.App, settings: Settings, bootstrap: str, table: Any,
                 metrics: Metrics, sink: DuckDBSink | None, stages_table: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.sink = sink
        self.queries: QueryService | None = None  # analysts' reads (ADR 0006)
        self.detection: Detection | None = None
        self.projection: Projection | None = None
        self.table = table
        self.stages_table = stages_table
        self.traces: TraceStage | None = None
        self.triage: TriageStage | None = None
        self._runs: list[asyncio.Task[None]] = []
        self._producers: list[AIOKafkaProducer] = []
        self.intake: Intake | None = None
        self.actions: ActionDesk | None = None
        self.notifier: Notifier | None = None
        self.spans: SpanIntake | None = None
        self.access = Access(settings.api_tokens, settings.intake_tokens)
        # What the live page's stream tells (GET /v1/stream): this process's epoch tells
        # a reconnecting client whether it can resume
        self.live = LiveFeed(epoch=str(time.time_ns() // 1_000_000))
        self.broker_ok = True
        self._watchdog: asyncio.Future[None] | None = None
        self._collector: asyncio.Future[None] | None = None
        self.started_once = False

    def readiness(self) -> dict[str, bool]:
        """Each part this worker's role runs, and whether it is up (``/readyz``)."""
        s = self.settings
        parts: dict[str, bool] = {"broker": self.broker_ok}
        if s.http_port > 0:
            parts["intake"] = self.intake is not None
        if s.role in ("all", "detect"):
            parts["detection"] = bool(self.detection and self.detection.ready.is_set())
            parts["spans"] = bool(self.spans and self.spans.running.is_set())
            parts["traces"] = bool(self.traces and self.traces.ready.is_set())
            parts["triage"] = bool(self.triage and self.triage.ready.is_set())
        if s.role in ("all", "project") and self.sink is not None:
            parts["projection"] = bool(self.projection and self.projection.running.is_set())
            if s.notify.channels():
                parts["notifier"] = bool(self.notifier and self.notifier.running.is_set())
        if all(parts.values()):
            self.started_once = True
        return parts

    async def on_started(self) -> None:
        logging_limits.install()
        # Cycle collection on a timer (the runner turned the allocation-counted one off).
        self._collector = asyncio.ensure_future(collect_on_schedule(
            CollectionSchedule(time.monotonic())))
        self._runs.append(asyncio.ensure_future(self._main()))

    async def _main(self) -> None:
        s = self.settings
        await self._guard(ensure_topics(self.bootstrap, topic_specs(s), s.replication_factor))
        # Not among the runs on_stop waits for: it never ends by itself, it is cancelled.
        self._watchdog = asyncio.ensure_future(self._guard(self._watch_broker()))
        if s.http_port > 0:
            producer = new_producer(self.bootstrap)
            await self._guard(producer.start())
            self._producers.append(producer)
            self.intake = Intake(s, producer, self.metrics)
        if s.role in ("all", "project") and self.sink is not None:
            self.projection = Projection(s, self.bootstrap, self.sink, self.metrics)
            told: list[Callable[..., None]] = []
            if s.http_port > 0:
                # Operator actions: taken where the projection is, decided by detection
                self.actions = ActionDesk(self.sink, partial(_send, producer),
                                          s.topics.events,
                                          timeout_s=s.action_timeout_ms / 1000)
                told.append(self.actions.written)
            if s.notify.channels():
                self.notifier = Notifier(s, self.bootstrap, self.sink, self.metrics)
                told.append(self.notifier.written)
                self._runs.append(asyncio.ensure_future(self._guard(self.notifier.run())))
            if s.http_port > 0:
                told.append(self.live.written)
                self.projection.on_reports = self.live.reports
            if told:
                self.projection.on_written = partial(_tell, told)
            self._runs.append(asyncio.ensure_future(self._guard(self.projection.run())))
        if s.role in ("all", "detect"):
            handoff, events_handoff = HandOff(), HandOff()
            self.spans = SpanIntake(s, self.bootstrap, self.metrics, handoff, events_handoff)
            self._runs.append(asyncio.ensure_future(self._guard(self.spans.run())))
            await self.app.tables.wait_until_recovery_completed()
            self.traces = TraceStage(s, self.bootstrap, TableCheckpoints(
                self.app, self.stages_table, "traces"), self.metrics)
            self.traces.handoff = handoff
            self._runs.append(asyncio.ensure_future(self._guard(self.traces.run())))
            self.triage = TriageStage(s, self.bootstrap, TableCheckpoints(
                self.app, self.stages_table, "triage"), self.metrics)
            self._runs.append(asyncio.ensure_future(self._guard(self.triage.run())))
            if self.notifier is not None:
                # A first start tells changes from its position on: it is taken before
                # this process's detection makes any.
                await self.notifier.positioned.wait()
            self.detection = Detection(
                s, self.bootstrap, TableCheckpoints(self.app, self.table), self.metrics)
            self.detection.handoff = events_handoff
            await self._guard(self.detection.run())

    async def _watch_broker(self) -> None:
        """Every second: is the broker there, and are our topics still on it? (ADR 0014)

        Away for longer than ``broker_outage_exit_ms``, or back without our topics (an
        embedded broker restarts empty): the worker exits non-zero with one line, so a
        supervisor restarts it; the restart recreates the topics and meets the reset log
        rule. Meanwhile readiness says ``broker: false``."""
        s = self.settings
        names = {spec.name for spec in topic_specs(s)}
        away_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            problem = await broker_problem(self.bootstrap, names, timeout_s=3.0)
            now = loop.time()
            if problem is None:
                if away_since is not None:
                    log.warning("broker is back after %.1f s", now - away_since)
                away_since = None
                self.broker_ok = True
            else:
                self.metrics.broker_errors += 1
                self.broker_ok = False
                if problem.startswith("missing"):
                    raise BrokerLost(f"tocsin: the broker at {self.bootstrap} came back "
                                     f"without our topics ({problem}): it restarted empty; "
                                     "exiting so that a restart recreates them")
                if away_since is None:
                    away_since = now
                    log.error("broker unreachable (%s); exiting if it stays away %d s",
                              problem, s.broker_outage_exit_ms // 1000)
                if (now - away_since) * 1000 >= s.broker_outage_exit_ms:
                    raise BrokerLost(f"tocsin: broker at {self.bootstrap} unreachable for "
                                     f"{now - away_since:.0f} s ({problem}); exiting")
            await asyncio.sleep(1.0)

    async def _guard(self, work: Awaitable[None]) -> None:
        """Any failure crashes the whole worker (non-zero exit): a supervisor restarts it
        and it resumes from its checkpoints; limping on half-working would hide it."""
        try:
            await work
        except BrokerLost as exc:
            print(exc, file=sys.stderr, flush=True)  # the one clear line
            log.error("%s", exc)
            await self.crash(exc)
        except Exception as exc:
            log.exception("worker failed; stopping so that a restart resumes from state")
            await self.crash(exc)

    async def on_stop(self) -> None:
        self.live.close()  # open streams end, so the web server stops at once
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._collector is not None:
            self._collector.cancel()
        if self.detection is not None:
            self.detection.stop()
        if self.projection is not None:
            self.projection.stop()
        if self.notifier is not None:
            self.notifier.stop()
        for stage in (self.spans, self.traces, self.triage):
            if stage is not None:
                stage.stop()
        if self._runs:
            await asyncio.wait(self._runs, timeout=15)
        await stop_quietly(*self._producers)
        if self.queries is not None:
            await self.queries.close()
        if self.sink is not None:
            self.sink.close()


def _tell(listeners: list[Callable[..., None]], *written: Any) -> None:
    for listener in listeners:
        listener(*written)


async def _send(producer: AIOKafkaProducer, topic: str, value: bytes, key: bytes,
                headers: list[tuple[str, bytes]]) -> None:
    await producer.send_and_wait(topic, value, key=key, headers=headers)


class BrokerLost(RuntimeError):
    """The broker stayed away, or came back without our topics: exit, be restarted."""


async def broker_problem(bootstrap: str, topics: set[str], timeout_s: float) -> str | None:
    """None when the broker answers metadata in time and holds every topic, else why not."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                            metadata_max_age_ms=1000)
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            metadata = await client.fetch_all_metadata()
    except (TimeoutError, KafkaError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    missing = sorted(topics - metadata.topics())
    return f"missing {', '.join(missing)}" if missing else None


def topic_specs(s: Settings) -> list[TopicSpec]:
    t = s.topics
    return [
        TopicSpec(t.events, s.partitions, s.retention_ms),
        TopicSpec(t.incidents, s.partitions, s.incident_retention_ms),
        TopicSpec(t.windows, s.partitions, s.retention_ms),
        TopicSpec(t.dlq, s.partitions, s.retention_ms),
        TopicSpec(t.signals, s.partitions, s.retention_ms),
        TopicSpec(t.reports, s.partitions, s.incident_retention_ms),
        TopicSpec(t.spans, s.partitions, s.retention_ms),
        # Internal: regrouped spans only live until their traces close; summaries as long
        # as the triage keeps them for families (72 h, the events' retention).
        TopicSpec(t.spans_by_trace, s.partitions, 6 * 3600 * 1000),
        TopicSpec(t.summaries, s.partitions, s.retention_ms),
    ]


def create_app(settings: Settings, bootstrap: str) -> tuple[faust.App, Worker]:
    s = settings
    app = faust.App(
        s.app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        broker_session_timeout=s.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(s.session_timeout_ms / 6000, 0.3),
        web_enabled=s.http_port > 0,
        web_port=s.http_port or 6066,
        web_bind=s.http_bind,
        web_in_thread=False,
        producer_max_request_size=16 * 1024 * 1024,
        # Faust's producer only carries checkpoints. One record per batch makes Tansu's
        # ListOffsets answer (base offset of the last batch + 1) the true end, so table
        # recovery does not stop before the newest checkpoint (measured; ADR 0004).
        producer_max_batch_size=1,
        producer_compression_type=None,
        consumer_auto_offset_reset="earliest",
        datadir=f"{s.db}.faust",
    )
    # use_partitioner: written from our service, not from inside a stream iteration.
    # recovery_buffer_size=1: a standby worker applies other workers' checkpoints at once,
    # so whoever takes a partition over after a rebalance resumes from the latest one.
    table = app.GlobalTable(state_table_name(s), default=None, partitions=s.partitions,
                            use_partitioner=True, recovery_buffer_size=1,
                            value_type=bytes)
    stages_table = app.GlobalTable(STAGES_STATE, default=None, partitions=s.partitions,
                                   use_partitioner=True, recovery_buffer_size=1,
                                   value_type=bytes)
    metrics = Metrics()
    sink = DuckDBSink(s.db) if s.role in ("all", "project") else None
    worker = Worker(app, s, bootstrap, table, metrics, sink, stages_table)
    app._extra_services.append(worker)  # type: ignore[arg-type]  # noqa: SLF001 - an instance, not a class
    if s.http_port > 0:
        # Request heads within the header timeout (an idle keep-alive connection is closed
        # after it too), bounded head sizes, and no inflation by the server: bodies are
        # read and inflated under Tocsin's own limits (streams/web/bodies.py).
        app.web.web_app._handler_args = {  # type: ignore[attr-defined]  # noqa: SLF001
            "keepalive_timeout": s.http_header_timeout_ms / 1000,
            "max_line_size": 8190, "max_field_size": 8190, "max_headers": 100,
            "auto_decompress": False,
            # A client that goes away cancels its handler (and so its query).
            "handler_cancellation": True,
            # After a body refused unread (408, 413) the rest is drained for at most 1 s
            # before the connection closes (aiohttp's default waits 10 s).
            "lingering_time": 1.0,
        }
        worker.queries = QueryService.from_settings(sink, s) if sink is not None else None
        register_views(app, worker, metrics, worker.queries)
    return app, worker
