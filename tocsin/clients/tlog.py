"""The recorded-log format of ``tocsin export`` and ``tocsin replay`` (ADR 0021).

One file per topic partition, ``<dir>/<topic>/<partition>.tlog.gz``: gzip of a small
header (magic, format version, topic, partition) and the partition's records in offset
order, each length-prefixed binary (offset, timestamp, key, headers, value: bytes kept
exactly), then a trailer with the record count. ``manifest.json`` names every file with
its sha256, its size, the offsets read and the offsets and timestamps kept, and the
selection that was asked for.

Plain functions and classes, no broker: :class:`LogWriter` and :func:`write_export`
write, :class:`LogReader`, :func:`read_log`, :func:`decode_log` read, and
:func:`verify_export` checks a directory against its manifest; a damaged file is a
:class:`RecordedLogError` naming the file and where.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple

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
