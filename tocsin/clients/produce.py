"""Reading NDJSON / JSON-array files of records and publishing them, validated one by one."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer

from tocsin.processors.mapping import EventMapping
from tocsin.schemas.codec import WIDE_EVENT, SchemaError, avro_schema, validate_wide_event

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Rejected:
    line: int
    reason: str


@dataclass
class ProduceReport:
    sent: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def read_bytes(path: str) -> bytes:
    """The file's bytes (``-`` is standard input), gunzipped when it starts like gzip."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    return gzip.decompress(data) if data[:2] == GZIP_MAGIC else data


def read_records(path: str) -> Iterator[tuple[int, Any | SchemaError]]:
    """(line number, parsed JSON value or the error) per record. A file whose first
    non-blank byte is ``[`` is one JSON array (its items are numbered from 1)."""
    data = read_bytes(path)
    stripped = data.lstrip()
    if stripped[:1] == b"[":
        try:
            items = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            yield 1, SchemaError(f"not a valid JSON array: {exc}")
            return
        yield from enumerate(items, 1)
        return
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, SchemaError(f"invalid JSON: {exc}")


def prepare(records: Iterable[tuple[int, Any]], wide_events: bool,
            encoding: Literal["json", "avro"], report: ProduceReport,
            mapping: EventMapping | None = None) -> Iterator[tuple[bytes | None, bytes]]:
    """Validate and encode; rejected records are noted in ``report`` and skipped. With a
    ``mapping`` (ADR 0013) each record is mapped onto wide_event.v1 first, here, so what
    goes on the wire is a plain wide event."""
    schema = avro_schema(WIDE_EVENT)
    to_event = validate_wide_event if mapping is None else mapping.apply
    for n, value in records:
        if isinstance(value, SchemaError):
            report.rejected.append(Rejected(n, str(value)))
            continue
        try:
            if wide_events:
                event = to_event(value)
                key = event["service"].encode()
                body = schema.encode_soe(event) if encoding == "avro" else orjson.dumps(event)
            else:
                if not isinstance(value, dict):
                    raise SchemaError("each record must be a JSON object")
                key = None
                body = orjson.dumps(value)
        except SchemaError as exc:
            report.rejected.append(Rejected(n, str(exc)))
            continue
        yield key, body


async def publish(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]],
                  report: ProduceReport) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, enable_idempotence=False)
    await producer.start()
    try:
        futures = []
        for key, body in items:
            futures.append(await producer.send(topic, body, key=key))
            report.sent += 1
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()
