"""What the span intake publishes on the events topic for one translated wide event
(ADR 0015): the binary span event record (:mod:`.record`) whenever it carries the event
exactly, else the JSON wide event, as before the record existed.

JSON stays for the events the record cannot carry or would carry differently: one the
encoder refuses (:class:`~.record.RecordError`: the JSON path then dead-letters it at the
detector with the validator's reason, as it always did) and one whose record would be
longer than :data:`BINARY_MAX_BYTES`. An entry span's record is 80-150 bytes; a longer one
has strings tens of times longer than any real service, step or error code, and among
those the record's 64 KB cut on one string, the one place it would read differently from
the JSON path. So the detector sees the same event values either way, and a huge event
meets the detector's ``max_record_bytes`` check in its JSON form, as today.

Binary records of one span record bound for the same events partition travel as one
pack (:func:`event_records`, :func:`~.pack.encode_span_pack`); a JSON event goes alone,
between the packs before and after it, so each partition still reads the record's events
in index order.

On the by-trace topic (:func:`by_trace_records`) the intake sends each span record's spans
again, one record per by-trace partition they land on: every span of a trace on the
partition :func:`trace_partition` names, so one assembler sees the whole trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any
from zlib import crc32

import orjson

from tocsin.processors.otlp.pack import encode_span_pack
from tocsin.processors.otlp.record import VERSION, RecordError, encode_span_event
from tocsin.processors.otlp.spans import Span
from tocsin.processors.traces.assembler import span_to_list

BINARY_MAX_BYTES = 1_024
BY_TRACE_MAX_BYTES = 128 * 1024  # a by-trace record of several span records is cut here
PACK_MAX_BYTES = 64 * 1024  # a pack is cut before it passes this (detectors refuse 256 KB)


def event_value(event: Mapping[str, Any], source: str, offset: int, index: int,
                whole: Callable[[], Mapping[str, Any]] | None = None) -> bytes:
    """The value to publish for ``event``, the ``index``-th wide event of the span record
    at ``offset`` of ``source`` (``"topic:partition"``): a span event record, or the JSON
    of the whole wide event (``whole()`` when given: ``event`` may hold only what the
    record carries) when the record cannot carry it exactly (module doc)."""
    try:
        data: bytes | None = encode_span_event(event, source, offset, index)
    except RecordError:
        data = None
    if data is not None and len(data) <= BINARY_MAX_BYTES:
        return data
    return orjson.dumps(event if whole is None else whole())


def event_records(events: Iterable[Mapping[str, Any]], source: str, offset: int,
                  place: Callable[[bytes], int],
                  whole: Callable[[int], Mapping[str, Any]] | None = None
                  ) -> list[tuple[int, bytes, bytes, list[int]]]:
    """(partition, key, value, the indexes of the events it carries) for the wide events
    of the span record at ``offset`` of ``source``, the ``index``-th event being the
    ``index``-th of ``events``: on each partition (``place`` of the service key), the
    binary records in packs of consecutive events, a JSON event alone, in index order. A
    pack of one is the bare record. The key is the first event's service.

    ``events`` may be detected events (:func:`~.mapping.detected_event`, what a record
    carries) when ``whole(index)`` gives the whole wide event for the JSON ones."""
    out: list[tuple[int, bytes, bytes, list[int]]] = []
    # partition -> (key, its records, their indexes, the pack's size so far)
    packs: dict[int, tuple[bytes, list[bytes], list[int], int]] = {}

    def close(partition: int) -> None:
        key, records, indexes, _ = packs.pop(partition)
        out.append((partition, key, records[0] if len(records) == 1
                    else encode_span_pack(records), indexes))

    for index, event in enumerate(events):
        key = event["service"].encode()
        partition = place(key)
        value = event_value(event, source, offset, index,
                            None if whole is None else partial(whole, index))
        pack = packs.get(partition)
        if value[0] != VERSION:  # JSON: alone, after what came before on its partition
            if pack is not None:
                close(partition)
            out.append((partition, key, value, [index]))
            continue
        size = 4 + len(value)  # its length, then the record
        if pack is not None and pack[3] + size > PACK_MAX_BYTES:
            close(partition)
            pack = None
        if pack is None:
            packs[partition] = (key, [value], [index], 3 + size)  # the pack's head first
        else:
            pack[1].append(value)
            pack[2].append(index)
            packs[partition] = (pack[0], pack[1], pack[2], pack[3] + size)
    for partition in list(packs):
        close(partition)
    return out


def trace_partition(trace_id: str, partitions: int) -> int:
    """The by-trace partition of a trace: CRC-32 of its id (lowercase hex) modulo the
    partition count. Any intake computes the same, in C, in a tenth of a microsecond
    (aiokafka's murmur2 of a key is pure Python, microseconds, and trace ids never repeat
    for a cache to help)."""
    return crc32(trace_id.encode()) % partitions


_HEAD, _TAIL = b'{"v":1,"spans":[', b"]}"  # a by-trace record's value around its spans


def _by_trace_groups(spans: Iterable[Span], partitions: int
                     ) -> list[tuple[int, bytes, list[Span]]]:
    """(partition, its spans' JSON without the brackets, its spans) per by-trace
    partition the spans land on, each span as
    :func:`~tocsin.processors.traces.assembler.span_to_list` writes it, in order."""
    groups: dict[int, list[Span]] = {}
    placed: dict[str, int] = {}
    for span in spans:
        partition = placed.get(span.trace_id)
        if partition is None:
            partition = placed[span.trace_id] = trace_partition(span.trace_id, partitions)
        groups.setdefault(partition, []).append(span)
    return [(partition, orjson.dumps([span_to_list(s) for s in group])[1:-1], group)
            for partition, group in groups.items()]


def by_trace_records(spans: Iterable[Span], partitions: int
                     ) -> list[tuple[int, bytes, list[Span]]]:
    """(partition, value, its spans) for one span record's spans on the by-trace topic: one
    record per partition its traces land on, ``{"v": 1, "spans": [...]}`` with each span as
    :func:`~tocsin.processors.traces.assembler.span_to_list` writes it, in the record's
    order. A by-trace record may hold several traces: the assembler reads span by span.
    Per partition and not per trace: a Collector batch holds hundreds of traces, and each
    Kafka record costs more to send and read than its spans cost to encode."""
    return [(partition, _HEAD + fragment + _TAIL, group)
            for partition, fragment, group in _by_trace_groups(spans, partitions)]


def by_trace_batches(records: Iterable[tuple[str, int, Iterable[Span]]], partitions: int,
                     max_bytes: int = BY_TRACE_MAX_BYTES
                     ) -> list[tuple[int, str, int, bytes, list[Span]]]:
    """(partition, source, first offset, value, its spans) for the spans of consecutive
    span records (``(source, offset, spans)``, in release order): per source and by-trace
    partition, the spans of several span records in one by-trace record, as
    :func:`by_trace_records` writes one record's, cut before ``max_bytes`` (one span
    record's spans for a partition are never split: alone they may pass it, as before).

    A Kafka record costs more to send, fetch and read than its spans cost to encode, and a
    span record's spans spread over every by-trace partition (5 spans a record and
    partition on the bench's workload). The assembly reads span by span and learns a
    source's progress from marks and the largest span end it has read, so where one
    record ends and the next begins changes nothing it decides. Records come out per
    source and partition in offset order: one cut by size when the next would pass it,
    then every other in the order it was opened."""
    out: list[tuple[int, str, int, bytes, list[Span]]] = []
    # (source, partition) -> (first offset, JSON fragments, spans, bytes so far)
    batches: dict[tuple[str, int], tuple[int, list[bytes], list[Span], int]] = {}

    def close(key: tuple[str, int]) -> None:
        first, fragments, spans, _ = batches.pop(key)
        out.append((key[1], key[0], first, _HEAD + b",".join(fragments) + _TAIL, spans))

    for source, offset, spans in records:
        for partition, fragment, group in _by_trace_groups(spans, partitions):
            key = (source, partition)
            batch = batches.get(key)
            if batch is not None and batch[3] + len(fragment) + 1 > max_bytes:
                close(key)
                batch = None
            if batch is None:
                batches[key] = (offset, [fragment], group,
                                len(_HEAD) + len(_TAIL) + len(fragment))
            else:
                batch[1].append(fragment)
                batch[2].extend(group)
                batches[key] = (batch[0], batch[1], batch[2], batch[3] + len(fragment) + 1)
    for key in list(batches):
        close(key)
    return out
