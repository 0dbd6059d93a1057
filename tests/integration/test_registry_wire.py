"""With a Schema Registry URL configured, Confluent-framed wide events are decoded and the
incident events go out Confluent-framed (registry: tests/fake_registry.py, over HTTP)."""

from __future__ import annotations

from pathlib import Path

from tests.fake_registry import fake_registry
from tests.integration.harness import Names, WorkerProc, produce_events, read_topic, spike_log
from tocsin.schemas.codec import WIDE_EVENT, avro_schema, decode_incident, validate_wide_event
from tocsin.streams.kafka.registry import SchemaRegistry, confluent_frame


def test_confluent_wire_format_end_to_end(broker: str, tmp_path: Path) -> None:
    names = Names.fresh("sr")
    with fake_registry() as (url, _):
        registry = SchemaRegistry(url)
        schema = avro_schema(WIDE_EVENT)
        schema_id = registry.register(f"{names.events}-value", schema)
        log = spike_log()
        framed = [confluent_frame(schema_id, schema.encode_body(validate_wide_event(e)))
                  for e in log]
        produce_events(broker, names.events, framed)
        worker = WorkerProc(broker, names, tmp_path / "sr.duckdb",
                            extra_env={"TOCSIN_SCHEMA_REGISTRY_URL": url}).start()
        try:
            worker.wait_projected(len(log))
            rows = worker.query("SELECT family, status FROM incidents")
        finally:
            assert worker.stop() == 0
        raw = read_topic(broker, names.incidents)
        assert raw and all(r.value[:1] == b"\x00" for r in raw)
        kinds = [decode_incident(r.value, registry.lookup)["kind"] for r in raw]
    assert kinds == ["opened", "recovering", "resolved"]
    assert rows == [{"family": "checkout:payment.charge:PMT_502", "status": "resolved"}]
