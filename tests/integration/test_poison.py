"""No record stops a stage: huge records, garbage bytes and garbage headers on every topic a
worker consumes are dead-lettered (bounded, with size and sha256) and the stream goes on,
across a restart too."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from tests.integration.harness import (
    HOUR_MS,
    Names,
    WorkerProc,
    read_topic,
    spike_log,
)
from tocsin.streams.kafka.io import TopicSpec, ensure_topics

MB = 1024 * 1024
KEPT = 512 * 1024  # Settings.dlq_max_value_bytes default


async def _publish(bootstrap: str, topic: str,
                   records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
                   ) -> None:
    await ensure_topics(bootstrap, [TopicSpec(topic, 6, 30 * 24 * HOUR_MS)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, max_request_size=40 * MB)
    await producer.start()
    try:
        for key, value, headers in records:
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()


def publish(bootstrap: str, topic: str,
            records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> None:
    asyncio.run(_publish(bootstrap, topic, records))


def test_poison_records_on_every_topic_are_dead_lettered_and_the_stream_goes_on(
        broker: str, tmp_path: Path) -> None:
    names = Names.fresh("poison")
    env = names.side_topics()
    topics = {k.removeprefix("TOCSIN_TOPICS__").lower(): v for k, v in env.items()}
    two_mb, sixteen_mb = os.urandom(2 * MB), b"{" + os.urandom(16 * MB)
    garbage_headers = [("tocsin.span_source", b"\xff\xfe not a position"),
                       ("bin", b"\x00\xff" * 10), ("huge", b"h" * 100_000)]
    poison = {
        names.events: [(b"k", two_mb, []), (b"k", sixteen_mb, []), (b"t", None, []),
                       (b"k" * 5000, b"[1]", garbage_headers)],
        topics["spans"]: [(None, two_mb, []), (None, sixteen_mb, [])],
        topics["signals"]: [(b"s", two_mb, []), (b"s", b"\x00garbage", garbage_headers)],
        names.incidents: [(b"i", b"not an incident", [])],
        # Topics only Tocsin's own stages write: trace assembly and triage read them.
        names.topic("spans_by_trace"): [(b"t", two_mb, []), (b"t", b"{\"spans\": [[1, 2]]}", []),
                                        (b"t", b"", [("tocsin.mark", b"\xff no mark")])],
        names.topic("summaries"): [(b"checkout", two_mb, []), (b"checkout", b"\x00", []),
                                   (b"checkout", b'{"v": 99}', garbage_headers)],
        names.windows: [(b"0", b"{", []),
                        (b"0", orjson.dumps({"bucket_ms": 30_000, "steps": [],
                                             "families": [["a", "b", "c", "d", "e", "x", 1]]}),
                         [])],
    }
    for topic, records in poison.items():
        publish(broker, topic, records)
    # Someone else's record on the dead-letter topic itself: kept as a row, never a crash.
    publish(broker, names.dlq, [(None, b"foreign", [("tocsin.dlq.source_offset", b"x")])])
    good = spike_log()
    publish(broker, names.events, [(e["service"].encode(), orjson.dumps(e), [])
                                   for e in good])

    expected = sum(len(r) for r in poison.values())
    worker = WorkerProc(broker, names, tmp_path / "poison.duckdb", extra_env=env).start()
    try:
        worker.wait_projected(len(good))
        worker._wait(lambda h: h["metrics"]["dead_letters"] >= expected, 60,
                     f"{expected} dead letters")
        incidents = worker.query("SELECT family FROM incidents")
        first = worker.health()
        assert worker.stop() == 0
        # A restart reads on from its checkpoints: it neither stops at the poison again
        # nor dead-letters it twice.
        worker = WorkerProc(broker, names, tmp_path / "poison.duckdb", extra_env=env).start()
        worker._wait(lambda h: h["detecting"] and h["projection_caught_up"], 60, "ready")
        letters = worker.query(
            "SELECT source_topic, size_bytes, kept_bytes, sha256, truncated "
            "FROM dead_letters ORDER BY source_topic, source_offset")
        health = worker.health()
    finally:
        worker.stop()
    assert incidents == [{"family": "checkout:payment.charge:PMT_502"}]
    assert first is not None and first["metrics"]["events_in"] == len(good)
    assert health is not None and health["metrics"]["dead_letters"] == 0

    records = read_topic(broker, names.dlq)
    ours = [r for r in records if r.value != b"foreign"]
    assert len(ours) == expected, "each poison record dead-lettered exactly once"
    by_sha = {dict(r.headers)["tocsin.dlq.sha256"].decode(): r for r in ours}
    for whole in (two_mb, sixteen_mb):
        rec = by_sha[hashlib.sha256(whole).hexdigest()]
        headers = dict(rec.headers)
        assert rec.value == whole[:KEPT]
        assert headers["tocsin.dlq.truncated"] == b"true"
        assert int(headers["tocsin.dlq.original_bytes"]) == len(whole)
    tagged = [r for r in ours if dict(r.headers).get("bin") == b"\x00\xff" * 10]
    assert len(tagged) == 3, "small headers travel with the letter"
    assert all("huge" not in dict(r.headers) for r in tagged), "oversize headers do not"
    assert all(dict(r.headers)["tocsin.dlq.headers_dropped"] == b"1" for r in tagged)
    sources = {r["source_topic"] for r in letters}
    assert sources == {names.events, topics["spans"], topics["signals"], names.incidents,
                       names.windows, names.dlq, names.topic("spans_by_trace"),
                       names.topic("summaries")}
    big = [r for r in letters if r["size_bytes"] >= 2 * MB]
    assert len(big) == 7 and all(r["truncated"] and r["kept_bytes"] == KEPT for r in big)
