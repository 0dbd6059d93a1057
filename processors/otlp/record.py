"""The span path's internal event record: a compact binary form of the wide-event fields the
detector reads, written and read only by Tocsin's own span stages (no schema, no registry).

JSON costs the span path more than the detection. This record carries exactly what the
detector reads of a ``wide_event.v1`` (:mod:`.mapping`), plus the span position it
deduplicates on (ADR 0011), and decodes to the values the JSON path gives.

Layout, version 3 (little endian; ``n`` = number of strings the flags announce, 4 to 10)::

    offset  size  field
    0       1     version, 3
    1       8     event_time_ms, int64
    9       8     span record offset, uint64
    17      4     event index in that record, uint32
    21      16    trace_id as 16 raw bytes when flag 0x08, else zeros
    37      8     duration_ms, float64; None as the quiet NaN 0x7FF8000000000000
    45      1     flags: 0x01 service_version, 0x02 error_code, 0x04 trace_id,
                  0x08 trace_id raw at 21 (it was 32 lowercase hex digits),
                  0x10 downstream, 0x20 downstream.endpoint, 0x40 downstream.kind
                  (0x08 needs 0x04, 0x20/0x40 need 0x10; 0x80 is reserved, must be 0)
    46      1     status: index into STATUSES
    47      2*n   uint16: the UTF-8 byte length of each string below, in order
    47+2n   ...   the strings' UTF-8 bytes, back to back: source ("topic:partition"),
                  service, env, step, then those present of service_version,
                  error_code, trace_id (text form: 0x04 without 0x08),
                  downstream.service, downstream.endpoint, downstream.kind

Version 1 is the same without duration_ms (read as None); the encoder writes version 3.
Version 2 is a pack of records of either version (:mod:`.pack`).

A flag set means the value is present (a string, possibly empty); unset means None. A
typical entry span (ok, version, hex trace id) is ~108 bytes; a failing one with its
downstream ~148.

Normalisation, as :func:`~tocsin.schemas.codec.validate_wide_event` does on the JSON path:
``env`` None becomes ``"prod"``, a missing ``status`` ``"ok"``; ``steps`` decodes as ``[]``
(a span's wide event has none; the encoder refuses one that has any); ``downstream``
decodes as ``{"service", "endpoint", "kind"}`` (what ``Peer.to_dict`` writes; other keys
are not kept). An event the JSON path would refuse (empty service, step, env or
downstream.service, a status outside STATUSES, a time outside [0, 2**53), a non-string
where a string belongs) is refused by the encoder with :class:`RecordError`, and so are
bytes that say so.

``duration_ms``: a finite float is carried exactly; None, NaN and +-inf are written as
None (the JSON path reads them back as ``null``); an int (the JSON path keeps it an int) or
any other type is refused with :class:`RecordError` (the intake then sends JSON).

Length cap: a string longer than :data:`MAX_STR_BYTES` (65,535) UTF-8 bytes keeps its first
65,535 bytes, cut back to a whole character: the one place the record differs from the JSON
path (two steps alike in their first 64 KB count as one family). A string that is not
valid Unicode (lone surrogates) is refused: :class:`RecordError`.

On the wire (ADR 0015): records and packs go on the events topic with the
``tocsin.span_source`` header; the detector reads a value as a record when it has that
header and its first byte is one of :data:`VERSIONS` (no JSON, Avro single-object or
Confluent-framed value starts with one).

Speed: the tail (from the flags on) depends only on low-cardinality values, so both
directions memoize it (:data:`MEMO_ENTRIES` tails of at most :data:`MEMO_TAIL_BYTES`,
cleared when full; not with a text trace id). A hit returns what the miss computed.
"""

from __future__ import annotations

import struct
from binascii import unhexlify
from collections.abc import Mapping
from math import isfinite
from typing import Any

VERSION = 3  # what the encoder writes
VERSION_1 = 1  # still read: no duration_ms
# First bytes kept for this record's versions: none starts a JSON value (`{`, `[`,
# whitespace), an Avro single-object (0xC3) or a Confluent frame (0x00).
VERSIONS = frozenset(range(1, 9))
STATUSES = ("ok", "error", "timeout", "partial", "aborted", "suppressed")
STATUS_INDEX = {name: i for i, name in enumerate(STATUSES)}
DEFAULT_ENV = "prod"  # validate_wide_event's default for an event without env
MAX_STR_BYTES = 0xFFFF
MAX_TIME_MS = 1 << 53  # validate_wide_event's range: [0, 2**53)
MEMO_ENTRIES = 8192  # per direction; a memo is cleared when it reaches this
MEMO_TAIL_BYTES = 512  # longer tails are not memoized

F_VERSION = 0x01
F_ERROR_CODE = 0x02
F_TRACE = 0x04
F_TRACE_RAW = 0x08
F_DOWN = 0x10
F_DOWN_ENDPOINT = 0x20
F_DOWN_KIND = 0x40

HEAD = struct.Struct("<BqQI16sd")
HEAD_SIZE = HEAD.size  # 45; the tail (flags, status, lengths, strings) follows
HEAD_1 = struct.Struct("<BqQI16s")  # version 1: no duration_ms
HEAD_1_SIZE = HEAD_1.size  # 37
DURATION_AT = HEAD_1_SIZE  # duration_ms's 8 bytes in a version-3 record
NO_TRACE = bytes(16)
NO_DURATION_BYTES = bytes.fromhex("000000000000f87f")  # the quiet NaN 0x7FF8000000000000
NO_DURATION: float = struct.unpack("<d", NO_DURATION_BYTES)[0]  # None in the record
LENGTHS = tuple(struct.Struct("<" + "H" * n) for n in range(11))


class RecordError(ValueError):
    """Bytes that are not a span event record of a known version, or an event that cannot
    be written as one. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Raw:
    """The trace-id slot of a memo key when the id travels as raw bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RAW"


RAW = _Raw()

# A memo key: (source, service, env, step, status, service_version, error_code, trace,
# downstream service, endpoint, kind), as read from the event; trace is RAW for a raw id.
Key = tuple[object, ...]
# Decoded tail: (source, service, env, step, status, version, code, trace (text, RAW or
# None), (downstream service, endpoint, kind) or None).
Strings = tuple[str, str, str, str, str, str | None, str | None, str | _Raw | None,
                tuple[str, str | None, str | None] | None]
_TAILS: dict[Key, bytes] = {}
_STRINGS: dict[bytes, Strings] = {}


# ---------------------------------------------------------------------- encode


def _utf8(value: object, name: str) -> bytes:
    """A string's UTF-8 bytes, cut to MAX_STR_BYTES at a character boundary."""
    if not isinstance(value, str):
        raise RecordError(f"{name}: must be a string, got {type(value).__name__}")
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:
        raise RecordError(f"{name}: not valid Unicode ({exc.reason})") from None
    if len(data) > MAX_STR_BYTES:
        data = data[:MAX_STR_BYTES].decode(errors="ignore").encode()
    return data


def _required(value: object, name: str) -> bytes:
    data = _utf8(value, name)
    if not data:
        raise RecordError(f"{name}: required, a non-empty string")
    return data


REQUIRED = frozenset({"service", "env", "step", "downstream.service"})


def _tail(key: Key) -> bytes:
    """The tail for a memo key, every value checked; memoized when small and without a
    text trace id. Strings all ASCII and within the cap take the short way."""
    source, service, env, step, status_name, version, code, trace, down, endpoint, kind = key
    status = STATUS_INDEX.get(status_name) if isinstance(status_name, str) else None
    if status is None:
        raise RecordError(f"status: must be one of {list(STATUSES)}, got {status_name!r}")
    strs = [source, service, DEFAULT_ENV if env is None else env, step]
    flags = 0
    if version is not None:
        flags = F_VERSION
        strs.append(version)
    if code is not None:
        flags |= F_ERROR_CODE
        strs.append(code)
    if trace is RAW:
        flags |= F_TRACE | F_TRACE_RAW
    elif trace is not None:
        flags |= F_TRACE
        strs.append(trace)
    if down is not None:
        flags |= F_DOWN
        strs.append(down)
        if endpoint is not None:
            flags |= F_DOWN_ENDPOINT
            strs.append(endpoint)
        if kind is not None:
            flags |= F_DOWN_KIND
            strs.append(kind)
    try:
        joined = "".join(strs)  # type: ignore[arg-type]  # TypeError: not all strings
        body: bytes | None = joined.encode() if joined.isascii() else None
    except TypeError:
        body = None
    if body is not None and len(body) <= MAX_STR_BYTES and service and strs[2] and step \
            and (down is None or down):
        lengths = [len(s) for s in strs]  # type: ignore[arg-type]
    else:  # one by one: cut what is too long, name what is wrong
        names = ["source", "service", "env", "step"]
        names += [name for name, bit in (("service_version", F_VERSION),
                                         ("error_code", F_ERROR_CODE)) if flags & bit]
        names += ["trace_id"] if flags & F_TRACE and not flags & F_TRACE_RAW else []
        names += [name for name, bit in (("downstream.service", F_DOWN),
                                         ("downstream.endpoint", F_DOWN_ENDPOINT),
                                         ("downstream.kind", F_DOWN_KIND)) if flags & bit]
        parts = [_required(v, n) if n in REQUIRED else _utf8(v, n)
                 for v, n in zip(strs, names, strict=True)]
        lengths = [len(p) for p in parts]
        body = b"".join(parts)
    tail = bytes((flags, status)) + LENGTHS[len(lengths)].pack(*lengths) + body
    if trace.__class__ is not str and len(tail) <= MEMO_TAIL_BYTES:
        if len(_TAILS) >= MEMO_ENTRIES:
            _TAILS.clear()
        _TAILS[key] = tail
    return tail


def encode_span_event(event: Mapping[str, Any], source: str, offset: int, index: int
                      ) -> bytes:
    """One wide event (as :func:`~tocsin.processors.otlp.wide_events` makes them) and the
    position of the span record it came from (``source`` = ``"topic:partition"``, record
    ``offset``, event ``index``) as a version-3 record. Raises :class:`RecordError` for an
    event the JSON path would refuse, one with ``steps``, or one whose ``duration_ms`` is
    not a float or None (module doc)."""
    get = event.get
    trace = get("trace_id")
    raw = NO_TRACE
    if trace.__class__ is str and len(trace) == 32:
        try:
            as_bytes = unhexlify(trace)  # binascii.Error (a ValueError): not hex
        except ValueError:
            pass
        else:
            if as_bytes.hex() == trace:  # not when it had uppercase digits
                raw, trace = as_bytes, RAW
    down = get("downstream")
    if down is None:
        key = (source, get("service"), get("env"), get("step"), get("status", "ok"),
               get("service_version"), get("error_code"), trace, None, None, None)
    elif isinstance(down, Mapping):
        service = down.get("service")
        if service is None:
            raise RecordError("downstream.service: required, a string")
        key = (source, get("service"), get("env"), get("step"), get("status", "ok"),
               get("service_version"), get("error_code"), trace, service,
               down.get("endpoint"), down.get("kind"))
    else:
        raise RecordError(f"downstream: must be an object or null, got "
                          f"{type(down).__name__}")
    try:
        tail = _TAILS.get(key) or _tail(key)
    except TypeError:  # an unhashable value where a string belongs: _tail names it
        tail = _tail(key)
    t_ms = get("event_time_ms")
    if t_ms.__class__ is not int or not 0 <= t_ms < MAX_TIME_MS:
        raise RecordError("event_time_ms: required, epoch milliseconds in [0, 2**53)")
    duration = get("duration_ms")
    if duration is None or (duration.__class__ is float and not isfinite(duration)):
        duration = NO_DURATION  # orjson writes NaN and +-inf as null: None
    elif duration.__class__ is not float:
        raise RecordError(f"duration_ms: a float or None, got {type(duration).__name__} (an"
                          " int stays an int on the JSON path)")
    if get("steps"):
        raise RecordError("steps: a span event record carries no steps")
    if offset.__class__ is not int or index.__class__ is not int:
        raise RecordError(f"offset, index: must be ints, got {offset!r}, {index!r}")
    try:
        return HEAD.pack(VERSION, t_ms, offset, index, raw, duration) + tail
    except struct.error:
        raise RecordError(f"offset, index: must fit uint64, uint32, got {offset}, "
                          f"{index}") from None


# ---------------------------------------------------------------------- decode


def _plan(flags: int) -> tuple[struct.Struct, int, tuple[int, ...]] | None:
    """For one flags value: the lengths' struct, where the strings start in the tail, and
    the index among the strings of version, code, text trace, downstream service, endpoint
    and kind (-1: absent); None for flags no encoder writes."""
    if flags & 0x80 or (flags & F_TRACE_RAW and not flags & F_TRACE) or \
            (flags & (F_DOWN_ENDPOINT | F_DOWN_KIND) and not flags & F_DOWN):
        return None
    where = []
    n = 4
    for bit in (F_VERSION, F_ERROR_CODE, F_TRACE, F_DOWN, F_DOWN_ENDPOINT, F_DOWN_KIND):
        if flags & bit and not (bit == F_TRACE and flags & F_TRACE_RAW):
            where.append(n)
            n += 1
        else:
            where.append(-1)
    return LENGTHS[n], 2 + 2 * n, tuple(where)


PLANS = tuple(_plan(flags) for flags in range(256))


def _strings(tail: bytes) -> Strings:
    """The values of a record's tail, every rule checked; memoized when small and without
    a text trace id."""
    if len(tail) < 2:
        raise RecordError("truncated: no flags and status")
    flags, status = tail[0], tail[1]
    plan = PLANS[flags]
    if plan is None:
        raise RecordError(f"invalid flags 0x{flags:02x}")
    if status >= len(STATUSES):
        raise RecordError(f"unknown status {status}")
    counts, start, (iv, ic, it, ids, ie, ik) = plan
    if len(tail) < start:
        raise RecordError(f"truncated: the string lengths need {counts.size} bytes")
    lengths = counts.unpack_from(tail, 2)
    end = start + sum(lengths)
    if end != len(tail):
        raise RecordError(
            f"truncated: the strings need {end - len(tail)} more bytes" if end > len(tail)
            else f"trailing garbage: {len(tail) - end} bytes after the record")
    area = tail[start:]
    text = []
    pos = 0
    try:
        if area.isascii():  # characters are bytes: decode once, slice the text
            whole = area.decode("ascii")
            for length in lengths:
                stop = pos + length
                text.append(whole[pos:stop])
                pos = stop
        else:
            for length in lengths:
                stop = pos + length
                text.append(area[pos:stop].decode())
                pos = stop
    except UnicodeDecodeError as exc:
        raise RecordError(f"invalid UTF-8 in string {len(text)}: {exc.reason}") from None
    source, service, env, step = text[:4]
    if not service:
        raise RecordError("service: must be non-empty")
    if not env:
        raise RecordError("env: must be non-empty")
    if not step:
        raise RecordError("step: must be non-empty")
    down = None
    if ids >= 0:
        if not text[ids]:
            raise RecordError("downstream.service: must be non-empty")
        down = (text[ids], text[ie] if ie >= 0 else None, text[ik] if ik >= 0 else None)
    trace: str | _Raw | None = text[it] if it >= 0 else RAW if flags & F_TRACE_RAW else None
    out = (source, service, env, step, STATUSES[status], text[iv] if iv >= 0 else None,
           text[ic] if ic >= 0 else None, trace, down)
    if it < 0 and len(tail) <= MEMO_TAIL_BYTES:
        if len(_STRINGS) >= MEMO_ENTRIES:
            _STRINGS.clear()
        _STRINGS[tail] = out
    return out


def decode_span_event(data: bytes) -> tuple[dict[str, Any], str, tuple[int, int]]:
    """A version-3 or version-1 record as ``(event, source, (offset, index))``: the event
    holds event_time_ms, service, env, step, status, service_version, error_code,
    trace_id, duration_ms (None from version 1), downstream and steps, with the values the
    JSON path's decoder gives. Any bytes that are not such a record raise
    :class:`RecordError`, never another exception."""
    if data.__class__ is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise RecordError(f"a record is bytes, got {type(data).__name__}")
        data = bytes(data)
    if not data:
        raise RecordError("truncated: empty record")
    first = data[0]
    size = HEAD_SIZE if first == VERSION else HEAD_1_SIZE if first == VERSION_1 else 0
    if not size:
        raise RecordError(f"unknown version {first} (this reader knows 1 and 3)")
    if len(data) <= size:
        raise RecordError(f"truncated: {len(data)} bytes, shorter than any record")
    if first == VERSION:
        _, t_ms, offset, index, raw, duration = HEAD.unpack_from(data)
        if not isfinite(duration):
            if data[DURATION_AT:HEAD_SIZE] != NO_DURATION_BYTES:
                raise RecordError(f"duration_ms: {duration} (bytes {data[DURATION_AT:size].hex()})"
                                  " is neither a finite float nor None's NaN")
            duration = None
    else:
        _, t_ms, offset, index, raw = HEAD_1.unpack_from(data)
        duration = None
    tail = data[size:]
    source, service, env, step, status, version, code, trace, down = \
        _STRINGS.get(tail) or _strings(tail)
    if not 0 <= t_ms < MAX_TIME_MS:
        raise RecordError(f"event_time_ms out of range: {t_ms}")
    if trace is RAW:
        trace = raw.hex()
    elif raw != NO_TRACE:
        raise RecordError("trace id bytes set without the raw trace flag")
    return {
        "event_time_ms": t_ms, "service": service, "env": env, "step": step,
        "status": status, "service_version": version, "error_code": code,
        "trace_id": trace, "duration_ms": duration, "steps": [],
        "downstream": None if down is None else
        {"service": down[0], "endpoint": down[1], "kind": down[2]},
    }, source, (offset, index)
