"""Schema evolution, checked with the `avro` package's compatibility checker: every schema
must read data written with its released version and vice versa."""

from __future__ import annotations

import json
from pathlib import Path

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

AVRO = Path(__file__).resolve().parents[2] / "schemas" / "avro"
CURRENT = sorted(AVRO.glob("*.avsc"))


def load(path: Path) -> avro.schema.Schema:
    return avro.schema.parse(path.read_text())


def compatible(reader: avro.schema.Schema, writer: avro.schema.Schema) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    return bool(result.compatibility is SchemaCompatibilityType.compatible)


def test_every_schema_has_a_released_version() -> None:
    assert CURRENT, "no schemas found"
    for path in CURRENT:
        assert (AVRO / "released" / path.name).exists(), f"{path.name} was never released"


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.name)
def test_current_schema_is_backward_and_forward_compatible_with_the_release(path: Path
                                                                            ) -> None:
    current, released = load(path), load(AVRO / "released" / path.name)
    assert compatible(current, released), "new readers must read old data (backward)"
    assert compatible(released, current), "old readers must read new data (forward)"


def test_the_checker_catches_an_incompatible_change() -> None:
    raw = json.loads((AVRO / "wide_event.v1.avsc").read_text())
    raw["fields"].append({"name": "tenant", "type": "string"})  # no default
    changed = avro.schema.parse(json.dumps(raw))
    released = load(AVRO / "released" / "wide_event.v1.avsc")
    assert not compatible(changed, released)
