"""A signal record on the signals topic: Avro single-object encoding of signal.v1 (what
Tocsin writes), or its JSON form (what another producer may write). Decoding holds the
JSON form to the same types as the Avro one and names the field that failed."""

from __future__ import annotations

from typing import Any, cast

import orjson
from fastavro.validation import validate

from tocsin.processors.signals.model import FIELDS as SIGNAL_FIELDS
from tocsin.processors.signals.model import IntakeError, Signal
from tocsin.schemas.codec import SIGNAL, SchemaError, avro_schema


def encode_signal(signal: Signal, encoding: str = "avro") -> bytes:
    if encoding == "json":
        return orjson.dumps(signal.to_dict(), option=orjson.OPT_SORT_KEYS)
    return avro_schema(SIGNAL).encode_soe(signal.to_dict())


def decode_signal(data: bytes) -> Signal:
    """A signal record: Avro single-object encoding of signal.v1, or its JSON form (the
    same fields with the same types; ``signal_id`` may be left out, it is computed, and
    other keys are ignored). Whatever is not a valid signal raises :class:`SchemaError`,
    naming the field when one failed."""
    if data[:1] == b"\xc3":
        raw = avro_schema(SIGNAL).decode_soe(data)
    else:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"signal is neither Avro nor JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise SchemaError("a signal is a JSON object")
        _check_json_signal(raw)
    try:
        return Signal(**{k: raw[k] for k in SIGNAL_FIELDS if k != "signal_id" and k in raw})
    except IntakeError as exc:  # an integer outside its Avro range (a damaged varint)
        raise SchemaError(f"not a valid signal.v1: {exc.problem}", exc.field) from exc
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"not a valid signal.v1: {exc}") from exc


def _check_json_signal(raw: dict[str, Any]) -> None:
    """The JSON form held to signal.v1's types, as the Avro form is by its decoder: every
    field without a default present, every field given of its type (null only where the
    schema allows it), integers within int and long."""
    schema = avro_schema(SIGNAL).parsed
    record = {k: raw[k] for k in SIGNAL_FIELDS if k in raw}
    record.setdefault("signal_id", "")  # computed from source and dedup key
    if validate(record, schema, raise_errors=False):
        return
    fields: list[dict[str, Any]] = cast(dict[str, Any], schema)["fields"]
    for f in fields:
        name = f["name"]
        if name not in record and "default" not in f:
            raise SchemaError("required by signal.v1", name)
        if name in record and not validate(record[name], f["type"], raise_errors=False):
            wanted = _avro_kind(f["type"])
            raise SchemaError(f"must be {wanted}, got {_json_kind(record[name], wanted)}",
                              name)
    raise SchemaError("not a valid signal.v1 record")  # a field fails above, as a rule


def _avro_kind(avro_type: Any) -> str:
    """An Avro type as the error message says it."""
    if isinstance(avro_type, list):
        return " or ".join(_avro_kind(t) for t in avro_type)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "enum":
            return "one of " + ", ".join(avro_type["symbols"])
        if avro_type["type"] == "map":
            return f"an object of {avro_type['values']} values"
        return _avro_kind(avro_type["type"])
    return {"null": "null", "string": "a string", "int": "an integer within 32 bits",
            "long": "an integer within 64 bits"}.get(str(avro_type), str(avro_type))


def _json_kind(value: object, wanted: str) -> str:
    """What a JSON value is beside what was ``wanted``, never the value itself (a record
    may be hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "one out of range" if "integer" in wanted else "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "another string" if wanted.startswith("one of") else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object with a value of another type" if "object" in wanted else "an object"
