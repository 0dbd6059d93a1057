"""The recorded-log format of `tocsin export` (ADR 0021): records round-trip exactly, a
truncated or corrupt file is a RecordedLogError naming the file and where, the manifest's
sha256 is the file's."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.clients.export import export_command, parse_time
from tocsin.clients.tlog import (
    MAX_FIELD_BYTES,
    Compressor,
    FileSummary,
    LogReader,
    LogRecord,
    LogWriter,
    RecordedLogError,
    build_manifest,
    decode_log,
    encode_file_header,
    encode_log,
    encode_record,
    encode_trailer,
    file_path,
    read_log,
    verify_export,
    write_manifest,
)

ODD = [
    LogRecord(0, 1_793_610_000_000, None, None),
    LogRecord(1, 1_793_610_000_001, b"", b""),
    LogRecord(2, -1, b"raw", bytes(range(256))),
    LogRecord(5, 1_793_610_000_000, "ключ-🔑".encode(), bytes(range(255, -1, -1)) * 3,
              (("h1", b"v"), ("nul", None), ("ü-名前", b"\x00\xff"), ("h1", b""))),
    LogRecord(6, 0, b"k" * 70_000, b"\x00" * 3, (("", None),)),
    LogRecord(2**62, 2**63 - 1, None, b"last"),
]


def write(path: Path, records: list[LogRecord], topic: str = "tocsin.events",
          partition: int = 3, **kw: object) -> FileSummary:
    path.parent.mkdir(parents=True, exist_ok=True)
    with LogWriter(path, topic, partition, **kw) as w:  # type: ignore[arg-type]
        for r in records:
            w.write_record(r)
    return w.summary


def test_round_trip_keeps_nulls_binary_values_headers_and_unicode(tmp_path: Path) -> None:
    path = tmp_path / "x.tlog.gz"
    summary = write(path, ODD)
    topic, partition, records = read_log(path)
    assert (topic, partition) == ("tocsin.events", 3)
    assert records == ODD
    assert records[2].value == bytes(range(256))
    assert records[0].key is None and records[0].value is None
    assert records[1].key == b"" and records[1].value == b""  # empty is not null
    assert summary.count == len(ODD)
    assert (summary.first_offset, summary.last_offset) == (0, 2**62)
    assert (summary.first_timestamp_ms, summary.last_timestamp_ms) == (1_793_610_000_000,
                                                                       2**63 - 1)
    assert (summary.min_timestamp_ms, summary.max_timestamp_ms) == (-1, 2**63 - 1)
    assert decode_log(gzip.decompress(path.read_bytes())) == ("tocsin.events", 3, ODD)
    assert decode_log(encode_log("tocsin.events", 3, ODD)) == ("tocsin.events", 3, ODD)


def test_an_empty_partition_is_a_file_with_no_records(tmp_path: Path) -> None:
    path = tmp_path / "0.tlog.gz"
    summary = write(path, [], topic="otlp_spans", partition=0)
    assert read_log(path) == ("otlp_spans", 0, [])
    assert summary.count == 0 and summary.first_offset is None
    assert summary.bytes == path.stat().st_size


def test_records_across_many_chunks_and_the_compressor_thread(tmp_path: Path) -> None:
    records = [LogRecord(i * 2, 1_700_000_000_000 + i, f"svc-{i % 7}".encode(),
                         os.urandom(i % 300), (("n", str(i).encode()),) if i % 5 == 0 else ())
               for i in range(20_000)]
    plain = write(tmp_path / "a.tlog.gz", records)
    compressor = Compressor(backlog=2)
    try:
        threaded = write(tmp_path / "b.tlog.gz", records, compressor=compressor)
    finally:
        compressor.close()
    assert read_log(tmp_path / "b.tlog.gz")[2] == records
    # No name and no time in the gzip header: the same records give the same bytes.
    assert (tmp_path / "a.tlog.gz").read_bytes() == (tmp_path / "b.tlog.gz").read_bytes()
    assert plain.sha256 == threaded.sha256


record_strategy = st.builds(
    lambda gap, ts, key, value, headers: (gap, ts, key, value, tuple(headers)),
    st.integers(1, 2**20), st.integers(-(2**63), 2**63 - 1),
    st.none() | st.binary(max_size=40), st.none() | st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=20)), max_size=4))


@settings(max_examples=200, deadline=None)
@given(st.lists(record_strategy, max_size=30))
def test_any_records_round_trip(raw: list[tuple[int, int, bytes | None, bytes | None,
                                                tuple[tuple[str, bytes | None], ...]]]
                                ) -> None:
    offset, records = -1, []
    for gap, ts, key, value, headers in raw:
        offset += gap
        records.append(LogRecord(offset, ts, key, value, headers))
    assert decode_log(encode_log("t", 0, records)) == ("t", 0, records)


# ---------------------------------------------------------------------- damage


def small_file(tmp_path: Path) -> bytes:
    path = tmp_path / "small.tlog.gz"
    write(path, ODD[:4])
    return path.read_bytes()


def test_truncation_at_every_byte_of_a_file_is_an_error_naming_it(tmp_path: Path) -> None:
    data = small_file(tmp_path)
    cut = tmp_path / "cut.tlog.gz"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(RecordedLogError) as caught:
            read_log(cut)
        assert str(cut) in str(caught.value), n
    cut.write_bytes(data)
    assert read_log(cut)[2] == ODD[:4]


def test_truncation_at_every_byte_of_the_stream_names_the_place() -> None:
    stream = encode_log("tocsin.events", 1, ODD[:4])
    offsets = []
    for n in range(len(stream)):
        with pytest.raises(RecordedLogError) as caught:
            decode_log(stream[:n], source="s.tlog")
        e = caught.value
        assert e.source == "s.tlog" and str(e).startswith("s.tlog: ")
        assert e.position is not None and e.position <= n
        offsets.append(e.last_offset)
    # Past the first record, the error says which offset was the last read whole.
    first = len(encode_file_header("tocsin.events", 1)) + len(encode_record(0, 0, None, None))
    assert offsets[first + 1] == 0
    with pytest.raises(RecordedLogError, match="after record offset 0"):
        decode_log(stream[:first + 1])
    assert offsets[-1] == ODD[3].offset  # cut in the trailer: every record was whole
    assert sorted(set(offsets), key=lambda o: -1 if o is None else o) == [None, 0, 1, 2, 5]


def test_corrupt_files_are_errors(tmp_path: Path) -> None:
    head = encode_file_header("t", 0)
    rec0, rec1 = encode_record(0, 0, b"k", b"v"), encode_record(1, 0, b"k", b"v")
    cases = {
        "not a recorded log": b"PK\x03\x04" + head[4:] + encode_trailer(0),
        "format version": b"TLOG\x00\x09" + head[6:] + encode_trailer(0),
        "does not follow": head + rec1 + rec0 + encode_trailer(2),
        "key length -5": head + rec0[:16] + b"\xff\xff\xff\xfb" + rec0[20:] + encode_trailer(1),
        "trailer counts 3": head + rec0 + encode_trailer(3),
        "bytes after the trailer": head + rec0 + encode_trailer(1) + b"\x00",
        "empty": b"",
    }
    for problem, stream in cases.items():
        with pytest.raises(RecordedLogError, match=problem):
            decode_log(stream)
        path = tmp_path / "c.tlog.gz"
        path.write_bytes(gzip.compress(stream))
        with pytest.raises(RecordedLogError, match=problem):
            read_log(path)
    # Damage inside the compressed bytes: gzip's CRC (or deflate) says so.
    data = bytearray(small_file(tmp_path))
    data[len(data) // 2] ^= 0x40
    path = tmp_path / "flipped.tlog.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(RecordedLogError):
        read_log(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(RecordedLogError, match="cannot decompress"):
        LogReader(path)


def test_the_writer_takes_offsets_in_increasing_order_only(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "w.tlog.gz", "t", 0) as w:
        w.write(3, 0, None, b"a")
        with pytest.raises(ValueError, match="after 3"):
            w.write(3, 0, None, b"b")
    with LogWriter(tmp_path / "v.tlog.gz", "t", 0) as w, pytest.raises(ValueError):
        w.write(-1, 0, None, b"a")


# ---------------------------------------------------------------------- manifest


def test_the_manifest_sha256_is_the_file_and_verify_checks_it(tmp_path: Path) -> None:
    summaries = []
    for topic, partition, records in (("tocsin.events", 0, ODD), ("tocsin.events", 1, []),
                                      ("otlp_spans", 0, ODD[:2])):
        path = tmp_path / file_path(topic, partition)
        summaries.append(write(path, records, topic=topic, partition=partition,
                               relative_to=tmp_path))
    manifest = build_manifest(broker="127.0.0.1:9092", files=summaries,
                              selection={"topics": ["tocsin.events", "otlp_spans"]},
                              created_at="2026-11-02T09:00:00.000Z")
    write_manifest(tmp_path, manifest)
    on_disk = json.loads((tmp_path / "manifest.json").read_bytes())
    assert on_disk == manifest
    assert [f["path"] for f in on_disk["files"]] == [
        "otlp_spans/0.tlog.gz", "tocsin.events/0.tlog.gz", "tocsin.events/1.tlog.gz"]
    for entry in on_disk["files"]:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert on_disk["records"] == len(ODD) + 2
    assert on_disk["format"] == "tocsin.tlog" and on_disk["format_version"] == 1
    assert verify_export(tmp_path, read_records=True) == manifest

    # One changed byte anywhere in a file, or a missing file, and verification says so.
    victim = tmp_path / "tocsin.events/0.tlog.gz"
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(RecordedLogError, match="sha256"):
        verify_export(tmp_path)
    victim.write_bytes(good + b"\x00")
    with pytest.raises(RecordedLogError, match="bytes, the manifest says"):
        verify_export(tmp_path)
    victim.unlink()
    with pytest.raises(RecordedLogError, match="missing"):
        verify_export(tmp_path)


def test_the_same_records_give_the_same_hash(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "0.tlog.gz", ODD)
    b = write(tmp_path / "b" / "0.tlog.gz", ODD)
    assert a.sha256 == b.sha256
    c = write(tmp_path / "c" / "0.tlog.gz", [*ODD[:-1], LogRecord(2**62, 2**63 - 1, None,
                                                                   b"lasT")])
    assert c.sha256 != a.sha256


# ---------------------------------------------------------------------- arguments


def test_times_are_rfc3339_or_epoch_ms() -> None:
    assert parse_time("1793610000000") == 1_793_610_000_000
    assert parse_time("2026-11-02T09:00:00Z") == 1_793_610_000_000
    assert parse_time("2026-11-02t10:00:00+01:00") == 1_793_610_000_000
    assert parse_time("2026-11-02T09:00:00.25Z") == 1_793_610_000_250
    # Between two milliseconds: rounds up, so `ts >= from` and `ts < to` stay exact.
    assert parse_time("2026-11-02T09:00:00.0001Z") == 1_793_610_000_001
    for bad in ("yesterday", "2026-11-02T09:00:00", "2026-11-02", "", "1e12"):
        with pytest.raises(ValueError):
            parse_time(bad)


@pytest.mark.parametrize("args", [
    [],
    ["--out", "x"],
    ["--broker", "127.0.0.1:1"],
    ["--broker", "nohost", "--out", "x"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--topics", "a/b"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--topics", ".."],
    ["--broker", "127.0.0.1:1", "--out", "x", "--topics", ","],
    ["--broker", "127.0.0.1:1", "--out", "x", "--from", "yesterday"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--to", "2026-11-02T09:00:00"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--from", "2000", "--to", "1000"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--created-at", "now"],
    ["--broker", "127.0.0.1:1", "--out", "full"],
    ["--broker", "127.0.0.1:1", "--out", "file"],
    ["--broker", "127.0.0.1:1", "--out", "x", "--nonsense"],
])
def test_bad_arguments_give_usage_and_exit_2(args: list[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    result = CliRunner().invoke(export_command, args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()


def test_an_unreachable_broker_is_exit_1_with_a_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(export_command, ["--broker", "127.0.0.1:1", "--out",
                                                 str(tmp_path / "out"), "--topics", "t"])
    assert result.exit_code == 1, result.output
    assert "could not export from 127.0.0.1:1" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("field", ["key", "value"])
def test_a_field_longer_than_any_record_is_refused_not_buffered(field: str) -> None:
    """A crafted length (1 GiB) is damage: the reader says so at once instead of reading a
    decompressed bomb into memory to complete the record."""
    huge = MAX_FIELD_BYTES + 1
    record = struct.pack(">qqi", 0, 1, huge if field == "key" else 1) + \
        (b"" if field == "key" else b"k") + struct.pack(">ii", 0, huge)
    stream = encode_file_header("t", 0) + record + b"\x00" * 64
    with pytest.raises(RecordedLogError, match=f"{field} length {huge} .*over"):
        decode_log(stream)
