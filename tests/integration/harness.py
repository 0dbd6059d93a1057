"""Real parts for integration tests: the embedded broker, worker processes, produced logs.

Every test gets its own topic names and app id on the one shared broker, so consumer
groups, state tables and DuckDB files never mix between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import AIOKafkaProducer

from tocsin import testing
from tocsin.schemas.codec import decode_incident
from tocsin.streams.kafka.io import TopicSpec, ensure_topics, read_to_end

HOUR_MS = 3_600_000
T0_MS = 1_793_610_000_000  # 2026-11-02T09:00:00Z


class Names(testing.Names):
    """:class:`tocsin.testing.Names` (every topic of the test's own), with the
    attributes the tests have always used."""

    @property
    def events(self) -> str:
        return self.topics.events

    @events.setter
    def events(self, topic: str) -> None:
        self.topics = self.topics.model_copy(update={"events": topic})

    @property
    def incidents(self) -> str:
        return self.topics.incidents

    @incidents.setter
    def incidents(self, topic: str) -> None:
        self.topics = self.topics.model_copy(update={"incidents": topic})

    @property
    def windows(self) -> str:
        return self.topics.windows

    @windows.setter
    def windows(self, topic: str) -> None:
        self.topics = self.topics.model_copy(update={"windows": topic})

    @property
    def dlq(self) -> str:
        return self.topics.dlq

    def side_topics(self) -> dict[str, str]:
        """The ``TOCSIN_TOPICS__*`` variables of this test's signals, reports and spans
        topics (already the test's own: :meth:`env` names every topic)."""
        return {testing.topic_env_var(f): self.topic(f)
                for f in ("signals", "reports", "spans")}


def event(t_ms: int, service: str, step: str, *, error: str | None = None,
          env: str = "prod", **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"event_time_ms": t_ms, "service": service, "step": step, "env": env}
    if error:
        e.update(status="error", error_code=error)
    e.update(extra)
    return e


def steady(start_ms: int, seconds: int, services: Sequence[str] = ("api", "cart", "search"),
           per_second: int = 1) -> list[dict[str, Any]]:
    """Healthy requests from several services, in time order."""
    out = []
    for s in range(seconds):
        for k in range(per_second):
            for i, svc in enumerate(services):
                out.append(event(start_ms + s * 1000 + k * (1000 // per_second) + i, svc, "GET /"))
    return out


def spike_log(start_ms: int = T0_MS) -> list[dict[str, Any]]:
    """40 min healthy, 2 min where checkout's payment.charge fails, 15 min healthy."""
    services = ("checkout", "cart", "search")
    log = steady(start_ms, 2400, services)
    for s in range(120):
        t = start_ms + 2_400_000 + s * 1000
        log.append(event(t, "checkout", "payment.charge", error="PMT_502",
                         downstream={"service": "payment", "endpoint": "/charge",
                                     "kind": "http"}))
        log.append(event(t + 1, "cart", "GET /"))
        log.append(event(t + 2, "search", "GET /"))
    log += steady(start_ms + 2_520_000, 900, services)
    return log


async def _produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]
                   ) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                enable_idempotence=False, max_request_size=4 << 20)
    await producer.start()
    n = 0
    try:
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value, key=key))
            n += 1
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()
    return n


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any] | bytes],
                   partitions: int = 6) -> int:
    """Create the topic (explicit partition count) and publish, keyed by service."""
    def records() -> Iterable[tuple[bytes | None, bytes]]:
        for e in events:
            if isinstance(e, bytes):
                yield b"raw", e
            else:
                yield str(e.get("service", "none")).encode(), orjson.dumps(e)

    async def go() -> int:
        await ensure_topics(bootstrap, [TopicSpec(topic, partitions, 30 * 24 * HOUR_MS)])
        return await _produce(bootstrap, topic, records())
    return asyncio.run(go())


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    return asyncio.run(read_to_end(bootstrap, topic))


def incident_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [decode_incident(r.value) for r in read_topic(bootstrap, topic)]


class WorkerProc(testing.Worker):
    """A :class:`tocsin.testing.Worker` on the shared broker, logging at info, with the
    names and helpers the tests have always used."""

    def __init__(self, bootstrap: str, names: testing.Names, db: Path, role: testing.Role = "all",
                 extra_env: dict[str, str] | None = None, http_port: int | None = None
                 ) -> None:
        super().__init__(bootstrap, db, names=names, role=role, env=extra_env,
                         http_port=http_port, log_level="info")

    @property
    def extra_env(self) -> dict[str, str]:
        return self.env

    def auth(self) -> dict[str, str]:
        """An Authorization header with the worker's first API token, if it has any."""
        return self.auth_headers()

    def poll(self, sql: str, ok: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Rows of ``sql`` once ``ok(rows)`` holds; the last rows seen at the deadline."""
        seen: list[list[dict[str, Any]]] = [[]]

        def holds() -> bool:
            seen[0] = self.query(sql)
            return bool(seen[0] and ok(seen[0]))

        with contextlib.suppress(testing.WaitTimeout):
            self.wait_for(holds, timeout_s, f"rows of {sql!r}")
        return seen[0]

    def wait_events(self, n: int, timeout_s: float = 90) -> None:
        """Until the worker has counted ``n`` events (decoded, not dead-lettered)."""
        self._wait(lambda h: h["metrics"]["events_in"] >= n, timeout_s, f"{n} events")

    def wait_projected(self, valid_events: int, timeout_s: float = 90) -> None:
        """Until DuckDB counts ``valid_events`` requests, then until detection has been
        through the whole events topic and DuckDB holds everything it published
        (:meth:`wait_settled`)."""
        deadline = time.monotonic() + timeout_s
        sql = "SELECT coalesce(sum(requests), 0)::BIGINT AS n FROM step_windows"
        self.wait_for(lambda: self.query(sql)[0]["n"] >= valid_events, timeout_s,
                      f"{valid_events} requests in DuckDB")
        self.wait_settled(max(1.0, deadline - time.monotonic()))

    def _wait(self, ok: Any, timeout_s: float, what: str) -> None:
        """Until ``ok(/healthz body)`` holds."""
        self.wait_for(lambda: (h := self.health()) is not None and ok(h), timeout_s, what)

    def _check_alive(self) -> None:
        self.check_alive()

    def tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the worker's log."""
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() \
            else ""


TABLES = {
    "incidents": "incident_id",
    "incident_events": "incident_id, seq",
    "family_windows": "env, family, bucket_start_ms",
    "step_windows": "env, service, step, bucket_start_ms",
    "dead_letters": "source_partition, source_offset",
}


def dump(db: Path, tables: Sequence[str] = ("incidents", "incident_events", "family_windows",
                                            "step_windows")) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the projection's tables, ordered by identity (the worker must be
    stopped: DuckDB lets one process hold the file)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY {TABLES[t]}").fetchall()
                for t in tables}
    finally:
        con.close()
