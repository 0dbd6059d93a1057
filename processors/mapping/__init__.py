"""Declarative field mappings: wide events in a producer's own JSON shape onto wide_event.v1.

A mapping file (TOML, ADR 0013) is compiled once into an :class:`EventMapping`; its
:meth:`EventMapping.apply` turns one decoded JSON value into a validated wide_event.v1 dict
or raises :class:`~tocsin.schemas.codec.SchemaError` (a :class:`MappedFieldError` when the
mapping itself decided) whose ``field`` names the wide_event.v1 field that failed and whose
message names the record's path. Nothing else escapes ``apply``, whatever the JSON value.

The modules, by what they do: ``paths`` (the path grammar and its resolution, including
``name[]`` and its ``[where]`` rules), ``values`` and ``times`` (record values onto
wide_event.v1 types), ``spec`` (reading and validating a mapping file into an
:class:`EventMapping`), ``apply`` (a compiled mapping applied to a record, and the record
decoder built on it), ``errors``.

Pure: no clock, no randomness, no I/O but :func:`load_mapping` reading the file it is given.
"""

from __future__ import annotations

from tocsin.processors.mapping.apply import EventMapping, Source, mapped_decoder
from tocsin.processors.mapping.errors import MappedFieldError, MappingError
from tocsin.processors.mapping.paths import DEFAULT_RULE, MISSING, FieldPath, Rule, parse_path
from tocsin.processors.mapping.spec import MAPPING_VERSION, load_mapping, parse_mapping
from tocsin.processors.mapping.times import MAX_EVENT_TIME_MS, TIME_FORMATS

__all__ = [
    "DEFAULT_RULE",
    "MAPPING_VERSION",
    "MAX_EVENT_TIME_MS",
    "MISSING",
    "TIME_FORMATS",
    "EventMapping",
    "FieldPath",
    "MappedFieldError",
    "MappingError",
    "Rule",
    "Source",
    "load_mapping",
    "mapped_decoder",
    "parse_mapping",
    "parse_path",
]
