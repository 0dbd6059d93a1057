"""Real parts for integration tests: the embedded broker, worker processes, produced logs.

Every test gets its own topic names and app id on the one shared broker, so consumer
groups, state tables and DuckDB files never mix between tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import AIOKafkaProducer

from tocsin.schemas.codec import decode_incident
from tocsin.streams.kafka.broker import free_port
from tocsin.streams.kafka.io import TopicSpec, ensure_topics, read_to_end

_ids = itertools.count(1)
HOUR_MS = 3_600_000
T0_MS = 1_793_610_000_000  # 2026-11-02T09:00:00Z


@dataclass
class Names:
    """Topic names and app id of one test."""

    app_id: str
    events: str
    incidents: str
    windows: str
    dlq: str

    @classmethod
    def fresh(cls, label: str) -> Names:
        n = f"{label}{next(_ids)}-{os.getpid()}"
        return cls(f"t-{n}", f"ev-{n}", f"inc-{n}", f"win-{n}", f"dlq-{n}")

    def side_topics(self) -> dict[str, str]:
        """Signals, reports and spans topics of this test's own (the defaults are shared
        by every test on the broker): the ``TOCSIN_TOPICS__*`` variables naming them."""
        return {"TOCSIN_TOPICS__SIGNALS": f"sig-{self.app_id}",
                "TOCSIN_TOPICS__REPORTS": f"rep-{self.app_id}",
                "TOCSIN_TOPICS__SPANS": f"spans-{self.app_id}"}

    def env(self) -> dict[str, str]:
        return {
            "TOCSIN_APP_ID": self.app_id,
            "TOCSIN_TOPICS__EVENTS": self.events,
            "TOCSIN_TOPICS__INCIDENTS": self.incidents,
            "TOCSIN_TOPICS__WINDOWS": self.windows,
            "TOCSIN_TOPICS__DLQ": self.dlq,
        }


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


@dataclass
class WorkerProc:
    """A ``tocsin run`` subprocess on the shared broker."""

    bootstrap: str
    names: Names
    db: Path
    role: str = "all"
    extra_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> WorkerProc:
        env = {**os.environ, **self.names.env(), "TOCSIN_SESSION_TIMEOUT_MS": "6000",
               "TOCSIN_CHECKPOINT_INTERVAL_MS": "200", **self.extra_env}
        self.log_path = self.db.with_suffix(f".{self.role}.{self.http_port}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "tocsin", "run", "--broker", self.bootstrap,
                 "--db", str(self.db), "--http-port", str(self.http_port),
                 "--role", self.role, "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/healthz", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def auth(self) -> dict[str, str]:
        """An Authorization header with the worker's first API token, if it has any."""
        tokens = json.loads(self.extra_env.get("TOCSIN_API_TOKENS", "{}"))
        return {"Authorization": f"Bearer {next(iter(tokens.values()))}"} if tokens else {}

    def poll(self, sql: str, ok: Any, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Rows of ``sql`` once ``ok(rows)`` holds (polled every 0.2 s)."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        while True:
            self._check_alive()
            try:
                rows = self.query(sql)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                rows = []  # not serving yet
            if (rows and ok(rows)) or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)

    def query(self, sql: str) -> list[dict[str, Any]]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/v1/query",
                                     data=json.dumps({"sql": sql}).encode(), method="POST",
                                     headers=self.auth())
        with urllib.request.urlopen(req, timeout=20) as resp:
            body = json.loads(resp.read())
        return [dict(zip(body["columns"], r, strict=True)) for r in body["rows"]]

    def wait_events(self, n: int, timeout_s: float = 90) -> None:
        """Until the worker has counted ``n`` events (decoded, not dead-lettered)."""
        self._wait(lambda h: h["metrics"]["events_in"] >= n, timeout_s, f"{n} events")

    def wait_projected(self, valid_events: int, timeout_s: float = 90) -> None:
        """Until DuckDB holds every counted request, then until it stops changing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                rows = self.query("SELECT coalesce(sum(requests), 0)::BIGINT AS n "
                                  "FROM step_windows")
                if rows[0]["n"] >= valid_events:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError(f"DuckDB never held {valid_events} requests; log: "
                               f"{self.tail()}")
        previous = None
        while time.monotonic() < deadline:
            current = self.query("SELECT (SELECT count(*) FROM incident_events) AS e, "
                                 "(SELECT count(*) FROM dead_letters) AS d, "
                                 "(SELECT coalesce(sum(errors), 0) FROM family_windows) AS f")
            if current == previous:
                return
            previous = current
            time.sleep(1.0)

    def _wait(self, ok: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            h = self.health()
            if h is not None and ok(h):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker never reached {what}; log: {self.tail()}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


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
