"""Request bodies read with limits (ADR 0014).

The HTTP server does not inflate bodies itself (``auto_decompress`` is off): a body is read
as sent, within a size limit and a time limit, then inflated here in a worker thread, layer
by layer, each layer's output bounded by the same limit. So a limit holds for the fully
decompressed size whatever the number of layers, a gzip bomb costs at most ``limit`` bytes
of memory, and no inflation runs on the event loop.
"""

from __future__ import annotations

import asyncio
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAX_LAYERS = 3
GZIP_MAGIC = b"\x1f\x8b"
_INFLATE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tocsin-inflate")


class BodyError(Exception):
    """A body that cannot be taken: ``status`` is the HTTP answer (400, 408, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _inflate_layer(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise BodyError(400, f"body is not valid compressed data: {exc}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise BodyError(413, f"body inflates to more than {limit} bytes")
        if not d.eof:
            raise BodyError(400, "compressed body is truncated")
        rest = d.unused_data  # a further gzip member, as gzip allows
        if rest and wbits != 31:
            break
    return bytes(out)


WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def inflate(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with every content coding undone, in the order the header lists them, and
    any further gzip layer found inside (a payload of JSON or protobuf never starts with
    ``1f 8b``): at most :data:`MAX_LAYERS` layers, each bounded by ``limit``."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    layers = 0
    for coding in reversed(codings):
        if coding not in WBITS:
            raise BodyError(415, f"unsupported Content-Encoding {coding!r} "
                                 "(gzip, deflate or identity)")
        layers += 1
        if layers > MAX_LAYERS:
            raise BodyError(413, f"more than {MAX_LAYERS} compression layers")
        body = _inflate_layer(body, WBITS[coding], limit)
    while body[:2] == GZIP_MAGIC:
        layers += 1
        if layers > MAX_LAYERS:
            raise BodyError(413, f"more than {MAX_LAYERS} compression layers")
        body = _inflate_layer(body, 31, limit)
    if len(body) > limit:
        raise BodyError(413, f"body over {limit} bytes")
    return body


async def read_body(request: Any, limit: int, timeout_s: float) -> bytes:
    """The raw body, at most ``limit`` bytes, within ``timeout_s`` (a client that sends
    slower is answered 408), then inflated off the event loop."""
    length = request.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyError(413, f"body over {limit} bytes")
    raw = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                raw += chunk
                if len(raw) > limit:
                    raise BodyError(413, f"body over {limit} bytes")
    except TimeoutError:
        raise BodyError(408, f"body not received within {timeout_s:g} s") from None
    encoding = request.headers.get("Content-Encoding")
    if not encoding and raw[:2] != GZIP_MAGIC:
        return bytes(raw)
    return await asyncio.get_running_loop().run_in_executor(
        _INFLATE, inflate, bytes(raw), encoding, limit)
