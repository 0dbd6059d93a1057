"""Event times: RFC 3339 (with an offset) and epoch seconds, milliseconds, microseconds or
nanoseconds (or ``auto``, by magnitude) onto wide_event.v1's epoch milliseconds."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from tocsin.processors.mapping.errors import _Bad
from tocsin.processors.mapping.values import _INTEGER, _NUMBER, _show

TIME_FORMATS = ("auto", "rfc3339", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns")
MAX_EVENT_TIME_MS = 1 << 53  # wide_event.v1's range (schemas/codec.py)


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
