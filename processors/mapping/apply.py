"""A compiled mapping applied to a record: each target field's source compiled into one
closure, the :class:`EventMapping` that assembles a wide_event.v1 dict from them, and the
record decoder that reads JSON records through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tocsin.processors.mapping.errors import MappedFieldError, _Bad
from tocsin.processors.mapping.paths import MISSING, FieldPath
from tocsin.processors.mapping.values import _key_text, _to_str
from tocsin.processors.signals.fields import kind_of
from tocsin.schemas.codec import CONFLUENT_MAGIC, SOE_MAGIC, SchemaError

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
            raise SchemaError(f"a mapped event is a JSON object, got {kind_of(obj)}")
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
