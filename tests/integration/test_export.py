"""`tocsin export` against the embedded broker (ADR 0021): the files hold every record as a
plain consumer reads it (topic, partition, offset, timestamp, key, headers, value: binary
values exact), the manifest's hashes and offsets are the files', --from/--to select by
timestamp, a live topic gives a finite export, and refusals are clear."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.integration.harness import HOUR_MS, T0_MS, Names, produce_events, steady
from tocsin.clients.export import _existing_topics
from tocsin.clients.tlog import read_log, verify_export
from tocsin.streams.kafka.io import TopicSpec, ensure_topics, read_to_end

Key = tuple[str, int, int]  # topic, partition, offset
Seen = tuple[int, bytes | None, tuple[tuple[str, bytes | None], ...], bytes | None]


def export(broker: str, out: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin.clients.export",
                           "--broker", broker, "--out", str(out), *args],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def consumer_view(broker: str, topic: str) -> tuple[dict[Key, Seen], dict[int, int]]:
    """What a plain aiokafka consumer reads, and each partition's end."""
    ends: dict[int, int] = {}
    records = asyncio.run(read_to_end(broker, topic, ends=ends))
    return ({(r.topic, r.partition, r.offset): (r.timestamp, r.key,
                                                tuple((k, v) for k, v in r.headers), r.value)
             for r in records}, ends)


def export_view(out: Path, manifest: dict[str, Any], topic: str) -> dict[Key, Seen]:
    seen: dict[Key, Seen] = {}
    for entry in manifest["files"]:
        if entry["topic"] != topic:
            continue
        t, p, records = read_log(out / entry["path"])
        assert (t, p) == (entry["topic"], entry["partition"])
        assert [r.offset for r in records] == sorted(r.offset for r in records)
        for r in records:
            seen[(t, p, r.offset)] = (r.timestamp_ms, r.key, r.headers, r.value)
    return seen


async def _send(broker: str, topic: str, partitions: int,
                records: list[tuple[int, bytes | None, bytes | None,
                                    list[tuple[str, bytes | None]], int | None]]) -> None:
    """(partition, key, value, headers, timestamp ms) each, in this order."""
    await ensure_topics(broker, [TopicSpec(topic, partitions, 30 * 24 * HOUR_MS)])
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition,
                                       headers=headers, timestamp_ms=ts)
                   for partition, key, value, headers, ts in records]
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def test_every_record_is_kept_as_a_plain_consumer_reads_it(broker: str, tmp_path: Path
                                                           ) -> None:
    names = Names.fresh("export")
    signals = names.topic("signals")
    rng = random.Random(21)
    garbage = [bytes(range(256)), b"\x00", b"\xff" * 3, b"\x1f\x8b\x08\x00",
               *(rng.randbytes(rng.randrange(1, 4000)) for _ in range(40))]
    events: list[dict[str, Any] | bytes] = [*steady(T0_MS, 1000), *garbage]  # 3,044 records
    produce_events(broker, names.events, events)
    odd = [
        (0, "ключ-🔑".encode(), b"\x00\x01binary",
         [("tocsin.mark", b"x=1"), ("nul", None), ("ü-名前", b"\x00\xff"), ("dup", b"")],
         None),
        (0, b"gone", None, [], None),  # a tombstone: the value is null, not empty
        (1, b"", b"", [("", b"")], None),
        (1, None, bytes(range(255, -1, -1)), [], None),
    ]
    asyncio.run(_send(broker, signals, 2, odd))  # type: ignore[arg-type]

    out = tmp_path / "export"
    run = export(broker, out, "--topics", f"{names.events},{signals}", "--json")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"exported {len(events) + len(odd):,} records" in run.stderr
    manifest = verify_export(out, read_records=True)
    assert json.loads(run.stdout) == manifest
    assert manifest["selection"]["topics"] == [names.events, signals]
    assert manifest["selection"]["topics_given"] is True
    assert manifest["skipped"] == []
    assert manifest["records"] == len(events) + len(odd)
    assert {(f["topic"], f["partition"]) for f in manifest["files"]} == {
        *((names.events, p) for p in range(6)), (signals, 0), (signals, 1)}

    for topic in (names.events, signals):
        live, ends = consumer_view(broker, topic)
        mine = export_view(out, manifest, topic)
        assert mine == live  # every record, every field, bytes as they are
        for entry in (f for f in manifest["files"] if f["topic"] == topic):
            offsets = sorted(o for (_, p, o) in live if p == entry["partition"])
            assert entry["start_offset"] == 0
            assert entry["end_offset"] == ends[entry["partition"]]
            assert entry["count"] == len(offsets)
            assert entry["first_offset"] == (offsets[0] if offsets else None)
            assert entry["last_offset"] == (offsets[-1] if offsets else None)
            data = (out / entry["path"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry["bytes"] == len(data)
    values = {v for (_, _, _, v) in export_view(out, manifest, names.events).values()}
    assert set(garbage) <= values
    kept = export_view(out, manifest, signals)
    assert kept[(signals, 0, 0)][2] == (
        ("tocsin.mark", b"x=1"), ("nul", None), ("ü-名前", b"\x00\xff"), ("dup", b""))
    assert kept[(signals, 0, 1)][3] is None
    assert kept[(signals, 1, 0)][1:] == (b"", (("", b""),), b"")


def test_from_and_to_select_by_timestamp_and_keep_the_offsets_read(broker: str,
                                                                    tmp_path: Path) -> None:
    topic = Names.fresh("exwin").events
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]],
                        int | None]] = [(i % 3, b"k", f"r{i}".encode(), [], T0_MS + i * 1000)
                                        for i in range(100)]
    records.append((0, b"k", b"late", [], T0_MS + 30_500))  # out of timestamp order
    asyncio.run(_send(broker, topic, 3, records))
    out = tmp_path / "window"
    since, until = rfc3339(T0_MS + 20_000), str(T0_MS + 60_000)
    run = export(broker, out, "--topics", topic, "--from", since, "--to", until)
    assert run.returncode == 0, run.stderr
    manifest = verify_export(out, read_records=True)
    assert manifest["selection"] | {"topics": None} == {
        "topics": None, "topics_given": True, "from": since, "from_ms": T0_MS + 20_000,
        "to": until, "to_ms": T0_MS + 60_000}
    kept = export_view(out, manifest, topic)
    assert sorted(v or b"" for (_, _, _, v) in kept.values()) == sorted(
        [f"r{i}".encode() for i in range(20, 60)] + [b"late"])
    assert all(T0_MS + 20_000 <= ts < T0_MS + 60_000 for (ts, _, _, _) in kept.values())
    _, ends = consumer_view(broker, topic)
    for entry in manifest["files"]:  # every offset was read, whatever was kept
        assert (entry["start_offset"], entry["end_offset"]) == (0, ends[entry["partition"]])
        assert entry["min_timestamp_ms"] >= T0_MS + 20_000
        assert entry["max_timestamp_ms"] < T0_MS + 60_000
    p0 = next(e for e in manifest["files"] if e["partition"] == 0)
    assert (p0["first_offset"], p0["last_offset"]) == (7, 34)  # r21 .. late
    assert p0["last_timestamp_ms"] == T0_MS + 30_500 < p0["max_timestamp_ms"]


def test_refusals_a_full_out_and_a_missing_topic(broker: str, tmp_path: Path) -> None:
    topic = Names.fresh("exref").events
    produce_events(broker, topic, steady(T0_MS, 10))
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    run = export(broker, full, "--topics", topic)
    assert run.returncode == 2, run.stderr
    assert "Usage:" in run.stderr and "not empty" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]

    run = export(broker, full, "--topics", topic, "--force")
    assert run.returncode == 0, run.stderr
    assert verify_export(full)["records"] == 30
    assert (full / "notes.txt").read_text() == "mine"

    missing = Names.fresh("exnone").events
    out = tmp_path / "none"
    run = export(broker, out, "--topics", f"{topic},{missing}")
    assert run.returncode == 1, run.stderr
    assert f"no such topic on {broker}: {missing}" in run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists()
    # Asked about through a metadata request for every topic: none was created.
    assert missing not in asyncio.run(_existing_topics(broker, 10.0))


def test_default_topics_missing_are_skipped_and_said(broker: str, tmp_path: Path) -> None:
    names = Names.fresh("exdef")
    signals, spans = names.topic("signals"), names.topic("spans")
    produce_events(broker, names.events, steady(T0_MS, 5))
    out = tmp_path / "defaults"
    run = export(broker, out, env=names.env())  # events, signals, spans of this test
    assert run.returncode == 0, run.stderr
    manifest = verify_export(out, read_records=True)
    assert manifest["selection"]["topics"] == [names.events, signals, spans]
    assert manifest["selection"]["topics_given"] is False
    assert [s["topic"] for s in manifest["skipped"]] == [signals, spans]
    assert {f["topic"] for f in manifest["files"]} == {names.events}
    assert manifest["records"] == 15
    assert f"skipped {spans}" in run.stderr


def test_a_live_topic_gives_a_finite_export_up_to_the_ends_seen_at_start(
        broker: str, tmp_path: Path) -> None:
    topic = Names.fresh("exlive").events
    produce_events(broker, topic, steady(T0_MS, 300))
    stop = threading.Event()
    sent = [0]

    def keep_producing() -> None:
        async def go() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False,
                                        linger_ms=5)
            await producer.start()
            try:
                while not stop.is_set():
                    for i in range(50):
                        await producer.send(topic, b'{"live":%d}' % i, key=b"live-%d" % i)
                    await producer.flush()
                    sent[0] += 50
                    await asyncio.sleep(0.02)
            finally:
                await producer.stop()
        asyncio.run(go())

    writer = threading.Thread(target=keep_producing, daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while sent[0] < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        out = tmp_path / "live"
        run = export(broker, out, "--topics", topic)
        assert run.returncode == 0, run.stderr
    finally:
        stop.set()
        writer.join(30)
    manifest = verify_export(out, read_records=True)
    live, ends = consumer_view(broker, topic)
    mine = export_view(out, manifest, topic)
    for entry in manifest["files"]:  # everything below the end seen at start, nothing after
        assert entry["count"] == entry["end_offset"] - entry["start_offset"]
        assert entry["end_offset"] <= ends[entry["partition"]]
    assert mine == {k: v for k, v in live.items()
                    if k[2] < next(f["end_offset"] for f in manifest["files"]
                                   if f["partition"] == k[1])}
    assert sum(ends.values()) > manifest["records"]  # the topic went on past the export


def test_export_rate(broker: str, tmp_path: Path) -> None:
    """Measured, not asserted: ~100,000 small events (printed with -s)."""
    topic = Names.fresh("exrate").events
    n = produce_events(broker, topic, steady(T0_MS, 33_334))
    out = tmp_path / "rate"
    started = time.monotonic()
    run = export(broker, out, "--topics", topic)
    wall = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    manifest = verify_export(out)
    assert manifest["records"] == n
    print(f"\nexport rate: {n:,} events in {wall:.2f}s wall, process start included "
          f"({n / wall:,.0f} events/s); {manifest['bytes'] / 1e6:.1f} MB; "
          f"tool: {run.stderr.strip().splitlines()[-1]}")
