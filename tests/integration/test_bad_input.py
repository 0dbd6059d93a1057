"""Invariant 3: bad input goes to the dead-letter topic with a reason; the stream goes on."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    event,
    produce_events,
    read_topic,
    spike_log,
)

BAD = {
    b"{not json": "neither Avro nor valid JSON",
    orjson.dumps({"event_time_ms": "yesterday", "service": "a", "step": "b"}): "event_time_ms",
    orjson.dumps({"event_time_ms": T0_MS, "step": "b"}): "service",
    orjson.dumps({"event_time_ms": T0_MS, "service": "a", "step": "b", "status": "meh"}):
        "status",
    orjson.dumps([1, 2, 3]): "a wide event is a JSON object",
    b"\xc3\x01" + b"\x00" * 8 + b"junk": "single-object fingerprint",
    orjson.dumps(event(T0_MS, "a", "b", attributes={"blob": "x" * 300_000})): "oversize",
}


def test_malformed_records_go_to_the_dlq_and_good_ones_still_flow(broker: str, tmp_path: Path
                                                                  ) -> None:
    names = Names.fresh("dlq")
    good = spike_log()
    mixed: list[dict[str, object] | bytes] = []
    bad = list(BAD)
    step = len(good) // (len(bad) + 1)
    for i, e in enumerate(good):
        if i % step == step - 1 and bad:
            mixed.append(bad.pop(0))
        mixed.append(e)
    assert not bad
    produce_events(broker, names.events, mixed)
    worker = WorkerProc(broker, names, tmp_path / "dlq.duckdb").start()
    try:
        worker.wait_projected(len(good))
        incidents = worker.query("SELECT family FROM incidents")
        letters = worker.query("SELECT reason, size_bytes, source_topic FROM dead_letters")
        metrics = worker.health()["metrics"]  # type: ignore[index]
    finally:
        assert worker.stop() == 0
    assert incidents == [{"family": "checkout:payment.charge:PMT_502"}]
    assert metrics["events_in"] == len(good)
    assert metrics["dead_letters"] == len(BAD)

    records = read_topic(broker, names.dlq)
    assert len(records) == len(BAD)
    by_value = {r.value: dict(r.headers) for r in records}
    assert set(by_value) == set(BAD), "the original bytes, untouched"
    for value, expected in BAD.items():
        headers = by_value[value]
        assert expected in headers["tocsin.dlq.reason"].decode()
        assert headers["tocsin.dlq.source_topic"].decode() == names.events
        assert int(headers["tocsin.dlq.source_offset"]) >= 0
        assert int(headers["tocsin.dlq.source_partition"]) in range(6)
    assert len(letters) == len(BAD)
    assert {r["source_topic"] for r in letters} == {names.events}
