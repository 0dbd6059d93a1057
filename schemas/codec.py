"""Wire codecs: JSON, Avro single-object encoding, and the Confluent wire format.

Schemas are parsed once. A record that cannot be decoded raises :class:`SchemaError`
naming the field that failed, never a fastavro or orjson exception.

- Avro single-object encoding (the Avro spec): ``C3 01`` + the schema's CRC-64-AVRO
  fingerprint (8 bytes, little endian) + the binary body. Decodable in any language with
  only the ``.avsc`` files.
- Confluent wire format: ``00`` + schema id (4 bytes, big endian) + body, when a Schema
  Registry URL is configured (see :mod:`tocsin.schemas.registry`).
- JSON: one object per record, UTF-8.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import fastavro
import orjson
from fastavro.schema import fingerprint, to_parsing_canonical_form

AVRO_DIR = Path(__file__).with_name("avro")
SOE_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

WIDE_EVENT = "wide_event.v1"
INCIDENT_EVENT = "incident_event.v4"
INCIDENT_EVENT_V1 = "incident_event.v1"  # still read: logs written before v2
INCIDENT_EVENT_V2 = "incident_event.v2"  # still read: logs written before v3
INCIDENT_EVENT_V3 = "incident_event.v3"  # still read: logs written before v4
SIGNAL = "signal.v1"

Encoding = Literal["avro", "json"]


class SchemaError(ValueError):
    """A record does not fit its contract. ``field`` names what failed, when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def schema_text(name: str) -> str:
    return (AVRO_DIR / f"{name}.avsc").read_text()


def _strip_logical(node: Any) -> Any:
    """The wire is the same without logical types; we keep epoch ms as plain ints."""
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class AvroSchema:
    """One parsed schema with its single-object-encoding header."""

    def __init__(self, name: str, text: str | None = None) -> None:
        self.name = name
        self.raw: dict[str, Any] = json.loads(schema_text(name) if text is None else text)
        self.parsed = fastavro.parse_schema(_strip_logical(copy.deepcopy(self.raw)))
        canonical = to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(self.raw)))
        # fastavro gives the fingerprint as the hex of its little-endian bytes, which is
        # the order single-object encoding puts on the wire (spec example: "int" ->
        # C3 01 8F 5C 39 3F 1A D5 75 72).
        self.fingerprint = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        self.header = SOE_MAGIC + self.fingerprint
        self.fields = [f["name"] for f in self.raw["fields"]]

    @classmethod
    def from_text(cls, name: str, text: str) -> AvroSchema:
        """A writer schema from elsewhere (a registry); it must parse as Avro."""
        try:
            return cls(name, text)
        except (ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"{name} is not a usable Avro schema: {exc}") from exc

    def encode_body(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.parsed, dict(record))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaError(f"cannot encode as {self.name}: {exc}",
                              _failing_field(self.raw, record)) from exc
        return buf.getvalue()

    def decode_body(self, body: bytes) -> dict[str, Any]:
        try:
            value = fastavro.schemaless_reader(io.BytesIO(body), self.parsed, None)
        except (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError, KeyError,
                struct.error) as exc:
            raise SchemaError(f"not a valid {self.name} body: {exc}") from exc
        assert isinstance(value, dict)
        return value

    def encode_soe(self, record: Mapping[str, Any]) -> bytes:
        return self.header + self.encode_body(record)

    def decode_soe(self, data: bytes) -> dict[str, Any]:
        if data[:10] != self.header:
            raise SchemaError(
                f"single-object fingerprint {data[2:10].hex()} is not {self.name}"
                f" ({self.fingerprint.hex()})"
            )
        return self.decode_body(data[10:])


def _failing_field(raw: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
    """Best effort: the first field fastavro would reject, by a per-field check."""
    for f in raw["fields"]:
        name = f["name"]
        if name not in record and "default" not in f:
            return str(name)
    for f in raw["fields"]:
        name = f["name"]
        sub = _strip_logical({"type": "record", "name": "Probe", "fields": [f]})
        try:
            fastavro.schemaless_writer(io.BytesIO(), fastavro.parse_schema(sub),
                                       {name: record.get(name, f.get("default"))})
        except Exception:  # noqa: BLE001 - we are only looking for the culprit
            return str(name)
    return None


@cache
def avro_schema(name: str) -> AvroSchema:
    return AvroSchema(name)


# ---------------------------------------------------------------------- wide events

STATUSES = frozenset({"ok", "error", "timeout", "partial", "aborted", "suppressed"})
_OPTIONAL_STR = ("error_code", "error_message", "service_version", "trace_id", "span_id",
                 "parent_span_id", "user_id", "request_id")


def _need_str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError("required, a non-empty string", where + key)
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str = "") -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise SchemaError(f"must be a string or null, got {type(value).__name__}", where + key)


def _status(obj: Mapping[str, Any], where: str = "") -> str:
    status = obj.get("status", "ok")
    if not isinstance(status, str) or status not in STATUSES:  # a list or object: unhashable
        raise SchemaError(f"must be one of {sorted(STATUSES)}, got {status!r}", where + "status")
    return str(status)


def _event_time(obj: dict[str, Any]) -> int:
    t = obj.get("event_time_ms")
    if t is None and "timestamp" in obj:
        ts = obj.pop("timestamp")
        if not isinstance(ts, str):
            raise SchemaError("must be an RFC 3339 string", "timestamp")
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError as exc:
            raise SchemaError(f"not RFC 3339: {ts!r}", "timestamp") from exc
        if parsed.tzinfo is None:
            raise SchemaError("needs a UTC offset (for example Z)", "timestamp")
        t = int(parsed.timestamp() * 1000)
        obj["event_time_ms"] = t
    if not isinstance(t, int) or isinstance(t, bool):
        raise SchemaError("required, epoch milliseconds as an integer", "event_time_ms")
    if not 0 <= t < 1 << 53:
        raise SchemaError("out of range", "event_time_ms")
    return t


def _duration(obj: Mapping[str, Any], where: str) -> None:
    duration = obj.get("duration_ms")
    if duration is not None and (not isinstance(duration, int | float) or
                                 isinstance(duration, bool)):
        raise SchemaError("must be a number or null", where + "duration_ms")


def _downstream(obj: Mapping[str, Any], where: str) -> None:
    down = obj.get("downstream")
    if down is None:
        return
    if not isinstance(down, dict):
        raise SchemaError("must be an object or null", where + "downstream")
    _need_str(down, "service", where + "downstream.")
    _opt_str(down, "endpoint", where + "downstream.")
    _opt_str(down, "kind", where + "downstream.")


def validate_wide_event(obj: Any) -> dict[str, Any]:
    """Check a decoded JSON object against wide_event.v1 and fill its defaults, in place.

    Hand-written for the hot path (a pydantic model costs several times more per record);
    the Avro path is checked by the schema itself. ``timestamp`` (RFC 3339) is accepted
    in JSON in place of ``event_time_ms``.
    """
    if not isinstance(obj, dict):
        raise SchemaError(f"a wide event is a JSON object, got {type(obj).__name__}")
    _event_time(obj)
    _need_str(obj, "service")
    _need_str(obj, "step")
    env = obj.get("env")
    if env is None:
        obj["env"] = "prod"
    elif not isinstance(env, str) or not env:
        raise SchemaError("must be a non-empty string", "env")
    obj["status"] = _status(obj)
    for key in _OPTIONAL_STR:
        _opt_str(obj, key)
    _duration(obj, "")
    _downstream(obj, "")
    steps = obj.get("steps")
    if steps is not None:
        if not isinstance(steps, list):
            raise SchemaError("must be an array", "steps")
        for n, step in enumerate(steps):
            where = f"steps[{n}]."
            if not isinstance(step, dict):
                raise SchemaError("must be an object", where.rstrip("."))
            _need_str(step, "name", where)
            step["status"] = _status(step, where)
            _opt_str(step, "error_code", where)
            _opt_str(step, "error_message", where)
            _duration(step, where)
            _downstream(step, where)
    attributes = obj.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, dict):
            raise SchemaError("must be an object of strings", "attributes")
        for k, v in attributes.items():
            if not isinstance(v, str):
                attributes[k] = orjson.dumps(v).decode()
    return obj


class WideEventDecoder:
    """bytes -> validated wide-event dict, whatever the encoding (sniffed per record)."""

    def __init__(self, registry_lookup: Callable[[int], AvroSchema] | None = None) -> None:
        self.avro = avro_schema(WIDE_EVENT)
        self.registry_lookup = registry_lookup

    def __call__(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise SchemaError("empty record")
        first = data[:1]
        if first == b"\xc3":
            return self.avro.decode_soe(data)
        if first == CONFLUENT_MAGIC:
            if self.registry_lookup is None or len(data) < 5:
                raise SchemaError("Confluent wire format, but no schema registry is configured")
            schema = self.registry_lookup(int.from_bytes(data[1:5], "big"))
            return validate_wide_event(schema.decode_body(data[5:]))
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"neither Avro nor valid JSON: {exc}") from exc
        return validate_wide_event(obj)


# ---------------------------------------------------------------------- incident events


_V2_DEFAULTS: dict[str, Any] = {
    "phase": "triggered", "action_id": None, "actor": None, "note": None, "title": None,
    "hypothesis_status": None, "added": [], "removed": [], "news_signature": None,
    "news_cause": None, "report_hash": None}


def encode_incident(record: Mapping[str, Any], encoding: Encoding) -> bytes:
    if encoding == "json":
        return orjson.dumps(dict(record), option=orjson.OPT_SORT_KEYS)
    return avro_schema(INCIDENT_EVENT).encode_soe(record)


def decode_incident(data: bytes, registry_lookup: Callable[[int], AvroSchema] | None = None
                    ) -> dict[str, Any]:
    if data[:1] == b"\xc3":
        v1 = avro_schema(INCIDENT_EVENT_V1)
        if data[:10] == v1.header:  # written before v2: read as v4 reads it
            return {**_V2_DEFAULTS, "added": [], "removed": [], "timeline": None,
                    "rules_hash": None, **v1.decode_soe(data)}
        v2 = avro_schema(INCIDENT_EVENT_V2)
        if data[:10] == v2.header:  # written before v3
            return {"timeline": None, "rules_hash": None, **v2.decode_soe(data)}
        v3 = avro_schema(INCIDENT_EVENT_V3)
        if data[:10] == v3.header:  # written before v4
            return {"rules_hash": None, **v3.decode_soe(data)}
        return avro_schema(INCIDENT_EVENT).decode_soe(data)
    if data[:1] == CONFLUENT_MAGIC and registry_lookup is not None and len(data) > 5:
        return registry_lookup(int.from_bytes(data[1:5], "big")).decode_body(data[5:])
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"incident event is neither Avro nor JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SchemaError("incident event must be an object")
    return value
