"""Events in the producer's own shape (ADR 0013), end to end on the embedded broker: a worker
with TOCSIN_EVENT_MAPPING opens the incident of the right family from foreign JSON, sends a
record whose mapped required field is missing to the DLQ naming the field, reads Avro and
the span intake's translations as they are; a bad mapping file stops the worker at start
with one line; `tocsin produce --mapping` maps client side and names bad lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.integration.harness import (
    HOUR_MS,
    T0_MS,
    Names,
    WorkerProc,
    event,
    read_topic,
    spike_log,
)
from tocsin.processors.family import family_of
from tocsin.schemas.codec import WIDE_EVENT, WideEventDecoder, avro_schema, validate_wide_event
from tocsin.streams.kafka.headers import SPAN_SOURCE
from tocsin.streams.kafka.io import TopicSpec, ensure_topics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mappings"

MAPPING = """
# A service that writes one nested JSON document per request.
version = 1

[fields]
event_time_ms = "at"                  # auto: RFC 3339 here
service = "app.name"
step = "route"
env = { from = "app.env", default = "prod" }
status = { from = "outcome", map = { failed = "error" } }
user_id = 'fields."user.id"'

[anchor]                              # the first step whose status is not ok
name = "steps[].name"
error_code = "steps[].error.code"
downstream = { service = "steps[].error.dependency" }
"""


def foreign(e: dict[str, Any]) -> dict[str, Any]:
    """A harness wide event in the nested shape MAPPING reads: the failure sits in the
    second step's error object, the request's own route at the top."""
    failed = e.get("status") == "error"
    step: dict[str, Any] = {"name": e["step"], "status": "failed" if failed else "ok"}
    if failed:
        step["error"] = {"code": e["error_code"], "dependency": e["downstream"]["service"]}
    at = datetime.fromtimestamp(e["event_time_ms"] / 1000, UTC)
    return {"at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "app": {"name": e["service"], "env": e["env"]}, "route": e["step"],
            "outcome": "failed" if failed else "ok", "fields": {"user.id": "user-1"},
            "steps": [{"name": "auth", "status": "ok"}, step]}


Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def publish(bootstrap: str, topic: str, records: list[Record]) -> None:
    async def go() -> None:
        await ensure_topics(bootstrap, [TopicSpec(topic, 6, 30 * 24 * HOUR_MS)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=False)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key, headers=headers)
                       for key, value, headers in records]
            await producer.flush()
            for f in futures:
                await f
        finally:
            await producer.stop()
    asyncio.run(go())


def test_foreign_events_open_the_incident_and_an_unmapped_one_is_dead_lettered(
        broker: str, tmp_path: Path) -> None:
    names = Names.fresh("map")
    mapping = tmp_path / "nested.toml"
    mapping.write_text(MAPPING)
    good = spike_log()
    assert all(foreign(e)["at"].endswith("Z") for e in good[:3])
    no_service = {**foreign(event(T0_MS + 5, "checkout", "GET /")), "app": {"env": "prod"}}
    bad_time = {**foreign(event(T0_MS + 6, "checkout", "GET /")), "at": "yesterday"}
    bad_code = foreign(event(T0_MS + 7, "cart", "GET /", error="X",
                             downstream={"service": "db"}))
    bad_code["steps"][1]["error"]["code"] = {"not": "a string"}
    bad = {orjson.dumps(no_service): ("service", "app.name"),
           orjson.dumps(bad_time): ("event_time_ms", "(from at)"),
           orjson.dumps(bad_code): ("anchor.error_code", "steps[].error.code")}
    # Already wide_event.v1, so not mapped: an Avro record, and what the span intake
    # republishes (JSON with its source header). Sent last, so timed after the log's end
    # (earlier times would be late for the windows, ADR 0002).
    end_ms = max(e["event_time_ms"] for e in good)
    avro = avro_schema(WIDE_EVENT).encode_soe(
        validate_wide_event(event(end_ms + 1, "search", "GET /")))
    translated = orjson.dumps(event(end_ms + 2, "search", "GET /"))

    records: list[Record] = []
    bad_values = list(bad)
    step = len(good) // (len(bad_values) + 1)
    for i, e in enumerate(good):
        if i % step == step - 1 and bad_values:
            records.append((b"checkout", bad_values.pop(0), []))
        records.append((e["service"].encode(), orjson.dumps(foreign(e)), []))
    records.append((b"search", avro, []))
    records.append((b"search", translated, [(SPAN_SOURCE, b"otlp_spans:0:7:0")]))
    publish(broker, names.events, records)

    worker = WorkerProc(broker, names, tmp_path / "map.duckdb",
                        extra_env={"TOCSIN_EVENT_MAPPING": str(mapping)}).start()
    try:
        worker.wait_projected(len(good) + 2)
        incidents = worker.query("SELECT family FROM incidents")
        metrics = worker.health()["metrics"]  # type: ignore[index]
    finally:
        assert worker.stop() == 0
    assert incidents == [{"family": "checkout:payment.charge:PMT_502"}]
    assert metrics["events_in"] == len(good) + 2
    assert metrics["dead_letters"] == len(bad)

    letters = read_topic(broker, names.dlq)
    assert {r.value for r in letters} == set(bad), "the original bytes, untouched"
    for r in letters:
        headers = dict(r.headers)
        field, source = bad[r.value]
        assert headers["tocsin.dlq.field"].decode() == field
        reason = headers["tocsin.dlq.reason"].decode()
        assert reason.startswith(f"{field}: ") and source in reason, reason


def test_a_bad_mapping_file_stops_the_worker_at_start_with_one_line(broker: str,
                                                                     tmp_path: Path) -> None:
    mapping = tmp_path / "bad.toml"
    mapping.write_text('[fields]\nevent_time_ms = "t"\nservce = "s"\nstep = "p"\n')
    out = subprocess.run(
        [sys.executable, "-P", "-m", "tocsin", "run", "--broker", broker, "--http-port", "0",
         "--db", str(tmp_path / "never.duckdb")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TOCSIN_EVENT_MAPPING": str(mapping)})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [f"tocsin: TOCSIN_EVENT_MAPPING: {mapping}:3: fields.servce: not a "
                     "wide_event.v1 field here (event_time_ms, service, step, env, status, "
                     "error_code, error_message, duration_ms, service_version, trace_id, "
                     "span_id, parent_span_id, user_id, request_id, downstream)"], out.stderr
    assert not (tmp_path / "never.duckdb").exists()


def produce(broker: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin", "produce", *args,
                           "--broker", broker], capture_output=True, timeout=60,
                          env=dict(os.environ))


def test_produce_with_a_mapping_sends_wide_events_and_names_bad_lines(broker: str,
                                                                     tmp_path: Path) -> None:
    topic = Names.fresh("pmap").events
    lines = (EXAMPLES / "honeycomb.ndjson").read_bytes().splitlines()
    lines.insert(1, orjson.dumps({"timestamp": "2026-11-02T09:40:00Z", "service.name": "a"}))
    lines.append(orjson.dumps({"timestamp": 1793612400, "service.name": "a", "name": "b"}))
    path = tmp_path / "honeycomb.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = produce(broker, str(path), "--topic", topic,
                  "--mapping", str(EXAMPLES / "honeycomb.toml"))
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "line 2: rejected: step: required by wide_event.v1, mapped from name" in err
    assert "line 5: rejected: event_time_ms: not an RFC 3339 time with an offset: " \
           "1793612400 (from timestamp)" in err
    assert "sent 3, rejected 2" in err
    records = read_topic(broker, topic)
    decode = WideEventDecoder()
    events = sorted((decode(r.value) for r in records), key=lambda e: e["event_time_ms"])
    assert [r.key for r in sorted(records, key=lambda r: decode(r.value)["event_time_ms"])] \
        == [b"checkout", b"checkout", b"cart"]
    assert [(f.key if (f := family_of(e)) else None) for e in events] == [
        None, "checkout:POST /checkout:PMT_502", "cart:GET /cart:CART_TIMEOUT"]

    # The OpenTelemetry example, sent as Avro: what goes on the wire is wide_event.v1.
    out = produce(broker, str(EXAMPLES / "otel-log.ndjson"), "--topic", topic,
                  "--encoding", "avro", "--mapping", str(EXAMPLES / "otel-log.toml"))
    assert out.returncode == 0, out.stderr
    avro = [decode(r.value) for r in read_topic(broker, topic) if r.value[:1] == b"\xc3"]
    assert sorted(e["service"] for e in avro) == ["cart", "checkout", "checkout"]


def test_produce_refuses_a_bad_mapping_with_a_usage_error(broker: str, tmp_path: Path
                                                          ) -> None:
    events = tmp_path / "e.ndjson"
    events.write_bytes(b"{}\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fields]\nevent_time_ms = 't'\nservice = 'a..b'\nstep = 'p'\n")
    out = produce(broker, str(events), "--topic", "t", "--mapping", str(bad))
    err = out.stderr.decode()
    assert out.returncode == 2 and "Invalid value for" in err and "--mapping" in err, err
    assert f"{bad}:3: fields.service: bad path 'a..b'" in err
    assert "Traceback" not in err
    out = produce(broker, str(events), "--topic", "t", "--schema", "json",
                  "--mapping", str(EXAMPLES / "honeycomb.toml"))
    assert out.returncode == 2 and "not with --schema json" in out.stderr.decode()
