"""Span event packs, record version 2: several records (:mod:`.record`) of one span record
bound for one partition, in one Kafka record (:func:`encode_span_pack`)::

    offset  size  field
    0       1     version, 2
    1       2     count of records, uint16, at least 1
    3       ...   count times: uint32 byte length, then a record (version 3, as the
                  encoder writes them now, or version 1, as older intakes did; a pack
                  may mix them: each decodes by its own first byte)

A Kafka record costs the intake and the detector more (batching, partitioning, headers,
the merge) than the event it carries costs to encode; a span record's entry spans become
tens of events that land on a few partitions.
"""

from __future__ import annotations

import struct
from typing import Any

from tocsin.processors.otlp.record import RecordError, decode_span_event

PACK_VERSION = 2
PACK_HEAD = struct.Struct("<BH")
PACK_LENGTH = struct.Struct("<I")
PACK_MAX = 0xFFFF  # records in one pack


def encode_span_pack(records: list[bytes]) -> bytes:
    """Records (from :func:`encode_span_event`) as one pack; 1 to :data:`PACK_MAX` of
    them."""
    if not 1 <= len(records) <= PACK_MAX:
        raise RecordError(f"a pack holds 1 to {PACK_MAX} records, not {len(records)}")
    length = PACK_LENGTH.pack
    return b"".join([PACK_HEAD.pack(PACK_VERSION, len(records)),
                     *(part for r in records for part in (length(len(r)), r))])


def decode_span_pack(data: bytes) -> list[tuple[dict[str, Any], str, tuple[int, int]]]:
    """A pack's records, each as :func:`decode_span_event` gives it, in order. Any bytes
    that are not such a pack (a wrong count, a length past the end, bytes left over, a
    record inside that is not one) raise :class:`RecordError`."""
    if data.__class__ is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise RecordError(f"a pack is bytes, got {type(data).__name__}")
        data = bytes(data)
    if len(data) < PACK_HEAD.size:
        raise RecordError(f"truncated: {len(data)} bytes, shorter than any pack")
    version, count = PACK_HEAD.unpack_from(data)
    if version != PACK_VERSION:
        raise RecordError(f"unknown pack version {version} (this reader knows "
                          f"{PACK_VERSION})")
    if count < 1:
        raise RecordError("an empty pack")
    out: list[tuple[dict[str, Any], str, tuple[int, int]]] = []
    at, end = PACK_HEAD.size, len(data)
    unpack = PACK_LENGTH.unpack_from
    for _ in range(count):
        if at + 4 > end:
            raise RecordError(f"truncated: pack of {count} ends after {len(out)} records")
        (size,) = unpack(data, at)
        at += 4
        if at + size > end:
            raise RecordError(f"truncated: record {len(out)} of the pack runs past its end")
        out.append(decode_span_event(data[at:at + size]))
        at += size
    if at != end:
        raise RecordError(f"{end - at} bytes after the pack's {count} records")
    return out
