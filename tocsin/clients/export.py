"""``tocsin export``: the input topics written to files, as evidence (ADR 0021).

One file per topic partition, ``<out>/<topic>/<partition>.tlog.gz``: gzip of a small
header (magic, format version, topic, partition) and the partition's records in offset
order, each length-prefixed binary (offset, timestamp, key, headers, value: bytes kept
exactly), then a trailer with the record count. ``manifest.json`` names every file with
its sha256, its size, the offsets read and the offsets and timestamps kept, and the
selection that was asked for.

The encoding and decoding here are plain functions (:class:`LogWriter`, :class:`LogReader`,
:func:`decode_log`, :func:`verify_export`) so that ``tocsin replay`` reads what this
writes; a damaged file is a :class:`RecordedLogError` naming the file and where.

Reading from the broker: a consumer with partitions assigned by hand (no group), each
partition read from its log start to its end as it was when the export began (the high
watermark of a fetch: Tansu answers ListOffsets with the base offset of the last batch,
see :mod:`tocsin.streams.kafka.io`), so a live topic still gives a finite export.
``--from``/``--to`` select by record timestamp while every offset is read (Tansu's
offsets-for-times answers 0, and timestamps need not follow offsets anyway).

Exit codes: 0 written, 1 the export failed (a topic asked for is missing, the broker
cannot be read), 2 bad arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple

import click
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)

MAGIC = b"TLOG"
FORMAT_VERSION = 1
FORMAT_NAME = "tocsin.tlog"
SUFFIX = ".tlog.gz"
MANIFEST = "manifest.json"
COMPRESS_LEVEL = 3  # zlib: on the bench's events ~25% faster than 6, ~15% larger
CHUNK = 1 << 20  # bytes buffered before a write to gzip, and read per refill

_HEAD = struct.Struct(">4sHiH")  # magic, version, partition, topic length (then topic)
_REC = struct.Struct(">qqi")  # offset, timestamp ms, key length (-1: null)
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_NO_HEADERS = struct.Struct(">ii")  # header count 0, then the value length
_END = -1  # an offset field of -1 starts the trailer: then the record count (int64)
_INT32_MAX = 2**31 - 1
MAX_FIELD_BYTES = 256 * 1024 * 1024
"""A key, header value or value longer than this is damage (Kafka's own limits are far
below): the reader refuses it instead of buffering a decompressed bomb."""

Headers = tuple[tuple[str, bytes | None], ...]


class RecordedLogError(Exception):
    """A recorded log that cannot be read: not one, truncated, corrupt, or not what the
    manifest says. Names the file, the byte of its uncompressed stream, and the offset of
    the last record read whole."""

    def __init__(self, source: str, problem: str, position: int | None = None,
                 last_offset: int | None = None) -> None:
        self.source = source
        self.problem = problem
        self.position = position
        self.last_offset = last_offset
        where = []
        if position is not None:
            where.append(f"byte {position}")
        if last_offset is not None:
            where.append(f"after record offset {last_offset}")
        elif position is not None:
            where.append("before any record")
        at = f" (at {', '.join(where)})" if where else ""
        super().__init__(f"{source}: {problem}{at}")


class LogRecord(NamedTuple):
    """One record as the file holds it (a named tuple: a replay makes one per record)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


# ---------------------------------------------------------------------- encoding


def encode_file_header(topic: str, partition: int) -> bytes:
    name = topic.encode()
    if not 0 < len(name) < 2**16 or not 0 <= partition <= _INT32_MAX:
        raise ValueError(f"bad topic partition {topic!r}/{partition}")
    return _HEAD.pack(MAGIC, FORMAT_VERSION, partition, len(name)) + name


def encode_record(offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None,
                  headers: Iterable[tuple[str, bytes | None]] = ()) -> bytes:
    """One record's bytes: offset, timestamp, key, headers (count, then name and value
    each), value; every length an int32 where -1 is null."""
    if offset < 0:
        raise ValueError(f"offset {offset} < 0")
    parts = [_REC.pack(offset, timestamp_ms, -1 if key is None else len(key))]
    if key is not None:
        parts.append(key)
    hs = list(headers)
    parts.append(_I32.pack(len(hs)))
    for name, hv in hs:
        nb = name.encode()
        parts.append(_I32.pack(len(nb)))
        parts.append(nb)
        parts.append(_I32.pack(-1 if hv is None else len(hv)))
        if hv is not None:
            parts.append(hv)
    parts.append(_I32.pack(-1 if value is None else len(value)))
    if value is not None:
        parts.append(value)
    return b"".join(parts)


def encode_trailer(count: int) -> bytes:
    return _I64.pack(_END) + _I64.pack(count)


def encode_log(topic: str, partition: int, records: Iterable[LogRecord]) -> bytes:
    """A whole uncompressed stream (what a ``.tlog.gz`` file holds, gunzipped)."""
    parts = [encode_file_header(topic, partition)]
    n = 0
    for r in records:
        parts.append(encode_record(r.offset, r.timestamp_ms, r.key, r.value, r.headers))
        n += 1
    parts.append(encode_trailer(n))
    return b"".join(parts)


@dataclass
class FileSummary:
    """What the manifest says of one file."""

    path: str  # relative to the export directory, with /
    topic: str
    partition: int
    count: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None
    min_timestamp_ms: int | None = None
    max_timestamp_ms: int | None = None
    bytes: int = 0
    sha256: str = ""
    start_offset: int | None = None  # first offset read (the log start)
    end_offset: int | None = None  # offsets read: [start_offset, end_offset)

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "path", "topic", "partition", "start_offset", "end_offset", "count",
            "first_offset", "last_offset", "first_timestamp_ms", "last_timestamp_ms",
            "min_timestamp_ms", "max_timestamp_ms", "bytes", "sha256")}


class _HashingSink:
    """The file under the gzip stream: hashes and counts the compressed bytes written."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class Compressor:
    """One background thread for the gzip and sha256 work of every :class:`LogWriter`
    given it (zlib, hashlib and file writes let go of the GIL, so it overlaps the reading
    of the broker). Jobs run in submission order; at most ``backlog`` chunks wait, so
    memory stays bounded when compression is the slower side. A job's failure is raised
    from a later :meth:`submit` or from :meth:`drain`."""

    def __init__(self, backlog: int = 16) -> None:
        self.backlog = backlog
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tlog-gzip")
        self._jobs: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        while len(self._jobs) >= self.backlog:
            self._jobs.popleft().result()
        job = self._pool.submit(fn, *args)
        self._jobs.append(job)
        return job

    def drain(self) -> None:
        while self._jobs:
            self._jobs.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


class LogWriter:
    """Writes one topic partition's file; records must come in increasing offset order.
    :meth:`close` returns the file's :class:`FileSummary` (size and sha256 of the bytes
    on disk). The gzip header holds no name and no time: the same records at the same
    level give the same bytes. With a :class:`Compressor`, the compression runs on its
    thread."""

    def __init__(self, path: Path | str, topic: str, partition: int, *,
                 relative_to: Path | str | None = None, level: int = COMPRESS_LEVEL,
                 compressor: Compressor | None = None) -> None:
        self.path = Path(path)
        rel = self.path.relative_to(relative_to) if relative_to else Path(self.path.name)
        self.summary = FileSummary(rel.as_posix(), topic, partition)
        self._compressor = compressor
        self._raw = self.path.open("wb")
        self._sink = _HashingSink(self._raw)
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._sink,
                                 compresslevel=level, mtime=0)
        self._buf = bytearray(encode_file_header(topic, partition))
        self._closed = False

    def write(self, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None,
              headers: Iterable[tuple[str, bytes | None]] | None = ()) -> None:
        s = self.summary
        last = s.last_offset
        if last is None:
            if offset < 0:
                raise ValueError(f"{s.path}: offset {offset} < 0")
            s.first_offset, s.first_timestamp_ms = offset, timestamp_ms
            s.min_timestamp_ms = s.max_timestamp_ms = timestamp_ms
        elif offset <= last:
            raise ValueError(f"{s.path}: offset {offset} after {last}")
        buf = self._buf
        if headers:
            buf += encode_record(offset, timestamp_ms, key, value, headers)
        else:  # the common case, inline: no headers
            buf += _REC.pack(offset, timestamp_ms, -1 if key is None else len(key))
            if key is not None:
                buf += key
            buf += _NO_HEADERS.pack(0, -1 if value is None else len(value))
            if value is not None:
                buf += value
        s.last_offset, s.last_timestamp_ms = offset, timestamp_ms
        if timestamp_ms < s.min_timestamp_ms:  # type: ignore[operator]
            s.min_timestamp_ms = timestamp_ms
        elif timestamp_ms > s.max_timestamp_ms:  # type: ignore[operator]
            s.max_timestamp_ms = timestamp_ms
        s.count += 1
        if len(buf) >= CHUNK:
            self._flush()

    def write_record(self, r: LogRecord) -> None:
        self.write(r.offset, r.timestamp_ms, r.key, r.value, r.headers)

    def _flush(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        if self._compressor is None:
            self._gz.write(data)
        else:
            self._compressor.submit(self._gz.write, data)

    def _finish(self) -> None:
        self._gz.close()
        self._raw.close()

    def close(self) -> FileSummary:
        if not self._closed:
            self._closed = True
            self._buf += encode_trailer(self.summary.count)
            self._flush()
            if self._compressor is None:
                self._finish()
            else:
                self._compressor.submit(self._finish).result()
            self.summary.bytes = self._sink.size
            self.summary.sha256 = self._sink.sha.hexdigest()
        return self.summary

    def abort(self) -> None:
        """Close the file, as it is (after a failure: no manifest will name it)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._gz.close()
            self._raw.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if t is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------- decoding


class _Stream:
    """Parses the uncompressed stream from ``read(n)`` chunk by chunk."""

    def __init__(self, read: Callable[[int], bytes], source: str) -> None:
        self._read = read
        self.source = source
        self.buf = b""
        self.pos = 0  # in buf
        self.base = 0  # stream position of buf[0]
        self.eof = False
        self.last_offset: int | None = None

    def error(self, problem: str, at: int | None = None) -> RecordedLogError:
        return RecordedLogError(self.source, problem,
                                self.base + (self.pos if at is None else at),
                                self.last_offset)

    def fill(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        if self.eof:
            return False
        try:
            chunk = self._read(CHUNK)
        except (OSError, EOFError, zlib.error) as exc:  # gzip: truncated, bad CRC, ...
            self.eof = True
            raise self.error(f"cannot decompress ({exc})",
                             len(self.buf)) from exc
        if not chunk:
            self.eof = True
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def need(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            if not self.fill():
                raise self.error("truncated", len(self.buf))

    def header(self) -> tuple[str, int]:
        try:
            self.need(_HEAD.size)
        except RecordedLogError as exc:
            if self.base + len(self.buf) == 0 and exc.problem == "truncated":
                raise self.error("empty: not a recorded log") from None
            raise
        magic, version, partition, tlen = _HEAD.unpack_from(self.buf, self.pos)
        if magic != MAGIC:
            raise self.error(f"not a recorded log (magic {magic!r}, not {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise self.error(f"format version {version}; this reader knows {FORMAT_VERSION}")
        if partition < 0 or tlen == 0:
            raise self.error(f"bad header (partition {partition}, topic length {tlen})")
        self.need(_HEAD.size + tlen)
        raw = self.buf[self.pos + _HEAD.size:self.pos + _HEAD.size + tlen]
        try:
            topic = raw.decode()
        except UnicodeDecodeError:
            raise self.error("topic name is not UTF-8") from None
        self.pos += _HEAD.size + tlen
        return topic, partition

    def records(self) -> Iterator[LogRecord]:
        count = 0
        while True:
            run = self._parse_plain()
            if run:
                count += len(run)
                self.last_offset = run[-1].offset
                yield from run
                continue
            rec = self._parse_one()
            if rec is None:  # incomplete in the buffer: more, or truncated
                if not self.fill():
                    if self.pos == len(self.buf):
                        raise self.error("truncated: no trailer")
                    raise self.error("truncated record")
                continue
            if rec is _TRAILER:
                self.need(16)
                n = _I64.unpack_from(self.buf, self.pos + 8)[0]
                if n != count:
                    raise self.error(f"trailer counts {n} records, the file holds {count}")
                self.pos += 16
                if self.pos < len(self.buf) or self.fill():
                    raise self.error("bytes after the trailer")
                return
            assert isinstance(rec, LogRecord)
            count += 1
            self.last_offset = rec.offset
            yield rec

    def _field(self, buf: bytes, p: int, length: int, what: str, offset: int
               ) -> tuple[bytes | None, int] | None:
        """A length-prefixed field at ``p`` whose length was read (-1: null): its bytes and
        the position after it, or None when the buffer ends first."""
        if length == -1:
            return None, p
        if length < 0 or length > MAX_FIELD_BYTES:
            raise self.error(f"corrupt: {what} length {length} of offset {offset}"
                             + (f" (over {MAX_FIELD_BYTES} bytes)" if length > 0 else ""))
        if p + length > len(buf):
            return None
        return buf[p:p + length], p + length

    def _parse_plain(self) -> list[LogRecord]:
        """The records from ``pos`` on that have no headers and are whole in the buffer,
        parsed in one tight loop (``pos`` moves past them); it stops, leaving the rest to
        :meth:`_parse_one`, at anything else: headers, the trailer, damage, a cut."""
        buf, p = self.buf, self.pos
        end = len(buf)
        last = -1 if self.last_offset is None else self.last_offset
        rec_at, plain_at = _REC.unpack_from, _NO_HEADERS.unpack_from
        out: list[LogRecord] = []
        append = out.append
        new, cls, none = tuple.__new__, LogRecord, ()
        while p + 28 <= end:  # offset, timestamp, key length, header count, value length
            offset, ts, klen = rec_at(buf, p)
            if offset <= last or klen < -1 or klen > MAX_FIELD_BYTES:
                break
            q = p + 20
            key = None
            if klen >= 0:
                key = buf[q:q + klen]
                q += klen
            if q + 8 > end:
                break
            nh, vlen = plain_at(buf, q)
            if nh or vlen < -1 or vlen > MAX_FIELD_BYTES or q + 8 + max(vlen, 0) > end:
                break
            q += 8
            value = None
            if vlen >= 0:
                value = buf[q:q + vlen]
                q += vlen
            append(new(cls, (offset, ts, key, value, none)))  # LogRecord(...), without
            last = offset  # the named tuple's Python-level __new__
            p = q
        self.pos = p
        return out

    def _parse_one(self) -> LogRecord | object | None:
        """The record at ``pos`` (``pos`` moves past it), :data:`_TRAILER`, or None when
        the buffer does not hold all of it."""
        buf, p = self.buf, self.pos
        end = len(buf)
        if p + 8 > end:
            return None
        offset = _I64.unpack_from(buf, p)[0]
        if offset == _END:
            return _TRAILER
        if p + _REC.size > end:
            return None
        offset, ts, klen = _REC.unpack_from(buf, p)
        if offset < 0:
            raise self.error(f"corrupt: record offset {offset}")
        if self.last_offset is not None and offset <= self.last_offset:
            raise self.error(f"corrupt: offset {offset} does not follow {self.last_offset}")
        p += _REC.size
        got = self._field(buf, p, klen, "key", offset)
        if got is None:
            return None
        key, p = got
        if p + 4 > end:
            return None
        nh = _I32.unpack_from(buf, p)[0]
        p += 4
        if nh < 0:
            raise self.error(f"corrupt: header count {nh} of offset {offset}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(nh):
            if p + 4 > end:
                return None
            nlen = _I32.unpack_from(buf, p)[0]
            p += 4
            if nlen < 0:
                raise self.error(f"corrupt: header name length {nlen} of offset {offset}")
            if p + nlen + 4 > end:
                return None
            try:
                name = buf[p:p + nlen].decode()
            except UnicodeDecodeError:
                raise self.error(f"corrupt: header name of offset {offset} is not UTF-8"
                                 ) from None
            p += nlen
            got = self._field(buf, p + 4, _I32.unpack_from(buf, p)[0], "header value",
                              offset)
            if got is None:
                return None
            hv, p = got
            headers.append((name, hv))
        if p + 4 > end:
            return None
        got = self._field(buf, p + 4, _I32.unpack_from(buf, p)[0], "value", offset)
        if got is None:
            return None
        value, p = got
        self.pos = p
        return LogRecord(offset, ts, key, value, tuple(headers))


_TRAILER = object()


class LogReader:
    """Reads one ``.tlog.gz`` file: ``topic`` and ``partition`` from its header (read on
    opening), then its records in offset order by iterating. Every problem, from gzip or
    from the records, is a :class:`RecordedLogError`; the last record of a file is only
    known good once iteration ends without one (the trailer's count is checked)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._raw = self.path.open("rb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self._stream = _Stream(self._gz.read, str(self.path))
        try:
            self.topic, self.partition = self._stream.header()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[LogRecord]:
        return self._stream.records()

    def close(self) -> None:
        self._gz.close()
        self._raw.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_log(path: Path | str) -> tuple[str, int, list[LogRecord]]:
    """(topic, partition, every record) of one file."""
    with LogReader(path) as r:
        return r.topic, r.partition, list(r)


def decode_log(data: bytes, source: str = "<bytes>") -> tuple[str, int, list[LogRecord]]:
    """(topic, partition, records) of an uncompressed stream."""
    stream = _Stream(io.BytesIO(data).read, source)
    topic, partition = stream.header()
    return topic, partition, list(stream.records())


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: Path | str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RecordedLogError(str(path), f"no readable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise RecordedLogError(str(path), f"not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RecordedLogError(str(path), f"format version {manifest.get('format_version')}; "
                               f"this reader knows {FORMAT_VERSION}")
    return manifest


def verify_export(directory: Path | str, *, read_records: bool = False) -> dict[str, Any]:
    """The manifest of an export directory, once every file it lists has its size and
    sha256 (and, with ``read_records``, its topic, partition, count and offsets)."""
    root = Path(directory)
    manifest = load_manifest(root)
    for entry in manifest.get("files", ()):
        rel = str(entry["path"])
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise RecordedLogError(rel, "path leaves the export directory")
        if not path.is_file():
            raise RecordedLogError(str(path), "listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise RecordedLogError(str(path), f"{size} bytes, the manifest says "
                                   f"{entry['bytes']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise RecordedLogError(str(path), f"sha256 {digest}, the manifest says "
                                   f"{entry['sha256']}")
        if read_records:
            with LogReader(path) as reader:
                if (reader.topic, reader.partition) != (entry["topic"], entry["partition"]):
                    raise RecordedLogError(str(path), f"holds {reader.topic}/"
                                           f"{reader.partition}, the manifest says "
                                           f"{entry['topic']}/{entry['partition']}")
                n, first, last = 0, None, None
                for rec in reader:
                    n += 1
                    first = rec.offset if first is None else first
                    last = rec.offset
                if (n, first, last) != (entry["count"], entry["first_offset"],
                                        entry["last_offset"]):
                    raise RecordedLogError(str(path), f"holds {n} records {first}..{last}, "
                                           f"the manifest says {entry['count']} "
                                           f"{entry['first_offset']}..{entry['last_offset']}")
    return manifest


def file_path(topic: str, partition: int) -> str:
    return f"{topic}/{partition}{SUFFIX}"


def build_manifest(*, broker: str, files: Sequence[FileSummary], selection: dict[str, Any],
                   skipped: Sequence[dict[str, str]] = (), created_at: str | None = None,
                   tool_version: str | None = None) -> dict[str, Any]:
    """The manifest: files in (topic, partition) order. ``created_at`` is informative (a
    wall clock); nothing hashed depends on it."""
    ordered = sorted(files, key=lambda f: (f.topic, f.partition))
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "compression": "gzip",
        "tool": "tocsin",
        "tool_version": tool_version or _tool_version(),
        "created_at": created_at,
        "broker": broker,
        "selection": selection,
        "skipped": list(skipped),
        "records": sum(f.count for f in ordered),
        "bytes": sum(f.bytes for f in ordered),
        "files": [f.as_json() for f in ordered],
    }


def write_export(directory: Path | str, records: Iterable[tuple[str, int, LogRecord]],
                 *, broker: str = "(written directly)") -> dict[str, Any]:
    """An export directory of ``(topic, partition, record)`` items (each partition's in
    increasing offset order), as ``tocsin export`` lays one out: for tests, benchmarks and
    logs recorded elsewhere. Returns the manifest written."""
    root = Path(directory)
    writers: dict[tuple[str, int], LogWriter] = {}
    try:
        for topic, partition, rec in records:
            w = writers.get((topic, partition))
            if w is None:
                (root / topic).mkdir(parents=True, exist_ok=True)
                w = writers[(topic, partition)] = LogWriter(
                    root / file_path(topic, partition), topic, partition, relative_to=root)
            w.write_record(rec)
        files = [w.close() for w in writers.values()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    topics = sorted({t for t, _ in writers})
    manifest = build_manifest(broker=broker, files=files, selection={
        "topics": topics, "topics_given": True, "from": None, "from_ms": None, "to": None,
        "to_ms": None})
    write_manifest(root, manifest)
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> bytes:
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, directory / MANIFEST)
    return data


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tocsin")
    except PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


# ---------------------------------------------------------------------- arguments

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_EPOCH_MS = re.compile(r"-?[0-9]+")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 time (with its offset or Z) or of an integer of
    epoch milliseconds. A time between two milliseconds rounds up: ``t >= --from`` and
    ``t < --to`` hold for whole-millisecond timestamps exactly as for the exact time."""
    s = text.strip()
    if _EPOCH_MS.fullmatch(s):
        return int(s)
    try:
        when = dt.datetime.fromisoformat(s.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-11-02T09:00:00Z) nor epoch "
                         "milliseconds") from None
    if when.tzinfo is None or ("T" not in s.upper() and " " not in s):
        raise ValueError(f"{text!r}: give a date, a time and an offset "
                         "(2026-11-02T09:00:00Z or +01:00)")
    us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return -(-us // 1000)


def _ms_text(ms: int) -> str:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return value, parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise click.BadParameter(str(exc)) from None


def _topics_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                   ) -> list[str] | None:
    if not value:
        return None
    names: list[str] = []
    for item in value:
        for name in item.split(","):
            name = name.strip()
            if not name:
                continue
            if not _TOPIC.fullmatch(name) or name in (".", ".."):
                raise click.BadParameter(f"{name!r} is not a Kafka topic name "
                                         "(letters, digits, . _ -, at most 249)")
            if name not in names:
                names.append(name)
    if not names:
        raise click.BadParameter("no topic named")
    return names


def _broker_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{item!r}: give HOST:PORT")
    return value


def default_topics() -> list[str]:
    """The worker's input topics: events, signals, spans (``TOCSIN_TOPICS__*`` apply)."""
    from tocsin.streams.worker.settings import Settings

    topics = Settings().topics
    return list(dict.fromkeys([topics.events, topics.signals, topics.spans]))


# ---------------------------------------------------------------------- the broker


class ExportError(Exception):
    """The export could not be made (a topic missing, the broker unreadable)."""


@dataclass
class Progress:
    total: int = 0  # offsets to read
    done: int = 0
    kept: int = 0


@dataclass
class ExportResult:
    files: list[FileSummary]
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


async def _existing_topics(bootstrap: str, timeout_s: float) -> dict[str, int]:
    """Topic -> partitions, from a metadata request for every topic: naming a missing
    topic in one would make a broker that auto-creates topics (Tansu does) create it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            described = await admin.describe_topics()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    out = {}
    for t in described:
        if not t.get("error_code") and t.get("partitions"):
            out[str(t["topic"])] = len(t["partitions"])
    return out


async def _ends(bootstrap: str, tps: Sequence[Any], starts: dict[Any, int],
                timeout_s: float) -> dict[Any, int]:
    """Each partition's high watermark now: ListOffsets' end (on Tansu the base offset of
    the last batch), then one small fetch from just before it, whose answer carries the
    high watermark."""
    from aiokafka import AIOKafkaConsumer

    from tocsin.streams.kafka.io import stop_quietly

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=64 * 1024)
    await consumer.start()
    try:
        consumer.assign(list(tps))
        listed = await consumer.end_offsets(list(tps))
        for tp in tps:
            consumer.seek(tp, max(int(listed[tp]) - 1, starts[tp]))
        async with asyncio.timeout(timeout_s):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=100, max_records=1)
        return {tp: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await stop_quietly(consumer)


async def export_topics(bootstrap: str, out: Path, topics: Sequence[str], *,
                        explicit: bool, from_ms: int | None = None, to_ms: int | None = None,
                        progress: Progress | None = None, level: int = COMPRESS_LEVEL,
                        stall_s: float = 30.0) -> ExportResult:
    """Write each partition of ``topics`` to ``out``; records in [from_ms, to_ms) by
    timestamp (None: unbounded). A missing topic is an :class:`ExportError` when
    ``explicit``, else skipped (and listed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tocsin.streams.kafka.io import stop_quietly

    progress = progress or Progress()
    started = time.monotonic()
    existing = await _existing_topics(bootstrap, 20.0)
    missing = [t for t in topics if t not in existing]
    if missing and explicit:
        raise ExportError(f"no such topic on {bootstrap}: {', '.join(missing)}")
    skipped = [{"topic": t, "reason": "no such topic on the broker (a default topic, not "
                "asked for)"} for t in missing]
    present = [t for t in topics if t in existing]
    tps = [TopicPartition(t, p) for t in present for p in range(existing[t])]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=100, fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024)
    writers: dict[Any, LogWriter] = {}
    files: list[FileSummary] = []
    compressor = Compressor()
    try:
        await consumer.start()
        if tps:
            consumer.assign(tps)
            starts = {tp: int(o) for tp, o in (await consumer.beginning_offsets(tps)).items()}
            ends = await _ends(bootstrap, tps, starts, 20.0)
        else:
            starts, ends = {}, {}
        out.mkdir(parents=True, exist_ok=True)
        for tp in tps:
            (out / tp.topic).mkdir(exist_ok=True)
            w = LogWriter(out / file_path(tp.topic, tp.partition), tp.topic, tp.partition,
                          relative_to=out, level=level, compressor=compressor)
            w.summary.start_offset, w.summary.end_offset = starts[tp], ends[tp]
            writers[tp] = w
        progress.total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        pending = set()
        for tp in tps:
            if ends[tp] > starts[tp]:
                consumer.seek(tp, starts[tp])
                pending.add(tp)
            else:
                files.append(writers.pop(tp).close())
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        lo = from_ms if from_ms is not None else -(2**63)
        hi = to_ms if to_ms is not None else 2**63 - 1
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=100_000)
            for tp, recs in batch.items():
                if tp not in pending:
                    continue
                w, end = writers[tp], ends[tp]
                for rec in recs:
                    if rec.offset >= end:
                        break
                    if lo <= rec.timestamp < hi:
                        w.write(rec.offset, rec.timestamp, rec.key, rec.value, rec.headers)
                        progress.kept += 1
            moved = bool(batch)
            left = 0
            for tp in list(pending):
                pos = await consumer.position(tp)
                if pos >= ends[tp]:
                    pending.discard(tp)
                    files.append(writers.pop(tp).close())
                    consumer.pause(tp)
                    moved = True
                else:
                    left += ends[tp] - pos
            progress.done = progress.total - left
            if moved:
                last_progress = loop.time()
            elif loop.time() - last_progress > stall_s:
                where = [f"{tp.topic}/{tp.partition} at {await consumer.position(tp)} of "
                         f"{ends[tp]}" for tp in sorted(pending)]
                raise ExportError(f"reading stalled for {stall_s:g}s: {', '.join(where)}")
        compressor.drain()
    finally:
        with contextlib.suppress(Exception):
            compressor.close()  # after a failure: let its jobs end before the files close
        for w in writers.values():
            w.abort()
        await stop_quietly(consumer)
    return ExportResult(files, skipped, time.monotonic() - started)


# ---------------------------------------------------------------------- the command


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise click.BadParameter(f"{out} is not empty (--force writes into it)",
                                 param_hint="--out")


@click.command(name="export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", required=True, metavar="HOST:PORT", envvar="TOCSIN_BROKER",
              callback=_broker_option, help="Kafka bootstrap.")
@click.option("--out", "out", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write (must be empty or new).")
@click.option("--topics", multiple=True, metavar="TOPIC[,TOPIC...]", callback=_topics_option,
              help="Topics to export (repeatable). Default: the worker's inputs: events, "
                   "signals, spans (TOCSIN_TOPICS__* apply); those missing are skipped.")
@click.option("--from", "from_", metavar="TIME", callback=_time_option,
              help="Records with timestamp >= TIME (RFC 3339 or epoch ms).")
@click.option("--to", "to", metavar="TIME", callback=_time_option,
              help="Records with timestamp < TIME (RFC 3339 or epoch ms).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@click.option("--created-at", metavar="TIME", callback=_time_option,
              help="The manifest's created_at (default: now); nothing hashed depends on it.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout.")
def export_command(broker: str, out: Path, topics: list[str] | None,
                   from_: tuple[str, int] | None, to: tuple[str, int] | None, force: bool,
                   created_at: tuple[str, int] | None, as_json: bool) -> None:
    """Write topics to files for replay and evidence: <DIR>/<topic>/<partition>.tlog.gz
    (every record's offset, timestamp, key, headers and value, bytes as they are) and
    DIR/manifest.json (each file's sha256 and the offsets it covers). ADR 0021.

    \b
    tocsin export --broker HOST:PORT --out DIR
    tocsin export --broker HOST:PORT --out DIR --topics tocsin.events \\
        --from 2026-11-02T09:00:00Z --to 2026-11-02T10:00:00Z

    Exit 0 written, 1 failed (a topic asked for is missing, the broker unreadable),
    2 bad arguments.
    """
    if from_ and to and from_[1] >= to[1]:
        raise click.UsageError("--from must be before --to")
    _check_out(out, force)
    explicit = topics is not None
    if topics is None:
        try:
            topics = default_topics()
        except Exception as exc:  # a bad TOCSIN_* variable is a usage problem
            raise click.UsageError(str(exc)) from exc
    if force:
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()  # a failed export must not leave an old manifest
    selection = {
        "topics": list(topics),
        "topics_given": explicit,
        "from": from_[0] if from_ else None,
        "from_ms": from_[1] if from_ else None,
        "to": to[0] if to else None,
        "to_ms": to[1] if to else None,
    }
    progress = Progress()
    try:
        from tocsin.streams.kafka.io import quiet_kafka_logs
        with quiet_kafka_logs():
            result = asyncio.run(_with_progress(
                export_topics(broker, out, topics, explicit=explicit,
                              from_ms=from_[1] if from_ else None,
                              to_ms=to[1] if to else None, progress=progress), progress))
    except ExportError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a broker problem is a message, not a trace
        why = str(exc) or type(exc).__name__
        left = (f"; {out} holds no manifest: not an export" if out.is_dir() else "")
        err.print(f"[red]error:[/] could not export from {escape(broker)}: "
                  f"{escape(why)}{escape(left)}")
        sys.exit(1)
    stamp = created_at[1] if created_at else int(time.time() * 1000)
    manifest = build_manifest(broker=broker, files=result.files, selection=selection,
                              skipped=result.skipped, created_at=_ms_text(stamp))
    data = write_manifest(out, manifest)
    for s in result.skipped:
        err.print(f"skipped {escape(s['topic'])}: {escape(s['reason'])}")
    if as_json:
        click.echo(json.dumps(manifest, sort_keys=True))
    err.print(escape(summary_line(manifest, out, progress.done, result.seconds,
                                  hashlib.sha256(data).hexdigest())))


def summary_line(manifest: dict[str, Any], out: Path, read: int, seconds: float,
                 manifest_sha256: str) -> str:
    files = manifest["files"]
    topics = len({f["topic"] for f in files})
    n, size = manifest["records"], manifest["bytes"]
    return (f"exported {n:,} record{'s' * (n != 1)} (of {read:,} offsets read) from "
            f"{len(files)} partition{'s' * (len(files) != 1)} of {topics} "
            f"topic{'s' * (topics != 1)} to {out} in {seconds:.1f}s "
            f"({read / max(seconds, 1e-3):,.0f}/s), {_size(size)}; manifest sha256 "
            f"{manifest_sha256}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"




async def _with_progress(work: Any, progress: Progress) -> ExportResult:
    """Run ``work``, showing ``progress`` on a terminal."""
    if not err.is_terminal:
        return await work  # type: ignore[no-any-return]
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             console=err, transient=True) as bar:
        task = bar.add_task("export", total=None)
        job = asyncio.ensure_future(work)
        while not job.done():
            await asyncio.wait([job], timeout=0.2)
            bar.update(task, total=progress.total or None, completed=progress.done)
        return job.result()  # type: ignore[no-any-return]


if __name__ == "__main__":  # pragma: no cover - `python -m tocsin.clients.export ...`
    export_command()
