"""Declarative field mappings: wide events in a producer's own JSON shape onto wide_event.v1.

A mapping file (TOML, ADR 0013) is compiled once into an :class:`EventMapping`; its
:meth:`EventMapping.apply` turns one decoded JSON value into a validated wide_event.v1 dict
or raises :class:`~tocsin.schemas.codec.SchemaError` (a :class:`MappedFieldError` when the
mapping itself decided) whose ``field`` names the wide_event.v1 field that failed and whose
message names the record's path. Nothing else escapes ``apply``, whatever the JSON value.

Paths (compiled once): ``a.b.c`` walks objects; ``"user.id"`` is one key containing dots
(``\\"`` and ``\\\\`` escape inside quotes); ``name[N]`` takes element N of a list (negative
from the end); ``name[]`` takes the list's *chosen* element: the first one its ``[where]``
rule accepts, by default the first whose ``status`` (else ``outcome``) is present and not
``ok``/``OK``/``Ok`` — the first failing step. Every path through the same ``name[]`` sees
the same element, so an anchor's name and its error code always come from one step.

Pure: no clock, no randomness, no I/O but :func:`load_mapping` reading the file it is given.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import orjson

from tocsin.schemas.codec import (
    CONFLUENT_MAGIC,
    SOE_MAGIC,
    STATUSES,
    SchemaError,
)

MAPPING_VERSION = 1
TIME_FORMATS = ("auto", "rfc3339", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns")
MAX_EVENT_TIME_MS = 1 << 53  # wide_event.v1's range (schemas/codec.py)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file, line and key."""


class MappedFieldError(SchemaError):
    """A record the mapping cannot turn into a wide event. ``field`` is the wide_event.v1
    field (as the mapping names it: ``service``, ``downstream.service``, ``anchor.name``,
    ``attributes.region``); ``source`` the record path(s) it is mapped from, if any."""

    def __init__(self, message: str, field: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(message, field)


class _Bad(Exception):
    """A value that does not convert; caught in :meth:`EventMapping.apply`."""


# ---------------------------------------------------------------------- paths

_KEY, _INDEX, _SELECT = 0, 1, 2
_BARE = re.compile(r'[^.\[\]"\s]+')
_INDEX_RE = re.compile(r"\[(-?\d{1,9})?\]", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rule:
    """Which element ``list[]`` chooses: the first object whose value at one of ``fields``
    (the first present) is in / not in ``values``, or, for ``exists``, is present."""

    fields: tuple[FieldPath, ...]
    kind: str  # "in" | "not_in" | "exists"
    values: frozenset[str]

    def accepts(self, element: Any) -> bool:
        if not isinstance(element, dict):
            return False
        for path in self.fields:
            value = path.get(element, None)
            if value is MISSING:
                continue
            if self.kind == "exists":
                return True
            key = _key_text(value)
            if key is None:
                return False
            return (key in self.values) == (self.kind == "in")
        return False


@dataclass(frozen=True, slots=True)
class FieldPath:
    text: str  # canonical form
    ops: tuple[tuple[int, Any], ...]

    def get(self, obj: Any, memo: dict[str, Any] | None) -> Any:
        """The value at this path, or MISSING (absent, null, or the wrong container)."""
        cur = obj
        for kind, arg in self.ops:
            if kind == _KEY:
                if not isinstance(cur, dict):
                    return MISSING
                cur = cur.get(arg)
            elif kind == _INDEX:
                if not isinstance(cur, list) or not -len(cur) <= arg < len(cur):
                    return MISSING
                cur = cur[arg]
            else:
                list_id, rule = arg
                if memo is not None and list_id in memo:
                    cur = memo[list_id]
                else:
                    chosen: Any = None
                    if isinstance(cur, list):
                        for element in cur:
                            if rule.accepts(element):
                                chosen = element
                                break
                    if memo is not None:
                        memo[list_id] = chosen
                    cur = chosen
            if cur is None:
                return MISSING
        return cur

    def selects(self) -> list[str]:
        return [arg[0] for kind, arg in self.ops if kind == _SELECT]

    def getter(self) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
        """:meth:`get` specialised for the common shapes (one key, a few keys), which
        are most of a mapping; called with the record object, always a dict."""
        if any(kind != _KEY for kind, _ in self.ops):
            return self.get
        keys = tuple(arg for _, arg in self.ops)
        if len(keys) == 1:
            key = keys[0]

            def get_one(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
                value = obj.get(key)
                return MISSING if value is None else value
            return get_one
        if len(keys) == 2:
            k1, k2 = keys

            def get_two(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
                value = obj.get(k1)
                if not isinstance(value, dict):
                    return MISSING
                value = value.get(k2)
                return MISSING if value is None else value
            return get_two

        def get_keys(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
            value: Any = obj
            for key in keys:
                if not isinstance(value, dict):
                    return MISSING
                value = value.get(key)
            return MISSING if value is None else value
        return get_keys


def _quote(segment: str) -> str:
    if _BARE.fullmatch(segment):
        return segment
    return '"' + segment.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_ops(text: str) -> list[tuple[int, Any]]:
    """``a."b.c"[0].d[]`` -> [(KEY,a), (KEY,b.c), (INDEX,0), (KEY,d), (SELECT,None)]."""
    if not isinstance(text, str) or not text:
        raise ValueError("a path is a non-empty string")
    ops: list[tuple[int, Any]] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, chars = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    if j + 1 >= n or text[j + 1] not in '"\\':
                        raise ValueError(f'only \\" and \\\\ escape inside quotes, at {j + 1}')
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise ValueError(f"unterminated quote opened at {i + 1}")
            ops.append((_KEY, "".join(chars)))
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if m is None:
                what = "end" if i >= n else repr(text[i])
                raise ValueError(f"expected a key at {i + 1}, found {what}")
            ops.append((_KEY, m.group()))
            i = m.end()
        while i < n and text[i] == "[":
            m = _INDEX_RE.match(text, i)
            if m is None:
                raise ValueError(f"expected [] or [N] at {i + 1}")
            ops.append((_SELECT, None) if m.group(1) is None else (_INDEX, int(m.group(1))))
            i = m.end()
        if i == n:
            return ops
        if text[i] != ".":
            raise ValueError(f"expected '.' or '[' at {i + 1}, found {text[i]!r}")
        i += 1


def _canonical(ops: Iterable[tuple[int, Any]]) -> str:
    out = ""
    for kind, arg in ops:
        if kind == _KEY:
            out += ("." if out else "") + _quote(arg)
        elif kind == _INDEX:
            out += f"[{arg}]"
        else:
            out += "[]"
    return out


def parse_path(text: str, where: dict[str, Rule] | None = None,
               default_rule: Rule | None = None) -> FieldPath:
    """Compile a path; each ``[]`` gets the rule of its list (by canonical prefix)."""
    raw = _parse_ops(text)
    ops: list[tuple[int, Any]] = []
    for kind, arg in raw:
        if kind == _SELECT:
            list_id = _canonical([*ops, (kind, arg)])
            rule = (where or {}).get(list_id, default_rule)
            if rule is None:
                raise ValueError("[] is not allowed here")
            ops.append((_SELECT, (list_id, rule)))
        else:
            ops.append((kind, arg))
    return FieldPath(_canonical(ops), tuple(ops))


DEFAULT_RULE = Rule(
    (parse_path("status"), parse_path("outcome")), "not_in", frozenset({"ok", "OK", "Ok"}))


# ---------------------------------------------------------------------- values


def _key_text(value: Any) -> str | None:
    """A scalar as the text a ``map`` key or ``where`` value is compared with."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if -(10 ** 30) < value < 10 ** 30 else None
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    return None


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        raise _Bad(f"must be a scalar, got {_show(value)}")
    text = _key_text(value)
    if text is None:
        raise _Bad(f"cannot be written as a string: {type(value).__name__}")
    return text


def _to_status(value: Any) -> str:
    text = _to_str(value)
    if text not in STATUSES:
        raise _Bad(f"{text!r} is not a wide_event.v1 status ({', '.join(sorted(STATUSES))}); "
                   "translate it with map")
    return text


_NUMBER = re.compile(r"[+-]?(?:\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(?:[eE][+-]?\d{1,3})?",
                     re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,30}", re.ASCII)


def _to_number(value: Any) -> float:
    cls = value.__class__
    if cls is float:
        number: float = value
    elif cls is int:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    elif cls is str and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    else:
        raise _Bad(f"must be a number, got {_show(value)}")
    if not math.isfinite(number):
        raise _Bad("must be a finite number")
    return number


_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(\d{1,30}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_UNIT_MS = {"epoch_s": Decimal(1000), "epoch_ms": Decimal(1), "epoch_us": Decimal("0.001"),
            "epoch_ns": Decimal("0.000001")}
_FORMAT_NAMES = {"auto": "a time (RFC 3339 or epoch)", "epoch_s": "epoch seconds",
                 "epoch_ms": "epoch milliseconds", "epoch_us": "epoch microseconds",
                 "epoch_ns": "epoch nanoseconds"}
_INT_MS: dict[str, Callable[[int], int]] = {
    "epoch_s": lambda n: n * 1000, "epoch_ms": lambda n: n,
    "epoch_us": lambda n: n // 1000, "epoch_ns": lambda n: n // 1_000_000}


@lru_cache(maxsize=4096)
def _local_seconds(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (shape already checked) -> seconds since 1970-01-01T00:00:00
    of the same wall clock; ValueError for a date or time that does not exist. Cached: the
    records of a stream share seconds."""
    hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if hour > 23 or minute > 59 or second > 60:  # :60 is a leap second: the next second
        raise ValueError("hour, minute or second out of range")
    days = date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL
    return ((days * 24 + hour) * 60 + minute) * 60 + second


def _rfc3339_ms(value: Any) -> int:
    """RFC 3339 with a required offset, floored to the millisecond (integer arithmetic,
    any number of fraction digits)."""
    m = _RFC3339.fullmatch(value) if value.__class__ is str else None
    if m is None:
        raise _Bad(f"not an RFC 3339 time with an offset: {_show(value)}")
    frac, sign, oh, om = m.groups()
    try:
        seconds = _local_seconds(value[:19])
    except ValueError as exc:
        raise _Bad(f"not a valid RFC 3339 time: {value!r} ({exc})") from None
    if sign is not None:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            raise _Bad(f"not a valid RFC 3339 offset: {value!r}")
        seconds += (-60 if sign == "+" else 60) * (off_h * 60 + off_m)
    return seconds * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)


def _auto_unit(magnitude: int | Decimal) -> str:
    """Epoch unit by magnitude: below 1e11 seconds (until year 5138), below 1e14
    milliseconds, below 1e17 microseconds, else nanoseconds."""
    if magnitude < 10 ** 11:
        return "epoch_s"
    if magnitude < 10 ** 14:
        return "epoch_ms"
    if magnitude < 10 ** 17:
        return "epoch_us"
    return "epoch_ns"


def _epoch_ms(value: Any, fmt: str) -> int:
    exact: int | Decimal
    if isinstance(value, bool):
        raise _Bad("a boolean is not a time")
    if isinstance(value, int):
        exact = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad("not a finite number")
        exact = Decimal(repr(value))
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        exact = int(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        exact = Decimal(value.strip())
    else:
        raise _Bad(f"not {_FORMAT_NAMES[fmt]}: {_show(value)}")
    unit = fmt if fmt != "auto" else _auto_unit(-exact if exact < 0 else exact)
    if isinstance(exact, int):
        if not -(10 ** 40) < exact < 10 ** 40:
            raise _Bad("out of range")
        return _INT_MS[unit](exact)
    ms = exact * _UNIT_MS[unit]
    if not -(10 ** 40) < ms < 10 ** 40:
        raise _Bad("out of range")
    return int(ms.to_integral_value(rounding=ROUND_FLOOR))


def _time_ms(value: Any, fmt: str) -> int:
    try:
        if fmt == "rfc3339" or (fmt == "auto" and isinstance(value, str)
                                and not _NUMBER.fullmatch(value.strip())):
            t = _rfc3339_ms(value)
        else:
            t = _epoch_ms(value, fmt)
    except (InvalidOperation, OverflowError, ValueError) as exc:
        raise _Bad(f"not a time: {_show(value)}") from exc
    if not 0 <= t < MAX_EVENT_TIME_MS:
        raise _Bad(f"{_show(value)} ({fmt}) is outside wide_event.v1's range")
    return t


def _time_converter(fmt: str) -> Callable[[Any], int]:
    if fmt != "rfc3339":
        return lambda value: _time_ms(value, fmt)

    def rfc3339(value: Any) -> int:  # the common case, without the dispatch
        t = _rfc3339_ms(value)
        if not 0 <= t < MAX_EVENT_TIME_MS:
            raise _Bad(f"{_show(value)} (rfc3339) is outside wide_event.v1's range")
        return t
    return rfc3339


def _to_attribute(value: Any) -> str:
    if isinstance(value, dict | list):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise _Bad(f"cannot be written as JSON: {exc}") from exc
    return _to_str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------- fields


class Source:
    """One target field: where its value comes from and how it is converted, compiled into
    one ``resolve(record, memo)`` closure that returns the value or MISSING."""

    __slots__ = ("const", "default", "paths", "required", "resolve", "target")

    def __init__(self, target: str, convert: Callable[[Any], Any],
                 paths: tuple[FieldPath, ...] = (), const: Any = MISSING,
                 default: Any = MISSING, table: dict[str, Any] | None = None,
                 otherwise: Any = MISSING, required: bool = False) -> None:
        self.target = target
        self.paths = paths
        self.const = const
        self.default = default
        self.required = required
        self.resolve: Callable[[dict[str, Any], dict[str, Any]], Any] = self._compile(
            convert, table, otherwise)

    @property
    def described(self) -> str:
        if self.paths:
            return " | ".join(p.text for p in self.paths)
        return "a constant"

    def _compile(self, convert: Callable[[Any], Any], table: dict[str, Any] | None,
                 otherwise: Any) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
        const, default, target = self.const, self.default, self.target
        if const is not MISSING:
            return lambda obj, memo: const
        getters = tuple((p.getter(), p.text) for p in self.paths)
        described = self.described
        required = self.required and default is MISSING

        def absent() -> Any:
            if required:
                raise MappedFieldError(
                    f"required by wide_event.v1, mapped from {described}, which the "
                    "record does not have", target, described)
            return default

        def converted(value: Any, text: str) -> Any:
            if table is not None:
                key = _key_text(value)
                if key is not None and key in table:
                    return table[key]
                if otherwise is not MISSING:
                    return otherwise
            try:
                return convert(value)
            except _Bad as exc:
                raise MappedFieldError(f"{exc} (from {text})", target, text) from None

        if len(getters) == 1 and table is None and convert is _to_str:
            # the most common field: one path onto a string
            (get, text), = getters

            def resolve_str(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
                value = get(obj, memo)
                if value.__class__ is str:
                    return value
                return absent() if value is MISSING else converted(value, text)
            return resolve_str

        def resolve(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
            for get, text in getters:
                value = get(obj, memo)
                if value is not MISSING:
                    return converted(value, text)
            return absent()
        return resolve


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


# ---------------------------------------------------------------------- the mapping


class EventMapping:
    """A compiled mapping. ``apply`` is deterministic: the same JSON value always gives the
    same wide event or the same error."""

    __slots__ = ("_anchor", "_anchor_down", "_attributes", "_down", "_fields", "anchor",
                 "anchor_downstream", "attributes", "downstream", "fields", "name")

    def __init__(self, name: str, fields: tuple[Source, ...], downstream: tuple[Source, ...],
                 anchor: tuple[Source, ...], anchor_downstream: tuple[Source, ...],
                 attributes: tuple[Source, ...]) -> None:
        self.name = name
        self.fields = fields
        self.downstream = downstream
        self.anchor = anchor
        self.anchor_downstream = anchor_downstream
        self.attributes = attributes

        def plan(sources: tuple[Source, ...]) -> _Plan:
            return tuple((s.target.rsplit(".", 1)[-1], s.resolve) for s in sources)
        self._fields = plan(fields)
        self._down = plan(downstream)
        self._anchor = plan(anchor)
        self._anchor_down = plan(anchor_downstream)
        self._attributes = tuple((s.target.removeprefix("attributes."), s.resolve)
                                 for s in attributes)

    def apply(self, obj: Any) -> dict[str, Any]:
        """One decoded JSON value -> a wide_event.v1 dict (with its defaults, as
        ``validate_wide_event`` returns it); SchemaError otherwise."""
        if not isinstance(obj, dict):
            raise SchemaError(f"a mapped event is a JSON object, got {_json_type(obj)}")
        memo: dict[str, Any] = {}
        event = _resolve(self._fields, obj, memo)
        if self._down:
            down = _resolve(self._down, obj, memo)
            if "service" in down:  # wide_event.v1 has no downstream without its service
                event["downstream"] = down
        if self._anchor:
            step = _resolve(self._anchor, obj, memo)
            if "name" in step:  # no failing element chosen, no anchor
                step.setdefault("status", "error")
                down = _resolve(self._anchor_down, obj, memo)
                if "service" in down:
                    step["downstream"] = down
                event["steps"] = [step]
        if self._attributes:
            attributes = _resolve(self._attributes, obj, memo)
            if attributes:
                event["attributes"] = attributes
        # Every value is already of its wide_event.v1 type (converted on the way); what
        # validate_wide_event would still check is left: non-empty names, defaults.
        # tests/unit/test_mapping.py holds apply's output to validate_wide_event.
        if not event["service"]:
            raise self._empty("service")
        if not event["step"]:
            raise self._empty("step")
        env = event.get("env")
        if env is None:
            event["env"] = "prod"
        elif not env:
            raise self._empty("env")
        if "status" not in event:
            event["status"] = "ok"
        if "downstream" in event and not event["downstream"]["service"]:
            raise self._empty("downstream.service")
        if "steps" in event:
            step = event["steps"][0]
            if not step["name"]:
                raise self._empty("anchor.name")
            if "downstream" in step and not step["downstream"]["service"]:
                raise self._empty("anchor.downstream.service")
        return event

    def _empty(self, target: str) -> MappedFieldError:
        for src in (*self.fields, *self.downstream, *self.anchor, *self.anchor_downstream):
            if src.target == target:
                return MappedFieldError(f"required, a non-empty string (from {src.described})",
                                        target, src.described)
        return MappedFieldError("required, a non-empty string", target)  # pragma: no cover

    @property
    def targets(self) -> list[str]:
        return [s.target for s in (*self.fields, *self.downstream, *self.anchor,
                                   *self.anchor_downstream, *self.attributes)]


_Plan = tuple[tuple[str, Callable[[dict[str, Any], dict[str, Any]], Any]], ...]


def _resolve(plan: _Plan, obj: dict[str, Any], memo: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, resolve in plan:
        value = resolve(obj, memo)
        if value is not MISSING:
            out[key] = value
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


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
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{name}: not valid TOML: {exc}") from None
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


def mapped_decoder(mapping: EventMapping, native: Callable[[bytes | None], dict[str, Any]]
                   ) -> Callable[[bytes | None], dict[str, Any]]:
    """A record decoder that reads JSON records through ``mapping``; Avro single-object and
    Confluent-framed records (already wide_event.v1) and empty ones go to ``native``
    (a :class:`~tocsin.schemas.codec.WideEventDecoder`)."""
    apply = mapping.apply
    native_firsts = (SOE_MAGIC[:1], CONFLUENT_MAGIC)

    def decode(data: bytes | None) -> dict[str, Any]:
        if not data or data[:1] in native_firsts:
            return native(data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"neither Avro nor valid JSON: {exc}") from exc
        return apply(obj)

    return decode
