"""Dead letters that always fit, sent with retries (ADR 0014).

A record is dead-lettered with its reason, where it was read, its original size and the
sha256 of its whole value, and as much of its value as fits under
``Settings.dlq_max_value_bytes``. Its own headers are kept while they fit under
:data:`MAX_HEADER_BYTES`. Publishing a dead letter is retried until the broker takes it:
a letter the broker refuses as too large is sent again without its value; a broker that
is away holds the stage (its checkpoint waits), it never crashes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

log = logging.getLogger("tocsin.dlq")

MAX_KEY_BYTES = 1024
MAX_HEADER_BYTES = 8 * 1024
MAX_REASON_BYTES = 2000
OWN = "tocsin.dlq."


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    def without_value(self) -> DeadLetter:
        headers = [(k, v) for k, v in self.headers if k.startswith(OWN)]
        headers = [(k, b"true") if k == f"{OWN}truncated" else (k, v) for k, v in headers]
        return DeadLetter(self.key, b"", headers)


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, headers: Any, reason: str, field: str | None = None,
                max_value_bytes: int = 512 * 1024) -> DeadLetter:
    """The letter for one rejected record: bounded whatever the record held."""
    whole = value or b""
    kept = whole[:max_value_bytes]
    own = [
        (f"{OWN}source_topic", topic.encode()),
        (f"{OWN}source_partition", str(partition).encode()),
        (f"{OWN}source_offset", str(offset).encode()),
        (f"{OWN}reason", reason.encode(errors="replace")[:MAX_REASON_BYTES]),
        (f"{OWN}original_bytes", str(len(whole)).encode()),
        (f"{OWN}sha256", hashlib.sha256(whole).hexdigest().encode()),
        (f"{OWN}truncated", b"true" if len(kept) < len(whole) else b"false"),
    ]
    if field:
        own.append((f"{OWN}field", field.encode(errors="replace")[:MAX_REASON_BYTES]))
    carried: list[tuple[str, bytes]] = []
    room = MAX_HEADER_BYTES
    dropped = 0
    for k, v in headers or ():
        if not isinstance(k, str) or k.startswith(OWN):
            continue
        size = len(k) + len(v or b"")
        if size > room:
            dropped += 1
            continue
        room -= size
        carried.append((k, bytes(v or b"")))
    if dropped:
        own.append((f"{OWN}headers_dropped", str(dropped).encode()))
    if key is not None and len(key) > MAX_KEY_BYTES:
        own.append((f"{OWN}original_key_bytes", str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    return DeadLetter(key, kept, carried + own)


def of_record(rec: Any, reason: str, field: str | None = None,
              max_value_bytes: int = 512 * 1024) -> DeadLetter:
    """:func:`dead_letter` of a consumed record."""
    return dead_letter(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.headers,
                       reason, field, max_value_bytes)


class DeadLetterSender:
    """Publishes letters to the dead-letter topic, retrying until the broker acknowledges.

    Errors are logged at most once every ``log_every_s`` seconds (a broker outage must not
    flood the log); each failed attempt is counted in ``retries``."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, log_every_s: float = 10.0,
                 max_backoff_s: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.log_every_s = log_every_s
        self.max_backoff_s = max_backoff_s
        self.retries = 0
        self._logged_at = -1e9

    async def send(self, letter: DeadLetter) -> asyncio.Future[Any]:
        """Returns once the broker took the letter (a done future, so it can stand where a
        producer's send result stands)."""
        backoff = 0.05
        while True:
            try:
                ack = await self.producer.send(self.topic, letter.value, key=letter.key,
                                               headers=letter.headers)
                meta = await ack
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                done.set_result(meta)
                return done
            except MessageSizeTooLargeError:
                if not letter.value and not letter.key:
                    raise  # headers alone never reach this size: a bug, not input
                self._log("dead letter too large for the broker, sent without its value")
                letter = DeadLetter(None, b"", letter.without_value().headers)
            except KafkaError as exc:
                self.retries += 1
                self._log(f"dead letter not published yet, retrying: {exc!r}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            log.warning("%s (retries so far: %d)", message, self.retries)
