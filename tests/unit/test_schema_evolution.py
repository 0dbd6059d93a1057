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


@pytest.mark.parametrize("older", ["incident_event.v1.avsc", "incident_event.v2.avsc"])
def test_incident_event_v3_reads_the_older_versions_and_v2_reads_v3(older: str) -> None:
    """v3 adds the timeline (a field with a default) and the kind `timeline` (a v2 reader
    takes the Kind enum's default, `updated`, which every stage skips): ADR 0019."""
    v3 = load(AVRO / "incident_event.v3.avsc")
    assert compatible(v3, load(AVRO / older)), f"v3 must read {older} data"
    if older == "incident_event.v2.avsc":
        assert compatible(load(AVRO / older), v3), "a v2 reader must read v3 data"


@pytest.mark.parametrize("older", ["incident_event.v1.avsc", "incident_event.v2.avsc",
                                   "incident_event.v3.avsc"])
def test_incident_event_v4_reads_the_older_versions_and_they_read_v4(older: str) -> None:
    """v4 adds rules_hash, a nullable field with a default (ADR 0022): it reads every older
    version's data, and a v2 or v3 reader reads its data (skipping the field)."""
    v4 = load(AVRO / "incident_event.v4.avsc")
    assert compatible(v4, load(AVRO / older)), f"v4 must read {older} data"
    if older != "incident_event.v1.avsc":
        assert compatible(load(AVRO / older), v4), f"a {older} reader must read v4 data"
