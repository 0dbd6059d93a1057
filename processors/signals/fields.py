"""Reading untrusted webhook JSON: typed getters whose errors name the field, and times.

Every provider parser reads its payload through :class:`Obj`, so a payload that does not
fit says which field failed (``alerts[0].startsAt: required, an RFC 3339 time``); the
message becomes the body of the intake's 400/422 answer.

Times are parsed here, by hand, because real senders disagree on the format: Go writes
nanoseconds (``2018-11-04T22:43:58.283995108+01:00``), PagerDuty a colon-less offset
(``2015-07-17T08:42:58.315+0000``), GitLab a space and a separate offset
(``2021-04-28 21:50:00 +0200``, ``2020-11-02 12:55:12 UTC``). Fractions are truncated to
the millisecond (Go's ``UnixMilli`` does the same). Go's zero time
``0001-01-01T00:00:00Z`` (Alertmanager's and Grafana's "unset") reads as ``None``. Times
are read between 0001-01-01 and 9999-12-31T23:59:59.999Z in UTC (Python's dates): a later
one, such as ``9999-12-31T23:59:59-01:00``, is refused with a message, never an overflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tocsin.processors.signals.model import IntakeError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
FIRST_MS = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // MS
LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - EPOCH) // MS
"""The times read: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, in epoch ms."""
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)$"
)
_INT = re.compile(r"^[+-]?\d+$")


def time_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339-like time with an offset; None for Go's zero time.

    Raises ``ValueError`` for a time without an offset: guessing a zone would make the
    same payload mean different instants on different machines; and for one outside
    :data:`FIRST_MS` .. :data:`LAST_MS` once its offset is applied.
    """
    m = _TIME.match(text.strip())
    if m is None:
        raise ValueError(f"not a time with a UTC offset: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year <= 1:
        return None
    frac = (m.group(7) or "")[:3].ljust(3, "0")
    stamp = datetime(year, month, day, hour, minute, second, int(frac) * 1000, tzinfo=UTC)
    # In integers: the offset may carry the instant past the last date a datetime holds.
    ms = (stamp - EPOCH) // MS - _offset(m.group(8)) // MS
    if not FIRST_MS <= ms <= LAST_MS:
        raise ValueError("outside the times read, 0001-01-01 to 9999-12-31T23:59:59.999Z "
                         "in UTC")
    return ms


def _offset(zone: str) -> timedelta:
    if zone in ("Z", "z", "UTC"):
        return timedelta(0)
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
    return sign * timedelta(minutes=minutes)


def first_of(*values: int | None) -> int | None:
    """The first value that is not None (``or`` would also skip a time of 0)."""
    return next((v for v in values if v is not None), None)


def seconds_ms(value: float) -> int:
    """Epoch milliseconds of epoch seconds with a fraction (Sentry's ``timestamp``).

    Raises ``ValueError`` outside the times read (:data:`FIRST_MS` .. :data:`LAST_MS`):
    ``1e308`` is valid JSON, and infinity as milliseconds has no integer.
    """
    ms = value * 1000
    if not FIRST_MS <= ms <= LAST_MS:  # NaN too: every comparison with it is false
        raise ValueError("epoch seconds outside the times read, 0001-01-01 to "
                         "9999-12-31T23:59:59.999Z in UTC")
    return round(ms)


def text_of(value: Any) -> str:
    """A map value as text: strings as they are, anything else as compact sorted JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Obj:
    """A JSON object with its path in the payload, so every error names its field."""

    __slots__ = ("data", "path", "provider")

    def __init__(self, data: Mapping[str, Any], provider: str, path: str = "") -> None:
        self.data = data
        self.provider = provider
        self.path = path

    @classmethod
    def root(cls, payload: object, provider: str) -> Obj:
        if not isinstance(payload, Mapping):
            raise IntakeError(f"a payload is a JSON object, got {kind_of(payload)}",
                              provider=provider)
        return cls(payload, provider)

    def error(self, key: str, problem: str) -> IntakeError:
        return IntakeError(problem, field=self.path + key, provider=self.provider)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    # -- strings

    def opt_str(self, key: str) -> str | None:
        """The string at ``key``; None when absent, null or empty ("" means unset here).
        An integer is accepted as its text: ids are numbers in some payloads (GitHub)."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(key, f"must be a string, got {kind_of(value)}")
        return str(value)

    def req_str(self, key: str) -> str:
        value = self.opt_str(key)
        if value is None:
            raise self.error(key, "required, a non-empty string")
        return value

    def req_choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.req_str(key)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    # -- numbers

    def opt_int(self, key: str) -> int | None:
        """The integer at ``key``; None when absent, null or empty. Its decimal text is
        accepted too (``"3"``): senders that template their JSON quote numbers."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {kind_of(value)}")
        return value

    # -- times

    def opt_time(self, key: str) -> int | None:
        """Epoch ms of the time at ``key``; None when absent, empty or Go's zero time."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be an RFC 3339 time string, got {kind_of(value)}")
        try:
            return time_ms(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from exc

    def req_time(self, key: str) -> int:
        value = self.opt_time(key)
        if value is None:
            raise self.error(key, "required, an RFC 3339 time with a UTC offset")
        return value

    # -- nesting

    def opt_obj(self, key: str) -> Obj | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be an object, got {kind_of(value)}")
        return Obj(value, self.provider, f"{self.path}{key}.")

    def obj(self, key: str) -> Obj:
        found = self.opt_obj(key)
        if found is None:
            raise self.error(key, "required, an object")
        return found

    def opt_objs(self, key: str) -> list[Obj]:
        """The objects of the array at ``key`` (empty when absent or null)."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be an array, got {kind_of(value)}")
        out = []
        for n, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self.error(f"{key}[{n}]", f"must be an object, got {kind_of(item)}")
            out.append(Obj(item, self.provider, f"{self.path}{key}[{n}]."))
        return out

    def objs(self, key: str) -> list[Obj]:
        if not isinstance(self.data.get(key), list):
            raise self.error(key, "required, an array of objects")
        return self.opt_objs(key)

    def str_map(self, key: str) -> dict[str, str]:
        """The object at ``key`` as text → text (empty when absent); see :func:`text_of`."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be an object, got {kind_of(value)}")
        return {str(k): text_of(v) for k, v in value.items() if v is not None}


def kind_of(value: object) -> str:
    """How a JSON value is described in error messages ("an array", "a string", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
