"""Between the service and its child process: the answer an HTTP view sends, the framed
messages on the child's stdin and stdout, and the command that starts the child."""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tocsin.streams.query.limits import QueryLimits

CHILD_MODULE = "tocsin.streams.query"  # ``python -m``: streams/query/__main__.py


@dataclasses.dataclass(frozen=True)
class QueryAnswer:
    """What the HTTP view sends: a status, the body bytes, their type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # from the query's process: rows, ms, peak_rss_kb (its VmHWM during this query)
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def fail(cls, status: int, message: str, headers: Mapping[str, str] | None = None
             ) -> QueryAnswer:
        return cls(status, orjson.dumps({"error": message}), headers=dict(headers or {}))

    @property
    def error(self) -> str | None:
        if self.status < 400:
            return None
        try:
            return str(orjson.loads(self.body)["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self.body.decode(errors="replace")


HEAD = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    return HEAD.pack(len(payload)) + payload


def answer_frame(header: dict[str, Any], body: bytes) -> bytes:
    head = orjson.dumps(header)
    return frame(HEAD.pack(len(head)) + head + body)


def split_answer(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = HEAD.unpack_from(payload)
    return dict(orjson.loads(payload[4:4 + n])), payload[4 + n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any] | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, HEAD.unpack(head)[0])
    return None if body is None else dict(orjson.loads(body))


def child_command(limits: QueryLimits) -> list[str]:
    return [sys.executable, "-P", "-m", CHILD_MODULE,
            "--address-space", str(limits.address_space), "--nice", str(limits.nice),
            *(["--idle"] if limits.idle else [])]


def request_message(db: str, sql: str, params: Sequence[Any], limits: QueryLimits,
                    **extra: Any) -> dict[str, Any]:
    return {"op": "query", "db": db, "sql": sql, "params": list(params),
            "limits": dataclasses.asdict(limits), **extra}


def to_answer(header: Mapping[str, Any], body: bytes, shape: str) -> QueryAnswer:
    status = int(header["status"])
    stats = {k: v for k, v in header.items() if k in ("rows", "ms", "peak_rss_kb")}
    if status >= 400:
        return dataclasses.replace(QueryAnswer.fail(status, str(header.get("error"))),
                                   stats=stats)
    return QueryAnswer(status, body, "text/plain; charset=utf-8" if shape == "scalar"
                       else "application/json", stats=stats)
