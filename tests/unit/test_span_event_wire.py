"""The binary span event record on the events topic (ADR 0015), without a broker: what the
span intake publishes per translated event (processors/otlp/republish.py) and how the
detection stage routes a record (Detection.process with a fake producer). Span-derived
events published as records give the detector exactly what their JSON gave it: the same
lifecycle changes, deploys and state; a broken record is dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.otlp import decode_batch, wide_events
from tocsin.processors.otlp.pack import PACK_VERSION, decode_span_pack, encode_span_pack
from tocsin.processors.otlp.record import (
    VERSIONS,
    RecordError,
    decode_span_event,
    encode_span_event,
)
from tocsin.processors.otlp.republish import (
    BINARY_MAX_BYTES,
    PACK_MAX_BYTES,
    event_records,
    event_value,
)
from tocsin.schemas.codec import WideEventDecoder, decode_incident
from tocsin.schemas.signal_wire import decode_signal
from tocsin.streams.kafka.dead_letters import DeadLetterSender
from tocsin.streams.kafka.headers import MARK, SOURCES, SPAN_SOURCE, span_time
from tocsin.streams.stages.detect import Detection, PartitionRun
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

T0_NS = 1_793_610_000 * 1_000_000_000
SPANS = "otlp_spans"
Headers = list[tuple[str, bytes]]


# ---------------------------------------------------------------------- the intake side


def span_records(traces: int = 120, seed: int = 11) -> list[bytes]:
    """OTLP records of the SDK workload, one trace each: traces 12-19 and 60-71 fail at
    payment (an incident), payment's version changes half way (a deploy)."""
    failing = set(range(12, 20)) | set(range(60, 72))
    before = workload(traces // 2, failing, T0_NS, seed=seed)
    after = workload(traces - traces // 2, {i - traces // 2 for i in failing},
                     T0_NS + traces // 2 * 10**9, seed=seed + 1,
                     versions={"payment": "0.9.5"})
    out = []
    for spans in (before, after):
        by_trace: dict[int, list[Any]] = {}
        for s in spans:
            by_trace.setdefault(s.context.trace_id, []).append(s)
        out += [proto(t) for t in by_trace.values()]
    return out


def translated(binary: bool, records: list[bytes] | None = None
               ) -> list[tuple[bytes, bytes, Headers]]:
    """(key, value, headers) as the span intake publishes each entry span's event: span
    record n sits at offset n of partition n % 3; JSON (before) or event_value (now)."""
    out = []
    for n, payload in enumerate(records or span_records()):
        source, offset = f"{SPANS}:{n % 3}", n
        for index, event in enumerate(wide_events(decode_batch(payload).spans)):
            value = event_value(event, source, offset, index) if binary \
                else orjson.dumps(event)
            out.append((event["service"].encode(), value,
                        [(SPAN_SOURCE, f"{source}:{offset}:{index}".encode())]))
    return out


def test_real_span_events_go_out_as_records_that_read_as_their_json() -> None:
    decode_json = WideEventDecoder()
    for (_, value, headers), (_, json_value, _) in zip(translated(True), translated(False),
                                                       strict=True):
        assert value[0] in VERSIONS and len(value) < 160
        event, source, (offset, index) = decode_span_event(value)
        assert headers[0][1].decode() == f"{source}:{offset}:{index}"
        want = decode_json(json_value)
        assert {k: want.get(k) for k in event if k != "steps"} == \
            {k: v for k, v in event.items() if k != "steps"}
        assert event["steps"] == want["steps"] == []


BASE = {"event_time_ms": T0_NS // 10**6, "service": "s", "step": "GET /", "env": "prod",
        "status": "error", "error_code": "E", "service_version": "1", "trace_id": "ab" * 16,
        "downstream": None, "steps": [], "error_message": "m" * 2_000,
        "attributes": {"span.kind": "server"}}


@pytest.mark.parametrize("change", [
    {"service": ""},  # the record refuses what the JSON path refuses
    {"step": None},
    {"steps": [{"name": "a", "status": "ok"}]},  # valid, but no record carries steps
    {"step": "x" * (BINARY_MAX_BYTES + 1)},  # long: JSON, so the detector reads it whole
    {"error_code": "é" * 40_000},  # past the record's 64 KB cut
])
def test_what_the_record_cannot_carry_exactly_goes_out_as_json(change: dict[str, Any]
                                                               ) -> None:
    event = {**BASE, **change}
    assert event_value(event, "t:0", 1, 2) == orjson.dumps(event)


def test_a_record_up_to_the_limit_stays_binary() -> None:
    value = event_value(BASE, "t:0", 1, 2)
    assert value == encode_span_event(BASE, "t:0", 1, 2)  # error_message is not carried
    step = "x" * (BINARY_MAX_BYTES - len(value) + len(BASE["step"]))
    assert len(event_value({**BASE, "step": step}, "t:0", 1, 2)) == BINARY_MAX_BYTES


# ---------------------------------------------------------------------- the detector side


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, bytes | None, Headers]] = field(default_factory=list)

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None,
                   headers: Headers | None = None) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, list(headers or [])))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, Headers]]:
        return [s for s in self.sent if s[0] == topic]


def detect(records: list[tuple[bytes, bytes | None, Headers]], batch: int = 97
           ) -> tuple[Detection, PartitionRun, FakeProducer]:
    """Every record through Detection.process on events partition 0, in batches."""
    settings = Settings()
    stage = Detection(settings, "localhost:0", None, Metrics())  # type: ignore[arg-type]
    producer = FakeProducer()
    stage.producer = producer  # type: ignore[assignment]
    stage.dead_letters = DeadLetterSender(producer, settings.topics.dlq)  # type: ignore[arg-type]
    run = PartitionRun(0, 0, detector=PartitionDetector(settings.detector))
    # The span intake's last word on each source: caught up and idle (detection holds
    # translated events until every span source has passed them, ADR 0015).
    records = [*records, *((b"", b"", [(MARK, f"{SPANS}:{p}=idle".encode()),
                                      (SOURCES, f"{SPANS}:3".encode())]) for p in range(3))]
    consumed = [ConsumerRecord(settings.topics.events, 0, offset, 0, 0, key, value, None,
                               len(key or b""), len(value or b""), headers)
                for offset, (key, value, headers) in enumerate(records)]

    async def go() -> None:
        for i in range(0, len(consumed), batch):
            stage.process(run, consumed[i:i + batch])
        await asyncio.gather(*run.pending)

    asyncio.run(go())
    return stage, run, producer


def outputs(stage: Detection, run: PartitionRun, producer: FakeProducer) -> dict[str, Any]:
    s = stage.settings.topics
    return {
        "incidents": [(value, key, headers) for _, value, key, headers in
                      producer.to(s.incidents)],
        "signals": [(decode_signal(value or b""), key, headers) for _, value, key, headers
                    in producer.to(s.signals)],
        "dlq": producer.to(s.dlq),
        "events_in": stage.metrics.events_in,
        "deploys": stage.metrics.deploys_registered,
        "state": run.detector.snapshot(),
        "windows": run.detector.drain_windows(),
    }


def test_records_and_json_give_the_detector_the_same_everything() -> None:
    as_json = outputs(*detect(translated(False)))
    as_records = outputs(*detect(translated(True)))
    assert as_records == as_json
    assert as_json["events_in"] == 360 and as_json["deploys"] == 1
    assert {decode_incident(v or b"")["kind"] for v, _, _ in as_json["incidents"]} >= {
        "opened"}
    assert as_json["dlq"] == []


def test_a_mixed_stream_reads_the_same_and_replays_are_dropped() -> None:
    """Records and JSON interleaved (an intake upgraded mid-stream, or events the record
    cannot carry), then the same records again (an intake redoing a batch): each event
    counts once, by its span position."""
    records, json = translated(True), translated(False)
    mixed = [r if i % 3 else j for i, (r, j) in enumerate(zip(records, json, strict=True))]
    got = outputs(*detect(mixed + records[100:200]))
    want = outputs(*detect(json))
    assert got["state"].pop("counters")["duplicates_dropped"] == 100
    want["state"].pop("counters")
    assert got == want
    assert got["events_in"] == 360


def reasons(producer: FakeProducer, topic: str) -> list[str]:
    return [dict(h)["tocsin.dlq.reason"].decode() for _, _, _, h in producer.to(topic)]


def test_broken_records_are_dead_lettered_with_their_reason_and_the_stage_goes_on() -> None:
    good = translated(True, span_records(4))
    key, value, headers = good[0]
    other = [(SPAN_SOURCE, b"otlp_spans:7:99:0")]
    broken = [
        (key, value[:20], headers),  # truncated
        (key, bytes([4]) + value[1:], headers),  # a version this reader does not know
        (key, value + b"\x00", headers),  # trailing garbage
        (key, value, other),  # its position is not its header's
        (key, bytes([1]) + b"\xff" * 50, headers),
    ]
    stage, _, producer = detect(broken + good[1:])
    settings = stage.settings
    got = reasons(producer, settings.topics.dlq)
    assert len(got) == len(broken)
    assert all(r.startswith("span event record: ") for r in got), got
    assert "truncated" in got[0] and "unknown version 4" in got[1]
    assert "trailing garbage" in got[2]
    assert "differs from the span_source header's otlp_spans:7:99:0" in got[3]
    assert stage.metrics.events_in == len(good) - 1
    assert stage.metrics.dead_letters == len(broken)
    letters = producer.to(settings.topics.dlq)
    assert [v for _, v, _, _ in letters] == [v for _, v, _ in broken]  # original bytes


def test_oversize_is_checked_before_any_decoding_and_other_values_keep_their_path(
) -> None:
    """The max_record_bytes check applies to records too; a value that starts like a
    record without the span_source header, and a translated event in JSON, take the
    JSON/Avro path as before."""
    good = translated(True, span_records(2))
    key, value, headers = good[0]
    limit = Settings().max_record_bytes
    cases = [
        (key, value + b"x" * limit, headers),  # a record past the limit
        (key, value, []),  # no header: not read as a record
        (key, None, headers),  # a tombstone with the header
        (key, orjson.dumps({"event_time_ms": 1, "service": "", "step": "x"}), headers),
    ]
    stage, _, producer = detect(cases)
    got = reasons(producer, stage.settings.topics.dlq)
    assert got[0] == f"oversize: {len(value) + limit} bytes > {limit}"
    assert "neither Avro nor valid JSON" in got[1]
    assert got[2] == "empty record"
    assert got[3].startswith("service: ")
    assert stage.metrics.events_in == 0


# ------------------------------------------------- several span intakes, one order


def by_source(records: list[tuple[bytes, bytes, Headers]]
              ) -> dict[str, list[tuple[bytes, bytes, Headers]]]:
    """The translated events of each span source, as its intake sends them: in order,
    each with its merge time (the running maximum of its records' span ends)."""
    out: dict[str, list[tuple[bytes, bytes, Headers]]] = {}
    reached: dict[str, int] = {}
    for key, value, _ in records:
        event, source, (offset, index) = decode_span_event(value)
        at = reached[source] = max(reached.get(source, 0), event["event_time_ms"])
        out.setdefault(source, []).append(
            (key, value, [(SPAN_SOURCE, f"{source}:{offset}:{index}@{at}".encode())]))
    return out


def interleaved(sources: dict[str, list[tuple[bytes, bytes, Headers]]], seed: int
                ) -> list[tuple[bytes, bytes | None, Headers]]:
    """Each source's events in its order, chunks of them interleaved at random, a mark
    after each chunk (as after each release), then every source idle."""
    rng = random.Random(seed)
    queues = {s: list(events) for s, events in sources.items()}
    out: list[tuple[bytes, bytes | None, Headers]] = []
    of = [(SOURCES, f"{SPANS}:3".encode())]
    while any(queues.values()):
        source = rng.choice(sorted(s for s, q in queues.items() if q))
        n = rng.randint(1, 40)
        chunk, queues[source] = queues[source][:n], queues[source][n:]
        out += chunk
        at = max(span_time(h) or 0 for _, _, h in chunk)
        out.append((b"", b"", [(MARK, f"{source}={at}".encode()), *of]))
    return out


def test_span_events_of_several_intakes_give_one_outcome_whatever_the_interleaving(
) -> None:
    sources = by_source(translated(True))
    assert len(sources) == 3
    first = outputs(*detect(interleaved(sources, 1), batch=13))  # type: ignore[arg-type]
    assert first["events_in"] == 360 and first["incidents"]
    for seed, batch in ((2, 97), (3, 5), (4, 400)):
        again = outputs(*detect(interleaved(sources, seed), batch=batch))  # type: ignore[arg-type]
        assert again == first


def test_span_events_wait_for_every_source_before_they_count() -> None:
    sources = by_source(translated(True))
    settings = Settings()
    stage = Detection(settings, "localhost:0", None, Metrics())  # type: ignore[arg-type]
    stage.producer = FakeProducer()  # type: ignore[assignment]
    run = PartitionRun(0, 0, detector=PartitionDetector(settings.detector))
    records = sources[f"{SPANS}:0"][:50]
    consumed = [ConsumerRecord(stage.settings.topics.events, 0, offset, 0, 0, key, value,
                               None, 0, 0, headers)
                for offset, (key, value, headers) in enumerate(records, start=10)]
    stage.process(run, consumed)
    assert stage.metrics.events_in == 0 and len(run.merge) == 50  # sources unknown yet
    mark = ConsumerRecord(stage.settings.topics.events, 0, 100, 0, 0, b"", b"", None, 0, 0,
                          [(MARK, f"{SPANS}:1=idle".encode()),
                           (SOURCES, f"{SPANS}:2".encode())])
    stage.process(run, [mark])
    assert stage.metrics.events_in > 0  # both sources known, the other idle



# ---------------------------------------------------------------------- packs


def packed(records: list[bytes] | None = None, partitions: int = 3
           ) -> list[tuple[bytes, bytes, Headers]]:
    """As :func:`translated`, but as the intake sends them now: per span record and
    partition, packs of consecutive records (event_records), the header naming the first."""
    out = []
    for n, payload in enumerate(records or span_records()):
        source, offset = f"{SPANS}:{n % 3}", n
        events = wide_events(decode_batch(payload).spans)
        for _, key, value, indexes in event_records(
                events, source, offset, lambda key: len(key) % partitions):
            out.append((key, value,
                        [(SPAN_SOURCE, f"{source}:{offset}:{indexes[0]}".encode())]))
    return out


def unpacked(value: bytes) -> list[tuple[dict[str, Any], str, tuple[int, int]]]:
    return decode_span_pack(value) if value[0] == PACK_VERSION else [decode_span_event(value)]


def test_packed_events_give_the_detector_the_same_everything() -> None:
    records = span_records()
    # one span record with many entry spans, so that packs hold several events
    records.append(proto([s for r in range(5) for s in workload(
        8, {3}, T0_NS + (200 + r) * 10**9, seed=50 + r)]))
    sent = packed(records)
    assert any(v[0] == PACK_VERSION for _, v, _ in sent)
    assert outputs(*detect(sent)) == outputs(*detect(translated(False, records)))


def test_event_records_keep_each_partitions_order_and_send_json_alone() -> None:
    events = [{**BASE, "service": f"s{i % 4}", "event_time_ms": BASE["event_time_ms"] + i}
              for i in range(40)]
    events[7] = {**events[7], "step": "x" * (BINARY_MAX_BYTES + 1)}  # goes as JSON
    events[13] = {**events[13], "service": "lonely"}  # alone on its partition
    out = event_records(events, "t:0", 5, lambda key: 3 if key == b"lonely" else len(key) % 2
                        + int(key[-1:] in b"13"))
    seen: dict[int, list[int]] = {}
    for partition, key, value, indexes in out:
        if value[0] == ord("{"):
            assert [orjson.loads(value)] == [events[i] for i in indexes]
        else:
            items = unpacked(value)
            assert [src for _, src, _ in items] == ["t:0"] * len(items)
            assert indexes == [index for _, _, (offset, index) in items]
            assert all(o == 5 for _, _, (o, _) in items)
        assert key == events[indexes[0]]["service"].encode()
        seen.setdefault(partition, []).extend(indexes)
    assert sorted(i for got in seen.values() for i in got) == list(range(40))
    assert all(got == sorted(got) for got in seen.values())
    # the one event of its partition goes as the bare record, not a pack of one
    assert [value[0] for p, _, value, _ in out if p == 3] == [3]
    assert [indexes for p, _, _, indexes in out if p == 3] == [[13]]
    # JSON splits its partition's pack: the records before and after go in two packs
    json_partition = next(p for p, _, v, _ in out if v[0] == ord("{"))
    assert len([1 for p, _, _, _ in out if p == json_partition]) >= 3


def test_a_pack_is_cut_before_its_size_limit() -> None:
    big = {**BASE, "step": "y" * (BINARY_MAX_BYTES - 200)}
    events = [big] * (3 * PACK_MAX_BYTES // BINARY_MAX_BYTES)
    out = event_records(events, "t:0", 1, lambda key: 0)
    assert len(out) >= 3 and all(len(v) <= PACK_MAX_BYTES for _, _, v, _ in out)
    assert sum(len(unpacked(v)) for _, _, v, _ in out) == len(events)


def test_broken_packs_are_dead_lettered_with_their_reason() -> None:
    one = encode_span_event(BASE, f"{SPANS}:0", 3, 0)
    two = encode_span_event(BASE, f"{SPANS}:0", 3, 1)
    elsewhere = encode_span_event(BASE, f"{SPANS}:1", 3, 1)
    good = encode_span_pack([one, two])
    header = [(SPAN_SOURCE, f"{SPANS}:0:3:0".encode())]
    broken = [
        (b"s", good[:-3], header),  # truncated
        (b"s", good + b"\x01", header),  # bytes after the records
        (b"s", bytes([PACK_VERSION, 0, 0]), header),  # an empty pack
        (b"s", encode_span_pack([one, elsewhere]), header),  # a record of another source
        (b"s", encode_span_pack([two, one]), [(SPAN_SOURCE, f"{SPANS}:0:3:1".encode())]),
        (b"s", good, [(SPAN_SOURCE, f"{SPANS}:0:3:1".encode())]),  # header's index differs
    ]
    stage, _, producer = detect([*broken, (b"s", good, header)])
    got = reasons(producer, stage.settings.topics.dlq)
    assert len(got) == len(broken) and all(r.startswith("span event record: ") for r in got)
    assert "truncated" in got[0] and "bytes after" in got[1] and "empty pack" in got[2]
    assert all("differs from the span_source header" in r for r in got[3:])
    assert stage.metrics.events_in == 2


@pytest.mark.parametrize("cut", range(1, 12))
def test_any_cut_of_a_pack_raises_record_error(cut: int) -> None:
    value = encode_span_pack([encode_span_event(BASE, "t:0", 1, i) for i in range(3)])
    with pytest.raises(RecordError):
        decode_span_pack(value[:-cut])
    with pytest.raises(RecordError):
        decode_span_pack(value[:cut])
