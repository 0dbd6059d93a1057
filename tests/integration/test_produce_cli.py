"""`tocsin produce`: NDJSON (plain, gzip, stdin) or a JSON array; bad lines reported with
their number and reason while the rest still go; Avro on the wire decodes downstream."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    event,
    incident_records,
    read_topic,
    spike_log,
)
from tocsin.schemas.codec import WideEventDecoder
from tocsin.streams.kafka.headers import MARK, header


def produce(broker: str, *args: str, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin", "produce", *args,
                           "--broker", broker], input=stdin, capture_output=True,
                          timeout=60, env=dict(os.environ))


def test_ndjson_with_bad_lines_reports_them_and_sends_the_rest(broker: str, tmp_path: Path
                                                               ) -> None:
    topic = Names.fresh("prod").events
    lines = [orjson.dumps(event(T0_MS + i, "api", "GET /")) for i in range(5)]
    lines.insert(2, b"{broken")
    lines.insert(4, orjson.dumps({"event_time_ms": T0_MS, "service": "api"}))
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = produce(broker, str(path), "--topic", topic)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "line 3: rejected: neither Avro nor valid JSON" in err or "line 3: rejected" in err
    assert "line 5: rejected: step: required" in err
    assert "sent 5, rejected 2" in err
    records = read_topic(broker, topic)
    assert len(records) == 5
    assert {r.key for r in records} == {b"api"}


def test_gzip_stdin_and_json_array_inputs(broker: str, tmp_path: Path) -> None:
    topic = Names.fresh("gz").events
    events = [event(T0_MS + i, "svc", "op") for i in range(3)]
    gz = gzip.compress(b"\n".join(orjson.dumps(e) for e in events))
    out = produce(broker, "-", "--topic", topic, stdin=gz)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "array.json"
    path.write_bytes(orjson.dumps(events))
    out = produce(broker, str(path), "--topic", topic)
    assert out.returncode == 0, out.stderr
    assert len(read_topic(broker, topic)) == 6


def test_avro_events_produced_by_the_cli_open_the_same_incident(broker: str, tmp_path: Path
                                                                ) -> None:
    names = Names.fresh("avro")
    log = spike_log()
    path = tmp_path / "spike.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in log))
    # The worker creates the topics (6 partitions) before anything is produced.
    worker = WorkerProc(broker, names, tmp_path / "avro.duckdb",
                        extra_env={"TOCSIN_INCIDENT_ENCODING": "json"}).start()
    try:
        worker.wait_ready(90)
        out = produce(broker, str(path), "--topic", names.events, "--encoding", "avro")
        assert out.returncode == 0, out.stderr
        worker.wait_projected(len(log))
    finally:
        assert worker.stop() == 0
    # The span intake's idle progress marks (empty values with a mark header) share the
    # events topic; the produced records are the rest.
    raw = [r for r in read_topic(broker, names.events) if header(r.headers, MARK) is None]
    assert len(raw) == len(log)
    assert raw[0].value[:2] == b"\xc3\x01"
    assert WideEventDecoder()(raw[0].value)["service"] in {"checkout", "cart", "search"}
    incident_raw = read_topic(broker, names.incidents)
    assert incident_raw[0].value[:1] == b"{", "TOCSIN_INCIDENT_ENCODING=json selects JSON"
    assert [r["kind"] for r in incident_records(broker, names.incidents)] == [
        "opened", "recovering", "resolved"]
