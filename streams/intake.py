"""HTTP signal intake: webhooks in, normalized signals on the signals topic (ADR 0007).

``POST /v1/signals`` recognises each payload by its shape; ``POST /v1/signals/{provider}``
forces one. A request is answered 202 with the signal ids only after the broker has
acknowledged every record: nothing answered 2xx is lost.

Guards, in order: bearer token per source (when tokens are configured; compared with
``hmac.compare_digest``), body size (413), rate limit per token (429 with Retry-After),
then the payload itself (400 for JSON that is not JSON, 422 for a payload of the wrong
shape, with the parser's message naming what it looked for).
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tocsin.processors.signals import PROVIDERS, IntakeError, intake
from tocsin.streams.metrics import Metrics
from tocsin.streams.settings import Settings
from tocsin.streams.triage_io import encode_signal

EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AHEAD_MS = 24 * 3_600_000


@dataclass
class Bucket:
    """A token bucket: ``rate`` requests a second, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    at: float = 0.0

    def take(self, now: float) -> float:
        """0 when a request may go, else the seconds to wait."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Intake:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, metrics: Metrics
                 ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.buckets: dict[str, Bucket] = {}

    async def publish_spans(self, body: bytes) -> None:
        """One OTLP/HTTP request body onto the spans topic, as the Collector's exporter would
        write it (unkeyed); returns once the broker acknowledged it."""
        fut = await self.producer.send(self.settings.topics.spans, body)
        await fut

    def authenticate(self, header: str | None) -> str | Answer | None:
        """The source a bearer token belongs to; None when no tokens are configured."""
        tokens = self.settings.intake_tokens
        if not tokens:
            return None
        if not header or not header.startswith("Bearer "):
            return Answer(401, {"error": "missing bearer token (Authorization: Bearer ...)"},
                          {"WWW-Authenticate": 'Bearer realm="tocsin"'})
        offered = header[len("Bearer "):].strip().encode()
        found = None
        for source, token in sorted(tokens.items()):
            if hmac.compare_digest(offered, token.encode()):  # no early exit on a match
                found = source
        if found is None:
            return Answer(401, {"error": "unknown bearer token"},
                          {"WWW-Authenticate": 'Bearer realm="tocsin", error="invalid_token"'})
        return found

    def limit(self, who: str) -> Answer | None:
        s = self.settings
        bucket = self.buckets.setdefault(who, Bucket(s.intake_rate_per_s, s.intake_burst))
        wait = bucket.take(time.monotonic())
        if wait > 0:
            return Answer(429, {"error": f"rate limit of {s.intake_rate_per_s}/s exceeded"},
                          {"Retry-After": str(math.ceil(wait))})
        return None

    async def handle(self, body: bytes, provider: str | None, auth: str | None,
                     client: str | None = None) -> Answer:
        who = self.authenticate(auth)
        if isinstance(who, Answer):
            return who
        if len(body) > self.settings.intake_max_body_bytes:
            return Answer(413, {"error": f"body over {self.settings.intake_max_body_bytes} "
                                         "bytes"})
        # Without tokens, each client address has its own bucket: one noisy sender must
        # not starve the others.
        limited = self.limit(who or f"client:{client or 'unknown'}")
        if limited is not None:
            return limited
        if provider is not None and provider not in PROVIDERS:
            return Answer(404, {"error": f"unknown provider {provider!r}",
                                "providers": list(PROVIDERS)})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return Answer(400, {"error": f"body is not JSON: {exc}"})
        received_ms = int(time.time() * 1000)
        try:
            result = intake(payload, provider, received_ms=received_ms)
        except IntakeError as exc:
            return Answer(422 if provider else 400, {"error": str(exc)})
        for signal in result.signals:
            if not EARLIEST_MS <= signal.event_time_ms <= received_ms + MAX_AHEAD_MS:
                # Event time decides correlation and retention: a time in microseconds, or
                # a year off, would make every other signal look ancient. Refuse it here,
                # at the edge, where the wall clock may judge.
                return Answer(422, {"error": f"event time {signal.event_time_ms} of "
                                             f"{signal.signal_id} is not plausible: it must "
                                             "be epoch milliseconds between 2000-01-01 "
                                             "and a day from now"})
        futures = []
        for signal in result.signals:
            futures.append(await self.producer.send(
                self.settings.topics.signals, encode_signal(signal),
                key=(signal.service or signal.signal_id).encode(),
                headers=[("tocsin.signal_id", signal.signal_id.encode()),
                         ("tocsin.source", (who or "anonymous").encode())]))
        for fut in futures:
            await fut
        self.metrics.signals_accepted += len(result.signals)
        return Answer(202, {"provider": result.provider,
                            "signal_ids": [s.signal_id for s in result.signals],
                            "skipped": list(result.skipped), "truncated": result.truncated})
