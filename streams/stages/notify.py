"""The notifier: lifecycle changes in, Slack, PagerDuty and webhook deliveries out (ADR 0017).

It runs beside the DuckDB projection (one per database) and reads the incidents topic with
a consumer of its own, so a slow or dead receiver delays its own deliveries and nothing
else: detection, triage and the projection never wait on it.

What is owed is recorded before anything is sent: for each lifecycle change a channel
wants, a ``pending`` row of ``notifications`` with its deterministic id, written in one
DuckDB transaction with the notifier's read position. Each attempt's outcome updates the
row (``delivered``, or ``pending`` with the next try, or ``failed`` once the attempts are
spent or the receiver refused for good). A restart resumes from the recorded position and
takes the pending rows up again, so a change is never told twice — except when the worker
dies between a receiver's answer and the row's update; then it is told again with the same
notification id (and PagerDuty's dedup key), which receivers use to drop the repeat.

Per channel and incident, notifications go in sequence order: an acknowledgement is not
sent before the trigger it acknowledges. A notification waits up to ``report_wait_ms`` for
the report version that knows its change (triage publishes one per change), then goes
without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tocsin.processors.notify import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RetryPolicy,
    next_try_ms,
    notification_id,
    outcome,
    pagerduty_event,
    signature,
    slack_message,
    wanted,
    webhook_body,
)
from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.kafka.headers import mark_of
from tocsin.streams.kafka.io import stage_consumer, stop_quietly, wait_partitions
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

log = logging.getLogger("tocsin.notify")
POSITION_PREFIX = "notify|"  # the notifier's rows in `positions`, beside the projection's
ERROR_KEPT = 300  # characters of a receiver's answer kept as last_error
IN_FLIGHT = 8  # deliveries at once


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Notifier:
    def __init__(self, settings: Settings, bootstrap: str, sink: DuckDBSink,
                 metrics: Metrics, clock: Callable[[], int] = wall_clock_ms) -> None:
        self.settings = settings
        self.cfg = settings.notify
        self.bootstrap = bootstrap
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.channels = self.cfg.channels()
        self.policy = RetryPolicy(self.cfg.backoff_ms, self.cfg.backoff_cap_ms,
                                  self.cfg.attempts)
        self.running = asyncio.Event()
        self.positioned = asyncio.Event()  # its read position is known (and recorded)
        self.wake = asyncio.Event()  # new rows, a new report, a delivery done
        self._stopping = asyncio.Event()
        self._owed: dict[str, dict[str, Any]] = {}  # pending rows by notification id
        self._flying: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports_news = False  # the projection wrote since the last look

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def written(self, *_: Any) -> None:
        """The projection committed a batch (a report may have come): look again."""
        self._reports_news = True
        self.wake.set()

    async def run(self) -> None:
        topic = self.settings.topics.incidents
        consumer = stage_consumer(self.bootstrap, self.settings.fetch_max_bytes,
                                  max_poll_records=2_000)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_ms / 1000)
        session = aiohttp.ClientSession(timeout=timeout)
        await consumer.start()
        dispatcher: asyncio.Task[None] | None = None
        try:
            tps = [TopicPartition(topic, p)
                   for p in await wait_partitions(consumer, topic, 20.0)]
            consumer.assign(tps)
            saved = await asyncio.to_thread(self.sink.positions)
            mine = {tp: saved.get((POSITION_PREFIX + topic, tp.partition)) for tp in tps}
            if all(offset is None for offset in mine.values()):
                # The first start tells what happens from now on, not the topic's history
                # (a pager added to a running Tocsin is not flooded); recorded at once,
                # so a restart before the first change still reads from here.
                ends = await consumer.end_offsets(tps)
                mine = {tp: int(ends[tp]) for tp in tps}
                await asyncio.to_thread(self.sink.notifications_found, [], {
                    (POSITION_PREFIX + topic, tp.partition): int(ends[tp]) for tp in tps})
            for tp, offset in mine.items():
                if offset is None:  # a partition added since: all of it is new
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            self.positioned.set()
            for row in await asyncio.to_thread(self.sink.pending_notifications):
                self._owed[row["notification_id"]] = row
            dispatcher = asyncio.ensure_future(self._dispatch(session))
            self.running.set()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if batch:
                    await self._read(consumer, batch)
                if dispatcher.done() and not self._stopping.is_set():
                    # It never ends by itself: its failure is the stage's
                    dispatcher.result()
                    raise RuntimeError("the notification dispatcher stopped")
        finally:
            self._stopping.set()
            self.wake.set()
            if dispatcher is not None:
                await asyncio.gather(dispatcher, return_exceptions=True)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await session.close()
            await stop_quietly(consumer)

    async def _read(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, Any]
                    ) -> None:
        """Owe a notification per channel that wants each change; record them with the
        read positions."""
        rows: list[dict[str, Any]] = []
        positions: dict[tuple[str, int], int] = {}
        now = self.clock()
        for tp, records in sorted(batch.items(), key=lambda kv: kv[0].partition):
            for rec in records:
                positions[(POSITION_PREFIX + tp.topic, tp.partition)] = rec.offset + 1
                if not rec.value and mark_of(rec.headers) is not None:
                    continue
                try:  # what is not an incident event the projection dead-letters
                    event = decode_incident(rec.value or b"")
                    incident_id, seq, kind = event["incident_id"], event["seq"], event["kind"]
                except (SchemaError, KeyError, TypeError):
                    continue
                for channel in self.channels:
                    if not wanted(channel, kind):
                        continue
                    rows.append({
                        "notification_id": notification_id(
                            channel, incident_id, seq,
                            event.get("news_signature") if kind == "updated" else None),
                        "channel": channel, "incident_id": incident_id, "seq": seq,
                        "kind": kind, "status": "pending", "attempts": 0,
                        "last_status": None, "last_error": None, "created_ms": now,
                        "next_try_ms": now, "delivered_ms": None, "report_hash": None,
                        "event": orjson.dumps(event).decode()})
        await asyncio.to_thread(self.sink.notifications_found, rows, positions)
        for row in rows:
            self._owed.setdefault(row["notification_id"], row)
        if rows:
            self.metrics.stages["notifications_owed"] += len(rows)
            self.wake.set()

    def _due(self, now: int, news: bool = False) -> tuple[list[dict[str, Any]], int | None]:
        """Rows to try now (the first owed of each channel and incident), and when the
        next one will be. With ``news`` (the projection wrote), rows waiting for their
        report look again."""
        first: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self._owed.values():
            key = (row["channel"], row["incident_id"])
            if key not in first or row["seq"] < first[key]["seq"]:
                first[key] = row
        due, later = [], None
        waiting = [r for r in first.values() if r["notification_id"] not in self._flying]
        for row in sorted(waiting, key=lambda r: (r["next_try_ms"], r["created_ms"],
                                                  r["incident_id"], r["seq"])):
            if row["next_try_ms"] <= now or (news and row.get("report_pending")):
                due.append(row)
            elif later is None or row["next_try_ms"] < later:
                later = row["next_try_ms"]
        return due, later

    async def _dispatch(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            self.wake.clear()
            news, self._reports_news = self._reports_news, False
            due, later = self._due(self.clock(), news)
            for row in due[:max(0, IN_FLIGHT - len(self._flying))]:
                self._flying.add(row["notification_id"])
                task = asyncio.ensure_future(self._deliver(session, row))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            wait_s = None if later is None else max(0.0, (later - self.clock()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait_s)

    def _request(self, row: dict[str, Any], event: dict[str, Any],
                 report: dict[str, Any] | None) -> tuple[str, bytes, dict[str, str]]:
        cfg = self.cfg
        headers = {"Content-Type": "application/json", ID_HEADER: row["notification_id"]}
        channel = row["channel"]
        if channel == "slack":
            assert cfg.slack_webhook_url is not None
            return cfg.slack_webhook_url, orjson.dumps(slack_message(event, report)), headers
        if channel == "pagerduty":
            assert cfg.pagerduty_routing_key is not None
            return cfg.pagerduty_url, orjson.dumps(pagerduty_event(
                event, report, cfg.pagerduty_routing_key)), headers
        assert cfg.webhook_url is not None
        body = webhook_body(row["notification_id"], event, report)
        stamp = self.clock() // 1000
        headers[TIMESTAMP_HEADER] = str(stamp)
        if cfg.webhook_secret:
            headers[SIGNATURE_HEADER] = signature(cfg.webhook_secret, stamp, body)
        return cfg.webhook_url, body, headers

    async def _deliver(self, session: aiohttp.ClientSession, row: dict[str, Any]) -> None:
        try:
            await self._attempt(session, row)
        except Exception:  # one delivery's bug must not stop the others
            log.exception("notification %s: attempt failed unexpectedly",
                          row["notification_id"])
            row["next_try_ms"] = self.clock() + self.cfg.backoff_cap_ms
        finally:
            self._flying.discard(row["notification_id"])
            self.wake.set()

    async def _attempt(self, session: aiohttp.ClientSession, row: dict[str, Any]) -> None:
        event = orjson.loads(row["event"])
        body = await asyncio.to_thread(self.sink.report_for, row["incident_id"], row["seq"])
        now = self.clock()
        if body is None and now < row["created_ms"] + self.cfg.report_wait_ms:
            # The report of this change is on its way (or triage is behind): look again
            # when the projection writes, or when the wait is over.
            row["next_try_ms"] = row["created_ms"] + self.cfg.report_wait_ms
            row["report_pending"] = True
            return
        row.pop("report_pending", None)
        report = orjson.loads(body) if body is not None else None
        url, data, headers = self._request(row, event, report)
        status: int | None = None
        error: str | None = None
        retry_after: str | None = None
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                if status >= 300:
                    error = (await resp.content.read(ERROR_KEPT)).decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_KEPT]
        now = self.clock()
        verdict = outcome(status)
        row.update(attempts=row["attempts"] + 1, last_status=status, last_error=error,
                   report_hash=report["report_hash"] if report else None)
        if verdict == "retry":
            after = next_try_ms(self.policy, row["attempts"], now, retry_after)
            if after is None:
                verdict = "failed"
            else:
                row["next_try_ms"] = after
        if verdict == "delivered":
            row.update(status="delivered", delivered_ms=now, next_try_ms=None)
        elif verdict == "failed":
            row.update(status="failed", next_try_ms=None)
            log.warning("notification %s to %s failed after %d attempts: %s %s",
                        row["notification_id"], row["channel"], row["attempts"], status,
                        error)
        log.info("notification %s to %s, attempt %d: %s (%s)%s", row["notification_id"],
                 row["channel"], row["attempts"], verdict, status,
                 f", next in {row['next_try_ms'] - now} ms" if verdict == "retry" else "")
        await asyncio.to_thread(self.sink.notification_tried, row)
        self.metrics.stages[f"notifications_{verdict}:{row['channel']}"] += 1
        if verdict != "retry":
            self._owed.pop(row["notification_id"], None)
