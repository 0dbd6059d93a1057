"""Record values onto wide_event.v1 types: strings, statuses, numbers, attributes, and the
text a ``map`` key or a ``where`` value is compared with."""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from tocsin.processors.mapping.errors import _Bad
from tocsin.schemas.codec import STATUSES


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
