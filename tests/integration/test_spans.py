"""Spans in, as the OpenTelemetry Collector's Kafka exporter and an OTLP/HTTP exporter send
them: real encodings from the official SDK and encoder, and the shared fixtures."""

from __future__ import annotations

import asyncio
import gzip
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from tests.fixtures_io import FIXTURES as SHARED_FIXTURES
from tests.integration.harness import Names, WorkerProc, read_topic
from tocsin.clients.otel_workload import otlp_json, proto, workload
from tocsin.clients.produce import ProduceReport, publish
from tocsin.processors.otlp.pack import PACK_VERSION, decode_span_pack
from tocsin.processors.otlp.record import VERSIONS, decode_span_event
from tocsin.streams.kafka.io import TopicSpec, ensure_topics

FIXTURES = SHARED_FIXTURES / "otel"
T0_NS = 1_793_610_000 * 1_000_000_000  # 2026-11-02T09:00:00Z
DECLINED = "shop.payment.PaymentDeclinedError"
RECORD_FIRST = {bytes([v]) for v in VERSIONS}


def produce_raw(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    async def go() -> None:
        await ensure_topics(bootstrap, [TopicSpec(topic, 6, 3_600_000)])
        await publish(bootstrap, topic, values, ProduceReport())
    asyncio.run(go())


def worker_for(broker: str, tmp_path: Path, label: str) -> tuple[WorkerProc, str]:
    names = Names.fresh(label)
    spans_topic = f"spans-{names.app_id}"
    worker = WorkerProc(broker, names, tmp_path / f"{label}.duckdb", extra_env={
        "TOCSIN_TOPICS__SPANS": spans_topic,
        "TOCSIN_TOPICS__SIGNALS": f"sig-{names.app_id}",
        "TOCSIN_TOPICS__REPORTS": f"rep-{names.app_id}"}).start()
    worker.wait_ready(90)
    return worker, spans_topic


def wait_for(worker: WorkerProc, sql: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    return worker.wait_rows(sql, timeout_s)


def test_kafka_exporter_records_open_the_payment_incident(broker: str, tmp_path: Path
                                                          ) -> None:
    """Eighty traces a second apart, eight of them (12-19) failing at payment, split per
    trace and per service across records (keyed by trace id or not), partitions and
    encodings (every third record OTLP/JSON, the rest otlp_proto); the later healthy
    traces move event time on, so the failing ones close and fill the report's
    propagation and blast radius."""
    worker, topic = worker_for(broker, tmp_path, "spans")
    try:
        spans = workload(80, set(range(12, 20)), T0_NS, seed=11)
        records: list[tuple[bytes | None, bytes]] = []
        for n, trace_spans in enumerate(_by_trace(spans)):
            for service in ("frontend", "checkout", "payment"):
                mine = [s for s in trace_spans if s.resource.attributes["service.name"]
                        == service]
                key = format(mine[0].context.trace_id, "032x").encode() if n % 2 else None
                encode = otlp_json if len(records) % 3 == 0 else proto
                records.append((key, encode(mine)))
        records.append((None, b"\x00\xffnot otlp at all"))
        produce_raw(worker.bootstrap, topic, records)
        rows = wait_for(worker, "SELECT family, service, status, downstream FROM incidents "
                                "WHERE service = 'payment'")
        families = {r["family"] for r in wait_for(
            worker, "SELECT family FROM incidents WHERE service <> 'payment'")}
        letters = wait_for(worker, "SELECT reason FROM dead_letters")
        report = wait_for(worker, "SELECT body FROM triage_reports WHERE cause_kind IS NOT NULL"
                          " AND body LIKE '%\"affected_requests\":8%' AND incident_id IN ("
                          "SELECT incident_id FROM incidents WHERE service = 'payment')")
        # spans_in counts spans as they leave the partition merge: the last records wait
        # there until their partitions have been quiet for TOCSIN_SPANS_IDLE_MS.
        worker._wait(lambda h: h["metrics"]["spans_in"] >= 400, 30, "400 spans released")
        health = worker.health()
    finally:
        assert worker.stop() == 0
    assert rows[0]["family"] == f"payment:POST /api/charge:{DECLINED}"
    # The callers fail with 502 and name who they were calling.
    assert families == {"checkout:POST /api/checkout:HTTP_502",
                        "frontend:GET /cart/checkout:HTTP_502"}
    assert "otlp_proto" in letters[0]["reason"]
    assert health is not None and health["metrics"]["spans_in"] == 400
    snaps = json.loads(report[0]["body"])["snapshots"]
    assert snaps["propagation"]["origin"]["service"] == "payment"
    assert [h["service"] for h in snaps["propagation"]["path"]] == [
        "frontend", "checkout", "payment"]
    assert snaps["blast"]["capture"] == "ok"
    assert snaps["blast"]["affected_services"] == ["checkout", "frontend", "payment"]
    assert (snaps["blast"]["affected_requests"], snaps["blast"]["distinct_users"]) == (8, 4)


def test_a_service_version_change_on_spans_registers_a_deploy(broker: str,
                                                             tmp_path: Path) -> None:
    """payment's spans say 0.9.4 for a minute, then 0.9.5: one deploy signal, at the
    first span-derived event with the new version, as for wide events."""
    worker, topic = worker_for(broker, tmp_path, "spanver")
    signals_topic = f"sig-{worker.names.app_id}"
    before = workload(60, (), T0_NS, seed=21)
    after = workload(60, (), T0_NS + 60 * 10**9, seed=22, versions={"payment": "0.9.5"})
    try:
        produce_raw(worker.bootstrap, topic, [(None, proto(t)) for t in _by_trace(before)]
                    + [(None, proto(t)) for t in _by_trace(after)])
        worker._wait(lambda h: h["metrics"]["spans_in"] == 600, 60, "600 spans")
        worker._wait(lambda h: h["metrics"]["deploys_registered"] >= 1, 30, "a deploy")
    finally:
        assert worker.stop() == 0
    from tocsin.schemas.signal_wire import decode_signal

    deploys = [decode_signal(r.value) for r in read_topic(broker, signals_topic)]
    first_new = min(s.end_time for s in after
                    if s.resource.attributes["service.name"] == "payment") // 10**6
    assert [(d.type, d.service, d.version, d.env, d.event_time_ms) for d in deploys] == [
        ("deploy", "payment", "0.9.5", "production", first_new)]


def test_a_second_span_worker_joining_mid_stream_loses_and_doubles_nothing(
        broker: str, tmp_path: Path) -> None:
    """A rebalance of the span group while the first worker has records buffered in its
    partition merge and acknowledgements pending: both workers live on, and every failing
    entry span is counted exactly once (three per failing trace)."""
    first, topic = worker_for(broker, tmp_path, "spanpair")
    extra = {k: v for k, v in first.extra_env.items()}
    second = WorkerProc(broker, first.names, tmp_path / "spanpair2.duckdb", role="detect",
                        extra_env=extra)
    spans = workload(120, set(range(12, 20)) | set(range(70, 78)), T0_NS, seed=31)
    traces = _by_trace(spans)
    try:
        produce_raw(first.bootstrap, topic, [(None, proto(t)) for t in traces[:60]])
        first._wait(lambda h: h["metrics"]["spans_in"] >= 1, 60, "first spans")
        second.start()
        produce_raw(first.bootstrap, topic, [(None, proto(t)) for t in traces[60:]])

        def all_released(_: dict[str, Any]) -> bool:
            counts = [w.health() for w in (first, second)]
            return sum(h["metrics"]["spans_in"] for h in counts if h) >= len(spans)

        first._wait(all_released, 90, f"{len(spans)} spans through the two workers")
        rows = wait_for(first, "SELECT sum(errors)::INT AS n FROM family_windows "
                               "HAVING sum(errors) >= 48")
        families = {r["family"] for r in first.query("SELECT family FROM incidents")}
    finally:
        assert second.stop() == 0
        assert first.stop() == 0
    assert rows == [{"n": 48}]  # 16 failing traces x 3 failing entry spans, once each
    assert f"payment:POST /api/charge:{DECLINED}" in families


def _by_trace(spans: list[Any]) -> list[list[Any]]:
    traces: dict[int, list[Any]] = {}
    for s in spans:
        traces.setdefault(s.context.trace_id, []).append(s)
    return [traces[k] for k in sorted(traces, key=lambda t: min(
        s.start_time for s in traces[t]))]


def test_fixture_records_as_the_collector_writes_them(broker: str, tmp_path: Path) -> None:
    worker, topic = worker_for(broker, tmp_path, "fixture")
    try:
        contract = json.loads((FIXTURES / "trace-3svc.kafka-records.json").read_text())
        values = []
        for case in ("default_config", "partition_traces_by_id_true", "otlp_json_encoding"):
            for rec in contract[case]["records"]:
                key = rec["key"].encode() if rec["key"] else None
                values.append((key, (FIXTURES / rec["value_file"]).read_bytes()))
        produce_raw(worker.bootstrap, topic, values)
        worker._wait(lambda h: h["metrics"]["spans_in"] >= 15, 30, "15 spans")
        worker.wait_events(9)  # three records x three entry spans
    finally:
        assert worker.stop() == 0
    # Translated events are binary span event records, in packs per span record and
    # partition (ADR 0015), JSON when the record cannot carry them exactly: read all.
    events = [event for r in read_topic(broker, worker.names.events)
              if r.value  # without a value: the span sources' progress marks
              for event in (
                  [e for e, _, _ in decode_span_pack(r.value)] if r.value[0] == PACK_VERSION
                  else [decode_span_event(r.value)[0]] if r.value[:1] in RECORD_FIRST
                  else [orjson.loads(r.value)])]
    services = sorted({e["service"] for e in events})
    assert services == ["checkout", "frontend", "payment"]
    failed = {e["service"]: e for e in events if e["status"] == "error"}
    assert failed["checkout"]["downstream"]["service"] == "payment"
    assert failed["frontend"]["downstream"]["service"] == "checkout"


def post(worker: WorkerProc, body: bytes, content_type: str, gzipped: bool = False
         ) -> tuple[int, bytes, str]:
    headers = {"Content-Type": content_type}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}/v1/traces", data=body,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_otlp_http_accepts_protobuf_json_and_gzip_and_refuses_garbage(
        broker: str, tmp_path: Path) -> None:
    worker, topic = worker_for(broker, tmp_path, "otlphttp")
    try:
        batch = (FIXTURES / "trace-3svc-batch.pb").read_bytes()
        status, body, ctype = post(worker, batch, "application/x-protobuf", gzipped=True)
        assert status == 200 and ctype.startswith("application/x-protobuf")
        assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")
        status, body, _ = post(worker, (FIXTURES / "trace-3svc-batch.json").read_bytes(),
                               "application/json")
        assert (status, json.loads(body)) == (200, {})
        # One span with a broken id: refused alone, reported as partial success.
        doc = json.loads((FIXTURES / "trace-3svc-batch.json").read_text())
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "zz"
        status, body, _ = post(worker, json.dumps(doc).encode(), "application/json")
        partial = json.loads(body)["partialSuccess"]
        assert status == 200 and partial["rejectedSpans"] == "1" and partial["errorMessage"]
        status, body, _ = post(worker, b"\x0a\xff\xff garbage", "application/x-protobuf")
        assert status == 400 and b"bad OTLP traces" in body
        status, body, _ = post(worker, b"{not json", "application/json")
        assert status == 400 and json.loads(body)["code"] == 3
        assert post(worker, batch, "text/plain")[0] == 415
        worker._wait(lambda h: h["metrics"]["spans_in"] >= 14, 30, "spans translated")
    finally:
        assert worker.stop() == 0
    assert len(read_topic(broker, topic)) == 3  # the three accepted bodies, as sent


def dropped(worker: WorkerProc) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/metrics") as resp:
        text = resp.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tocsin_detector_dropped{")
                   and 'cause="duplicates_dropped"' in line))


def test_spans_translated_twice_are_counted_once(broker: str, tmp_path: Path) -> None:
    """A crash between publishing translated events and committing the span offsets makes
    the next translator redo the batch: its events arrive a second time."""
    from aiokafka import AIOKafkaProducer

    worker, topic = worker_for(broker, tmp_path, "dedup")
    spans = workload(10, {3, 4}, T0_NS, seed=5)
    produce_raw(worker.bootstrap, topic, [(None, proto(t)) for t in _by_trace(spans)])
    try:
        worker.wait_projected(30)  # 10 traces x 3 entry spans
        first = worker.query("SELECT sum(requests)::INT AS n, sum(errors)::INT AS e "
                             "FROM step_windows")
    finally:
        assert worker.stop() == 0

    # What a translator redoing the batch publishes: the same events, same positions.
    translated = [r for r in read_topic(broker, worker.names.events) if r.value]  # no marks
    assert translated and all(dict(r.headers).get("tocsin.span_source") for r in translated)

    async def republish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker, enable_idempotence=False)
        await producer.start()
        try:
            for r in translated:
                await producer.send_and_wait(worker.names.events, r.value, key=r.key,
                                             headers=list(r.headers))
        finally:
            await producer.stop()

    asyncio.run(republish())
    worker = WorkerProc(broker, worker.names, worker.db, extra_env=worker.extra_env).start()
    try:
        worker.wait_ready(90)
        worker.wait_for(lambda: dropped(worker) >= 30, 30, "30 duplicates dropped")
        assert dropped(worker) == 30
        worker.wait_settled()  # detection committed, DuckDB at every topic's end
        again = worker.query("SELECT sum(requests)::INT AS n, sum(errors)::INT AS e "
                             "FROM step_windows")
        health = worker.health()
    finally:
        assert worker.stop() == 0
    assert first == again == [{"n": 30, "e": 6}]
    assert health is not None
