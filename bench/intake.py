"""(d) HTTP intake: signals/s and request latency through ``POST /v1/signals``, Tocsin vs bare.

A load generator (aiohttp client, ``CONCURRENCY`` connections on loopback) POSTs
pre-built payloads until ``REQUESTS`` were answered or ``SECONDS`` passed, after
``WARMUP`` unmeasured requests. The mix, per four requests: three native signals (alert,
runtime, dependency, deploy in turn, each with its own fingerprint) to ``/v1/signals``
and one Alertmanager webhook with two firing alerts (the shape of
``zulip-firing-2-alerts.json``, fingerprints varied) to ``/v1/signals/alertmanager``:
five signals. Every payload names a service of the workload, env prod and the current
wall-clock time, so none correlates with the workload's incidents (the triage fold stays
cheap; the burst phase measures the other case).

The same bodies go to the Tocsin worker and to the bare endpoint
(:mod:`bench.intake_bare`, a subprocess): signals/s counts the ``signal_ids`` of the 202
answers; latency is per request, from the client's send to the answer read (the client
shares the two cores with the server and the broker, as a real sidecar would not).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tocsin.streams.kafka.broker import free_port

from .workload import DOWNSTREAMS, SERVICES

CONCURRENCY = 32
REQUESTS = 20_000
SECONDS = 15.0
WARMUP = 300
BARE_TOPIC = "bench.intake_bare"
JSON_HEADERS = {"Content-Type": "application/json"}
Body = tuple[str, bytes]  # (path, JSON body)


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None without samples)."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class LoadResult:
    """What one load run saw: answered requests, signals acknowledged, latencies."""

    requests: int = 0  # answered 202
    signals: int = 0  # signal ids in the 202 answers
    seconds: float = 0.0  # first send -> last answer
    latencies_ms: list[float] = field(default_factory=list)  # 202 answers only
    errors: Counter[str] = field(default_factory=Counter)  # status / exception -> count
    first_sent: float = 0.0  # perf_counter
    last_ack: float = 0.0  # perf_counter of the last 202 answer
    acks: dict[int, list[str]] = field(default_factory=dict)  # body index -> signal ids

    @property
    def signals_per_s(self) -> float | None:
        return self.signals / self.seconds if self.seconds > 0 and self.signals else None

    @property
    def requests_per_s(self) -> float | None:
        return self.requests / self.seconds if self.seconds > 0 and self.requests else None

    def p(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def native_payload(n: int, now_ms: int, salt: str) -> dict[str, Any]:
    service = SERVICES[n % len(SERVICES)]
    base: dict[str, Any] = {"service": service, "env": "prod", "event_time_ms": now_ms,
                            "fingerprint": f"bench-{salt}-{n}"}
    kind = n % 4
    if kind == 0:
        return {**base, "type": "alert", "severity": "warning", "reason": "HighLatency",
                "title": f"p99 latency over 500 ms on {service}",
                "labels": {"alertname": "HighLatency", "service": service, "team": "core"},
                "annotations": {"runbook_url": "https://runbooks.example/high-latency"}}
    if kind == 1:
        return {**base, "type": "runtime", "runtime_subtype": "oom_killed",
                "severity": "critical", "pod": f"{service}-{n % 7}", "container": service,
                "node": f"node-{n % 3}", "exit_code": 137, "restart_count": n % 5}
    if kind == 2:
        return {**base, "type": "dependency", "downstream": DOWNSTREAMS[n % len(DOWNSTREAMS)],
                "reason": "connection refused", "severity": "critical"}
    return {**base, "type": "deploy", "version": f"2.3.{n % 100}", "commit": f"{n:040x}",
            "author": "ci-bot", "pr_url": f"https://git.example/{service}/pull/{n}"}


def alertmanager_payload(n: int, now_ms: int, salt: str) -> dict[str, Any]:
    """Two firing alerts, as Alertmanager's webhook (version 4) sends them."""
    service = SERVICES[n % len(SERVICES)]
    starts = _iso(now_ms)

    def alert(k: int, temp: str) -> dict[str, Any]:
        return {
            "status": "firing",
            "labels": {"alertname": "High CPU Temperature", "host": f"{service}-{n % 7}",
                       "service": service, "env": "prod", "severity": "critical"},
            "annotations": {"description": f"CPU core temperature is {temp}C",
                            "topic": service, "summary": "High CPU core temperature"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://cobalt:9090/graph?g0.expr=avg+by%28host%29+"
                            "%28sensors_temp_input%29+%3E+15&g0.tab=1",
            "fingerprint": hashlib.blake2b(f"{salt}:{n}:{k}".encode(), digest_size=8)
            .hexdigest(),
        }

    return {
        "receiver": "ops-zulip", "status": "firing", "groupLabels": {},
        "commonLabels": {"alertname": "High CPU Temperature", "severity": "critical"},
        "commonAnnotations": {"summary": "High CPU core temperature"},
        "externalURL": "http://ops1:9093", "version": "4", "groupKey": "{}/{}:{}",
        "alerts": [alert(0, "34.75"), alert(1, "17.625")],
    }


def mixed_bodies(count: int, salt: str, offset: int = 0) -> list[Body]:
    """``count`` request bodies: three native signals, then one Alertmanager group."""
    now_ms = int(time.time() * 1000)
    out: list[Body] = []
    for i in range(offset, offset + count):
        if i % 4 == 3:
            out.append(("/v1/signals/alertmanager",
                        orjson.dumps(alertmanager_payload(i, now_ms + i, salt))))
        else:
            out.append(("/v1/signals", orjson.dumps(native_payload(i, now_ms + i, salt))))
    return out


async def drive(base_url: str, bodies: list[Body], concurrency: int = CONCURRENCY,
                max_seconds: float = SECONDS) -> LoadResult:
    """POST ``bodies`` over ``concurrency`` connections until all are answered or
    ``max_seconds`` passed (requests in flight then still finish)."""
    result = LoadResult()
    todo = iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + max_seconds

        async def client() -> None:
            for i in todo:
                if time.perf_counter() > deadline:
                    return
                path, body = bodies[i]
                sent = time.perf_counter()
                try:
                    async with session.post(base_url + path, data=body,
                                            headers=JSON_HEADERS) as resp:
                        data = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                done = time.perf_counter()
                if status != 202:
                    result.errors[str(status)] += 1
                    continue
                ids = orjson.loads(data)["signal_ids"]
                result.acks[i] = ids
                result.requests += 1
                result.signals += len(ids)
                result.latencies_ms.append((done - sent) * 1000)
                result.last_ack = max(result.last_ack, done)

        result.first_sent = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - result.first_sent
    return result


async def run_load(base_url: str, salt: str, requests: int = REQUESTS,
                   max_seconds: float = SECONDS) -> LoadResult:
    """Warm up (unmeasured), then the measured run over fresh bodies."""
    warm = await drive(base_url, mixed_bodies(WARMUP, salt, offset=requests), max_seconds=10)
    if not warm.requests:
        raise RuntimeError(f"no 202 during the warm-up of {base_url}: {dict(warm.errors)}")
    bodies = mixed_bodies(requests, salt)
    return await drive(base_url, bodies, max_seconds=max_seconds)


def measure_load(base_url: str, salt: str, requests: int = REQUESTS,
                 max_seconds: float = SECONDS) -> LoadResult:
    return asyncio.run(run_load(base_url, salt, requests, max_seconds))


class BareIntake:
    """``python -m bench.intake_bare`` as a subprocess on a free loopback port."""

    def __init__(self, bootstrap: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.port = free_port()
        self.log_path = workdir / "intake_bare.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BareIntake:
        cmd = [sys.executable, "-m", "bench.intake_bare", "--broker", self.bootstrap,
               "--port", str(self.port), "--topic", BARE_TOPIC]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=dict(os.environ),
                                         cwd=Path(__file__).resolve().parent.parent,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare intake exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError), \
                    urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"bare intake did not answer in {timeout_s:.0f}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout_s: float = 10.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode
