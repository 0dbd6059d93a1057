"""Confluent wire format through a registry reached over real HTTP (a fake registry: the
real one is a Java service that cannot run here)."""

from __future__ import annotations

import pytest

from tests.fake_registry import fake_registry
from tocsin.schemas.codec import (
    INCIDENT_EVENT,
    WIDE_EVENT,
    SchemaError,
    WideEventDecoder,
    avro_schema,
    decode_incident,
    validate_wide_event,
)
from tocsin.streams.kafka.registry import RegistryError, SchemaRegistry, confluent_frame


def test_register_then_decode_a_confluent_framed_wide_event() -> None:
    with fake_registry() as (url, _):
        registry = SchemaRegistry(url)
        schema = avro_schema(WIDE_EVENT)
        schema_id = registry.register("tocsin.events-value", schema)
        assert registry.register("tocsin.events-value", schema) == schema_id
        event = validate_wide_event({"event_time_ms": 5, "service": "s", "step": "p",
                                     "status": "timeout"})
        data = confluent_frame(schema_id, schema.encode_body(event))
        fresh = SchemaRegistry(url)  # a consumer that never saw the schema
        decoded = WideEventDecoder(fresh.lookup)(data)
        assert (decoded["service"], decoded["status"]) == ("s", "timeout")


def test_incident_events_in_confluent_framing_decode_with_the_registry() -> None:
    with fake_registry() as (url, _):
        registry = SchemaRegistry(url)
        schema = avro_schema(INCIDENT_EVENT)
        record = {"incident_id": "inc_1", "seq": 2, "kind": "acknowledged", "status": "active",
                  "env": "prod", "service": "s", "step": "p", "error_code": "E",
                  "family": "s:p:E", "onset_ms": 1, "at_ms": 1, "window_count": 5,
                  "baseline": 0.0, "lift": None, "peak_count": 5, "error_count": 5,
                  "last_error_ms": 1, "rule": "spike.v1", "downstream": None,
                  "sample_trace_ids": [], "phase": "acknowledged",
                  "action_id": "act_0123456789abcdef", "actor": "ana", "note": None,
                  "title": None, "hypothesis_status": None, "added": [], "removed": [],
                  "news_signature": None, "news_cause": None, "report_hash": None,
                  "timeline": None, "rules_hash": None}
        data = confluent_frame(registry.register("tocsin.incidents-value", schema),
                               schema.encode_body(record))
        assert decode_incident(data, SchemaRegistry(url).lookup) == record


def test_unknown_schema_id_is_a_schema_error_and_a_dead_registry_a_registry_error() -> None:
    with fake_registry() as (url, _), pytest.raises(SchemaError, match="schema id 99"):
        WideEventDecoder(SchemaRegistry(url).lookup)(confluent_frame(99, b"\x00"))
    with pytest.raises(RegistryError):
        SchemaRegistry(url, timeout_s=1).register("x-value", avro_schema(WIDE_EVENT))
