"""HTTP signal intake: webhooks in, normalized signals on the signals topic (ADR 0007).

``POST /v1/signals`` recognises each payload by its shape; ``POST /v1/signals/{provider}``
forces one. A request is answered 202 with the signal ids only after the broker has
acknowledged every record: nothing answered 2xx is lost.

Guards, in order (ADR 0014): a bearer token bound to its source's providers and signal
kinds (403 beyond them; the HTTP layer checks the token itself), body size after every
compression layer (413) and read time (408), one rate-limit token for the request, the
payload itself (400 for JSON that is not JSON, 422 for a payload of the wrong shape, with
the parser's message naming what it looked for), then the rest of the rate by signals
(429 with Retry-After). A repeated ``Idempotency-Key`` (or provider delivery id) from the
same source is the same delivery: answered as before, and its signals carry the delivery
id so the triage fold applies them once even when the retry reached another worker.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tocsin.processors.runtime_detection import wanted as runtime_wanted
from tocsin.processors.signals import PROVIDERS, IntakeError, intake
from tocsin.schemas.codec import SchemaError
from tocsin.schemas.signal_wire import encode_signal
from tocsin.streams.kafka.headers import DELIVERY_HEADER, RUNTIME
from tocsin.streams.web.auth import Grant
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings, rules_of

EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_AHEAD_MS = 24 * 3_600_000


@dataclass
class Bucket:
    """A token bucket: ``rate`` signals a second, bursts up to ``burst``."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    at: float = 0.0

    def take(self, now: float, n: float = 1.0) -> float:
        """0 when ``n`` signals may go (and they are taken), else the seconds until they
        could; nothing is taken then. ``now`` is a monotonic clock reading."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(now - self.at, 0.0) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


IDEMPOTENCY_HEADERS = ("Idempotency-Key", "X-GitHub-Delivery", "X-Gitlab-Event-UUID",
                       "X-Request-Id", "Request-ID")
"""Headers whose value names one delivery: the generic ``Idempotency-Key``, then the
providers' own delivery ids (GitHub, GitLab, Sentry's ``Request-ID``)."""
REMEMBERED_ANSWERS = 10_000


def delivery_id(source: str, key: str) -> str:
    """The identity of one delivery: the same key from the same source is the same
    delivery, whatever instance of the worker receives it."""
    return "dlv_" + hashlib.sha256(f"{source}|{key}".encode()).hexdigest()[:32]


class Intake:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.clock = clock
        self.wall_ms = wall_ms
        self.buckets: dict[str, Bucket] = {}
        self.answers: OrderedDict[str, Answer] = OrderedDict()
        self.runtime = rules_of(settings).runtime  # ADR 0022: off unless enabled

    async def publish_spans(self, body: bytes) -> None:
        """One OTLP/HTTP request body onto the spans topic, as the Collector's exporter would
        write it (unkeyed); returns once the broker acknowledged it."""
        fut = await self.producer.send(self.settings.topics.spans, body)
        await fut

    def limit(self, who: str, n: float = 1.0) -> Answer | None:
        """Rate limit by signals: ``n`` of them from ``who`` now."""
        s = self.settings
        bucket = self.buckets.get(who)
        if bucket is None:
            if len(self.buckets) >= 100_000:
                self.buckets.clear()  # bounded: forgetting a bucket only refills it
            bucket = self.buckets[who] = Bucket(s.intake_rate_per_s, s.intake_burst)
        wait = bucket.take(self.clock(), n)
        if wait > 0:
            return Answer(429, {"error": f"rate limit of {s.intake_rate_per_s:g} signals/s "
                                         "exceeded"},
                          {"Retry-After": str(math.ceil(wait))})
        return None

    async def handle(self, body: bytes, provider: str | None, grant: Grant | None,
                     client: str | None = None, idempotency_key: str | None = None
                     ) -> Answer:
        """One webhook body, already authenticated (``grant`` None = no tokens configured)
        and read within the body limits."""
        who = grant.source if grant is not None else f"client:{client or 'unknown'}"
        if provider is not None and provider not in PROVIDERS:
            return Answer(404, {"error": f"unknown provider {provider!r}",
                                "providers": list(PROVIDERS)})
        if grant is not None and provider is not None:
            refused = grant.refuses_provider(provider)
            if refused:
                return Answer(403, {"error": refused})
        delivery = delivery_id(who, idempotency_key) if idempotency_key else None
        if delivery is not None and delivery in self.answers:
            self.answers.move_to_end(delivery)
            seen = self.answers[delivery]
            return Answer(seen.status, seen.body, {**seen.headers, "Idempotent-Replayed": "true"})
        # One token for the request itself, before any parsing: a flood of garbage costs
        # its sender, not the parser.
        limited = self.limit(who)
        if limited is not None:
            return limited
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return Answer(400, {"error": f"body is not JSON: {exc}"})
        received_ms = self.wall_ms()
        try:
            result = intake(payload, provider, received_ms=received_ms)
        except IntakeError as exc:
            return Answer(422 if provider else 400, {"error": str(exc)})
        except RecursionError:
            return Answer(400, {"error": "body is nested too deeply"})
        if grant is not None:
            refused = grant.refuses_provider(result.provider) or grant.refuses_kinds(
                {sig.type for sig in result.signals})
            if refused:
                return Answer(403, {"error": refused})
        for signal in result.signals:
            if not EARLIEST_MS <= signal.event_time_ms <= received_ms + MAX_AHEAD_MS:
                # Event time decides correlation and retention: a time in microseconds, or
                # a year off, would make every other signal look ancient. Refuse it here,
                # at the edge, where the wall clock may judge.
                return Answer(422, {"error": f"event time {signal.event_time_ms} of "
                                             f"{signal.signal_id} is not plausible: it must "
                                             "be epoch milliseconds between 2000-01-01 "
                                             "and a day from now"})
        # The rest of the request's signals against the rate (the first was taken above).
        burst = self.settings.intake_burst
        if len(result.signals) > burst:
            return Answer(413, {"error": f"{len(result.signals)} signals in one request is "
                                         f"more than the intake burst of {burst:g}: split the "
                                         "request (Alertmanager: max_alerts) or raise "
                                         "TOCSIN_INTAKE_BURST"})
        if len(result.signals) > 1:
            limited = self.limit(who, len(result.signals) - 1)
            if limited is not None:
                return limited
        values = []
        for signal in result.signals:  # all encoded before any is sent: none or all go
            try:
                values.append(encode_signal(signal))
            except SchemaError as exc:  # the parsers bound what they accept; defence in depth
                where = f" (field {exc.field})" if exc.field else ""
                return Answer(422, {"error": f"signal {signal.signal_id} cannot be written "
                                             f"as signal.v1{where}"})
        futures = []
        for signal, value in zip(result.signals, values, strict=True):
            headers = [("tocsin.signal_id", signal.signal_id.encode()),
                       ("tocsin.source", who.encode())]
            if delivery is not None:
                headers.append((DELIVERY_HEADER, delivery.encode()))
            futures.append(await self.producer.send(
                self.settings.topics.signals, value,
                key=(signal.service or signal.signal_id).encode(), headers=headers))
            if runtime_wanted(self.runtime, signal):
                # The [runtime] rule (ADR 0022): detection reads it among the service's
                # events, in log order.
                assert signal.service is not None
                futures.append(await self.producer.send(
                    self.settings.topics.events, value, key=signal.service.encode(),
                    headers=[*headers, (RUNTIME, b"1")]))
        for fut in futures:
            await fut
        self.metrics.signals_accepted += len(result.signals)
        answer = Answer(202, {"provider": result.provider,
                              "signal_ids": [s.signal_id for s in result.signals],
                              "skipped": list(result.skipped), "truncated": result.truncated})
        if delivery is not None:
            self.answers[delivery] = answer
            if len(self.answers) > REMEMBERED_ANSWERS:
                self.answers.popitem(last=False)
        return answer
