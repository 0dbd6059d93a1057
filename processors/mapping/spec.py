"""Mapping files: the TOML read, validated (errors name the file, line and key) and
compiled into an :class:`~tocsin.processors.mapping.apply.EventMapping`."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tocsin.processors.mapping.apply import EventMapping, Source
from tocsin.processors.mapping.errors import MappingError, _Bad
from tocsin.processors.mapping.paths import (
    _SELECT,
    DEFAULT_RULE,
    MISSING,
    FieldPath,
    Rule,
    _canonical,
    _parse_ops,
    _quote,
    parse_path,
)
from tocsin.processors.mapping.times import TIME_FORMATS, _time_converter
from tocsin.processors.mapping.values import (
    _key_text,
    _to_attribute,
    _to_number,
    _to_status,
    _to_str,
)
from tocsin.processors.toml_text import TooDeep, read_toml

MAPPING_VERSION = 1


_STR_TARGETS = ("service", "step", "env", "error_code", "error_message", "service_version",
                "trace_id", "span_id", "parent_span_id", "user_id", "request_id")
_FIELD_ORDER = ("event_time_ms", "service", "step", "env", "status", "error_code",
                "error_message", "duration_ms", *_STR_TARGETS[5:])
_REQUIRED = ("event_time_ms", "service", "step")
_DOWNSTREAM = ("service", "endpoint", "kind")
_ANCHOR = ("name", "status", "error_code", "error_message", "duration_ms")
_SPEC_KEYS = ("from", "value", "default", "map", "else", "format")
_TOP = ("version", "fields", "anchor", "attributes", "where")


def _converter(target: str, fmt: str) -> Callable[[Any], Any]:
    leaf = target.rsplit(".", 1)[-1]
    if target.startswith("attributes."):
        return _to_attribute
    if leaf == "event_time_ms":
        return _time_converter(fmt)
    if leaf == "status":
        return _to_status
    if leaf == "duration_ms":
        return _to_number
    return _to_str


# ---------------------------------------------------------------------- compiling


class _Compiler:
    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.lines = _key_lines(text)
        self.used_lists: set[str] = set()
        self.where: dict[str, Rule] = {}

    def error(self, key: tuple[str, ...], message: str) -> MappingError:
        line = None
        for n in range(len(key), 0, -1):
            line = self.lines.get(key[:n])
            if line is not None:
                break
        where = f"{self.name}:{line}" if line else self.name
        dotted = ".".join(_quote(k) for k in key)
        return MappingError(f"{where}: {dotted}: {message}" if key else f"{where}: {message}")

    def path(self, key: tuple[str, ...], text: Any) -> FieldPath:
        try:
            path = parse_path(text, self.where, DEFAULT_RULE)
        except ValueError as exc:
            raise self.error(key, f"bad path {text!r}: {exc}") from None
        self.used_lists.update(path.selects())
        return path

    def rule(self, key: tuple[str, ...], spec: Any) -> Rule:
        if not isinstance(spec, dict):
            raise self.error(key, "a where rule is a table: { field = PATH, not_in = [...] } "
                                  "(or in = [...], or exists = true)")
        unknown = sorted(set(spec) - {"field", "in", "not_in", "exists"})
        if unknown:
            raise self.error((*key, unknown[0]), "unknown option (field, in, not_in, exists)")
        fields = spec.get("field")
        texts = [fields] if isinstance(fields, str) else fields
        if not isinstance(texts, list) or not texts:
            raise self.error((*key, "field"), "a path, or a list of paths, inside the element")
        paths = []
        for text in texts:
            try:
                paths.append(parse_path(text))
            except ValueError as exc:
                raise self.error((*key, "field"), f"bad path {text!r}: {exc}") from None
        kinds = [k for k in ("in", "not_in", "exists") if k in spec]
        if len(kinds) != 1:
            raise self.error(key, "give exactly one of in, not_in, exists")
        kind = kinds[0]
        if kind == "exists":
            if spec["exists"] is not True:
                raise self.error((*key, "exists"), "only exists = true")
            return Rule(tuple(paths), kind, frozenset())
        values = spec[kind]
        if not isinstance(values, list) or not all(
                isinstance(v, str | int | float | bool) for v in values):
            raise self.error((*key, kind), "a list of strings, numbers or booleans")
        return Rule(tuple(paths), kind, frozenset(t for v in values
                                                  if (t := _key_text(v)) is not None))

    def scalar(self, key: tuple[str, ...], value: Any, convert: Callable[[Any], Any]) -> Any:
        if not isinstance(value, str | int | float | bool):
            raise self.error(key, f"a string, number or boolean, got {type(value).__name__}")
        try:
            return convert(value)
        except _Bad as exc:
            raise self.error(key, str(exc)) from None

    def source(self, key: tuple[str, ...], spec: Any, required: bool = False) -> Source:
        target = ".".join(key[1:] if key[0] == "fields" else key)
        from_key = (*key, "from")
        if isinstance(spec, str | list):
            spec, from_key = {"from": spec}, key
        if not isinstance(spec, dict):
            raise self.error(key, "a path, a list of paths, or a table "
                                  "{ from, value, default, map, else, format }")
        unknown = sorted(set(spec) - set(_SPEC_KEYS))
        if unknown:
            raise self.error((*key, unknown[0]), f"unknown option ({', '.join(_SPEC_KEYS)})")
        fmt = spec.get("format", "auto")
        if "format" in spec and target != "event_time_ms":
            raise self.error((*key, "format"), "format is for event_time_ms only")
        if fmt not in TIME_FORMATS:
            raise self.error((*key, "format"), f"one of {', '.join(TIME_FORMATS)}")
        convert = _converter(target, fmt)
        if ("from" in spec) == ("value" in spec):
            raise self.error(key, "give exactly one of from (a path) or value (a constant)")
        if "value" in spec:
            if set(spec) - {"value"}:
                raise self.error(key, "a constant (value) takes no other option")
            return Source(target, convert, const=self.scalar((*key, "value"), spec["value"],
                                                             convert))
        froms = spec["from"]
        texts = [froms] if isinstance(froms, str) else froms
        if not isinstance(texts, list) or not texts:
            raise self.error(from_key, "a path, or a non-empty list of paths")
        paths = tuple(self.path(from_key, t) for t in texts)
        default = MISSING if "default" not in spec else self.scalar(
            (*key, "default"), spec["default"], convert)
        table = None
        if "map" in spec:
            if not isinstance(spec["map"], dict):
                raise self.error((*key, "map"), "a table of record value = wide-event value")
            table = {k: self.scalar((*key, "map", k), v, convert)
                     for k, v in spec["map"].items()}
        elif "else" in spec:
            raise self.error((*key, "else"), "else goes with map")
        otherwise = MISSING if "else" not in spec else self.scalar(
            (*key, "else"), spec["else"], convert)
        return Source(target, convert, paths, default=default, table=table,
                      otherwise=otherwise, required=required)

    def group(self, key: tuple[str, ...], table: Any, names: tuple[str, ...],
              required: tuple[str, ...] = ()) -> tuple[list[Source], list[Source]]:
        """A table of targets -> (sources in schema order, downstream sources)."""
        if not isinstance(table, dict):
            raise self.error(key, "a table of target = source")
        unknown = sorted(set(table) - {*names, "downstream"})
        if unknown:
            raise self.error((*key, unknown[0]),
                             f"not a wide_event.v1 field here ({', '.join(names)}, downstream)")
        missing = [n for n in required if n not in table]
        if missing:
            raise self.error(key, f"{missing[0]} is required and not mapped"
                                  " (map it from a path, or give value = a constant)")
        # Only the event's own required fields dead-letter a record when they do not
        # resolve; an anchor whose name does not resolve is simply no anchor.
        sources = [self.source((*key, n), table[n], n in required and key == ("fields",))
                   for n in names if n in table]
        down: list[Source] = []
        if "downstream" in table:
            sub = table["downstream"]
            if not isinstance(sub, dict) or set(sub) & set(_SPEC_KEYS):
                raise self.error((*key, "downstream"),
                                 "a table { service = ..., endpoint = ..., kind = ... }")
            bad = sorted(set(sub) - set(_DOWNSTREAM))
            if bad:
                raise self.error((*key, "downstream", bad[0]),
                                 "not a downstream field (service, endpoint, kind)")
            if "service" not in sub:
                raise self.error((*key, "downstream"), "a downstream needs its service")
            down = [self.source((*key, "downstream", n), sub[n]) for n in _DOWNSTREAM
                    if n in sub]
        return sources, down


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Best effort: the line where each table header or key is written, for messages."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    header = re.compile(r"\s*\[([^\[\]]+)\]\s*(?:#.*)?$")
    assign = re.compile(r"""\s*((?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
                        r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*)\s*=""")
    for n, line in enumerate(text.splitlines(), 1):
        if m := header.match(line):
            table = _split_key(m.group(1))
            lines.setdefault(table, n)
        elif m := assign.match(line):
            lines.setdefault(table + _split_key(m.group(1)), n)
    return lines


_KEY_PART = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^.\s"']+)\s*\.?""")


def _split_key(text: str) -> tuple[str, ...]:
    """``a."b.c" . d`` -> ("a", "b.c", "d"), as TOML reads a dotted key (escapes: \\" only)."""
    parts = []
    for m in _KEY_PART.finditer(text):
        part = m.group(1)
        if part[:1] == '"':
            part = part[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif part[:1] == "'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def parse_mapping(text: str, name: str = "<mapping>") -> EventMapping:
    """Compile a mapping file's text; MappingError (file, line, key) when it is unusable."""
    try:
        doc = read_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{name}: not valid TOML: {exc}") from None
    except TooDeep as exc:
        raise MappingError(f"{name}:{exc.line}: values nested too deep to read") from None
    c = _Compiler(text, name)
    unknown = sorted(set(doc) - set(_TOP))
    if unknown:
        raise c.error((unknown[0],), f"unknown table or key ({', '.join(_TOP)})")
    if doc.get("version", MAPPING_VERSION) != MAPPING_VERSION:
        raise c.error(("version",), f"this Tocsin reads mapping version {MAPPING_VERSION}")
    where = doc.get("where", {})
    if not isinstance(where, dict):
        raise c.error(("where",), 'a table of "list[]" = { field = ..., not_in = [...] }')
    for list_text, spec in where.items():
        try:
            ops = _parse_ops(list_text)
        except ValueError as exc:
            raise c.error(("where", list_text), f"bad path: {exc}") from None
        if ops[-1][0] != _SELECT:
            raise c.error(("where", list_text), "a where rule names a list ending in []")
        c.where[_canonical(ops)] = c.rule(("where", list_text), spec)
    if "fields" not in doc:
        raise c.error(("fields",), "missing: the [fields] table maps event_time_ms, service "
                                   "and step at least")
    fields, down = c.group(("fields",), doc["fields"], _FIELD_ORDER, _REQUIRED)
    anchor: list[Source] = []
    anchor_down: list[Source] = []
    if "anchor" in doc:
        anchor, anchor_down = c.group(("anchor",), doc["anchor"], _ANCHOR, ("name",))
    attributes: list[Source] = []
    table = doc.get("attributes", {})
    if not isinstance(table, dict):
        raise c.error(("attributes",), "a table of attribute name = source")
    for attr, spec in table.items():
        attributes.append(c.source(("attributes", attr), spec))
    unused = sorted(set(c.where) - c.used_lists)
    if unused:
        raise c.error(("where", unused[0]), "no mapped path goes through this list")
    return EventMapping(name, tuple(fields), tuple(down), tuple(anchor), tuple(anchor_down),
                        tuple(attributes))


def load_mapping(path: str | Path) -> EventMapping:
    """Read and compile a mapping file (TOML); MappingError when unreadable or unusable."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        raise MappingError(f"{path}: mapping files are TOML (ADR 0013), not {path.suffix}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc}") from None
    return parse_mapping(text, str(path))
