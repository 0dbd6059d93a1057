"""The rules file read into plain, normalised values (ADR 0022): every key checked, every
error naming its line. :mod:`tocsin.processors.rules` answers questions from the result."""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tocsin.processors.family import escape
from tocsin.processors.rules_syntax import (
    Glob,
    LineIndex,
    RulesError,
    Section,
    compile_glob,
    format_duration,
    globs_intersect,
    number_text,
    parse_duration,
    show,
)
from tocsin.processors.toml_text import TooDeep, read_toml

RULES_VERSION = 1
MAX_ENTRIES = 1_000  # [[override]], [[error_rate]] or [[latency]] tables in one file
DEFAULT_MIN_REQUESTS = 20
DEFAULT_QUANTILE = 0.95
DEFAULT_PERSISTENT_AFTER_MS = 600_000
DEFAULT_REASONS = ("CrashLoopBackOff",)
_T = TypeVar("_T")


# ---------------------------------------------------------------------- the parsed rules


@dataclass(frozen=True, slots=True)
class Override:
    """One ``[[override]]``: a selector and the settings it sets (normalised names:
    ``window_ms``, ``min_rate_per_min``, ``correlation_window_ms``, ...)."""

    index: int  # 1-based, in file order: "override #2"
    line: int = field(compare=False)
    service: str | None
    env: str | None
    family: Glob | None
    settings: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"override #{self.index} (line {self.line})"

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Specificity, then file order: the larger rank wins (ADR 0022)."""
        return (self.family.literal if self.family else 0, self.service is not None,
                self.env is not None, self.index)

    def matches(self, env: str, service: str, family: str) -> bool:
        return ((self.service is None or self.service == service)
                and (self.env is None or self.env == env)
                and (self.family is None or self.family.matches(family)))

    def canonical(self) -> dict[str, Any]:
        return {"service": self.service, "env": self.env,
                "family": self.family.text if self.family else None,
                "set": dict(self.settings)}


@dataclass(frozen=True, slots=True)
class StepRule:
    """What an ``[[error_rate]]`` and a ``[[latency]]`` rule have in common."""

    index: int
    line: int = field(compare=False)
    service: str
    step: Glob | None  # None: every step of the service
    env: str | None
    min_requests: int
    window_ms: int | None  # None: the detector's window for the rule's family

    @property
    def rank(self) -> tuple[int, int, int]:
        return (self.step.literal if self.step else 0, self.env is not None, self.index)

    def matches(self, env: str, service: str, step: str) -> bool:
        return (self.service == service and (self.env is None or self.env == env)
                and (self.step is None or self.step.matches(step)))

    def canonical(self) -> dict[str, Any]:
        return {"service": self.service, "step": self.step.text if self.step else None,
                "env": self.env, "min_requests": self.min_requests,
                "window_ms": self.window_ms}


@dataclass(frozen=True, slots=True)
class ErrorRateRule(StepRule):
    """Open ``service:step:ERROR_RATE`` when failing / all requests of the step over the
    window is at least ``threshold``, with at least ``min_requests`` requests in it."""

    threshold: float = 0.0

    def canonical(self) -> dict[str, Any]:
        return {**StepRule.canonical(self), "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class LatencyRule(StepRule):
    """Open ``service:step:LATENCY`` when the step's ``quantile`` of duration_ms over the
    window is above ``threshold_ms``, or above its baseline x ``lift`` (either that is
    set), with at least ``min_requests`` requests in the window."""

    threshold_ms: float | None = None
    lift: float | None = None
    quantile: float = DEFAULT_QUANTILE

    def canonical(self) -> dict[str, Any]:
        return {**StepRule.canonical(self), "threshold_ms": self.threshold_ms,
                "lift": self.lift, "quantile": self.quantile}


@dataclass(frozen=True, slots=True)
class RuntimeRule:
    """``[runtime]``: a runtime signal with one of ``reasons`` (a CrashLoopBackOff) still
    firing ``persistent_after_ms`` after it was first seen opens an incident. Off unless
    ``enabled``."""

    enabled: bool = False
    persistent_after_ms: int = DEFAULT_PERSISTENT_AFTER_MS
    reasons: tuple[str, ...] = DEFAULT_REASONS

    def canonical(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False}  # what a disabled rule would do is no part of it
        return {"enabled": True, "persistent_after_ms": self.persistent_after_ms,
                "reasons": sorted(self.reasons)}


@dataclass(frozen=True, slots=True)
class Rules:
    """A whole rules file, parsed. ``defaults_line`` (the ``[defaults]`` header) and
    ``from_set`` (keys ``--set`` gave) are for messages, not part of the rules' hash."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()
    error_rate: tuple[ErrorRateRule, ...] = ()
    latency: tuple[LatencyRule, ...] = ()
    runtime: RuntimeRule = field(default_factory=RuntimeRule)
    defaults_line: int | None = field(default=None, compare=False)
    from_set: frozenset[str] = field(default=frozenset(), compare=False)

    def canonical(self) -> dict[str, Any]:
        return {"version": RULES_VERSION, "defaults": dict(self.defaults),
                "override": [o.canonical() for o in self.overrides],
                "error_rate": [r.canonical() for r in self.error_rate],
                "latency": [r.canonical() for r in self.latency],
                "runtime": self.runtime.canonical()}


# ---------------------------------------------------------------------- value checks


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer (got {show(value)})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})")
    return value


def _number(name: str, value: Any, low: float, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number (got {show(value)})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number (got {value!r})")
    if number < low or (low_open and number == low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {number_text(low)} "
                         f"(got {value!r})")
    if high is not None and (number > high or (high_open and number == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {number_text(high)} "
                         f"(got {value!r})")
    return number


def _duration(name: str, value: Any, positive: bool = False) -> int:
    try:
        ms = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if positive and ms == 0:
        raise ValueError(f"{name} must be longer than 0")
    return ms


def _rate(name: str, value: Any) -> float | None:
    if value == "off":
        return None
    try:
        return _number(name, value, 0.0)
    except ValueError:
        raise ValueError(f'{name} must be a number of errors per minute >= 0, or "off" '
                         f"(got {show(value)})") from None


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string (got {show(value)})")
    return value


# The settings [defaults] and [[override]] may set: file key -> (normalised key, check).
# The normalised key is DetectorConfig's field, or TriageConfig's correlation_window_ms.
SETTINGS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "min_count": ("min_count", lambda k, v: _integer(k, v, 1)),
    "min_lift": ("min_lift", lambda k, v: _number(k, v, 1.0)),
    "min_rate": ("min_rate_per_min", _rate),
    "window": ("window_ms", lambda k, v: _duration(k, v, positive=True)),
    "baseline_windows": ("baseline_windows", lambda k, v: _integer(k, v, 0)),
    "resolve_after": ("resolve_after_ms", _duration),
    "min_active": ("min_active_ms", _duration),
    "rearm_ratio": ("rearm_ratio", lambda k, v: _number(k, v, 0.0, 1.0, low_open=True)),
    "correlation_window": ("correlation_window_ms", _duration),
}
DETECTOR_KEYS = frozenset(k for k, _ in SETTINGS.values()) - {"correlation_window_ms"}
FILE_KEY = {norm: key for key, (norm, _) in SETTINGS.items()}  # window_ms -> window
SELECTOR = ("service", "env", "family")
TOP = ("version", "defaults", "override", "error_rate", "latency", "runtime")
_STEP_KEYS = ("service", "step", "env", "min_requests", "window")
ERROR_RATE_KEYS = (*_STEP_KEYS, "threshold")
LATENCY_KEYS = (*_STEP_KEYS, "threshold_ms", "lift", "quantile")
RUNTIME_KEYS = ("enabled", "persistent_after", "reasons")


def file_form(norm: str, value: Any) -> str:
    """A normalised setting as the file would write it: ``window = "10m"``."""
    if value is None:
        shown = '"off"'
    elif norm.endswith("_ms"):
        shown = f'"{format_duration(value)}"'
    else:
        shown = repr(value)
    return f"{FILE_KEY[norm]} = {shown}"


def did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def setting(key: str, value: Any) -> tuple[str, Any]:
    """One [defaults] or [[override]] setting checked: (normalised key, value);
    ValueError naming the key when it is not one or its value is wrong."""
    if key not in SETTINGS:
        hint = did_you_mean(key, SETTINGS) or f"; settings are {', '.join(SETTINGS)}"
        raise ValueError(f"unknown setting {key!r}{hint}")
    norm, check = SETTINGS[key]
    return norm, check(key, value)


# ---------------------------------------------------------------------- the document


class _Reader:
    """Walks the parsed document beside the line index; every error gets a line."""

    def __init__(self, index: LineIndex, source: str) -> None:
        self.index = index
        self.source = source

    def fail(self, section: Section, key: str | None, context: str, message: str) -> RulesError:
        prefix = f"{context}: " if context else ""
        return RulesError(prefix + message, section.line_of(key), self.source)

    def entries(self, doc: Mapping[str, Any], name: str) -> list[tuple[Section, Any]]:
        """The ``[[name]]`` tables with their headers; one written otherwise is an error."""
        value = doc.get(name, [])
        headers = self.index.entries(name)
        if isinstance(value, dict):
            raise RulesError(f"[{name}] is written [[{name}]]: any number of them",
                             self.index.top_line(name), self.source)
        if not isinstance(value, list) or len(headers) != len(value) or not all(
                isinstance(v, dict) for v in value):
            raise RulesError(f"write each {name} as its own [[{name}]] table (inline tables "
                             "and arrays are not read)", self.index.top_line(name),
                             self.source)
        if len(value) > MAX_ENTRIES:
            raise RulesError(f"more than {MAX_ENTRIES} [[{name}]] tables",
                             headers[MAX_ENTRIES].line, self.source)
        return list(zip(headers, value, strict=True))

    def table(self, doc: Mapping[str, Any], name: str) -> tuple[Section, dict[str, Any]] | None:
        """The ``[name]`` table with its header, None when absent."""
        if name not in doc:
            return None
        header = self.index.table(name)
        if isinstance(doc[name], list):
            raise RulesError(f"[{name}] is one table, not [[{name}]]",
                             self.index.top_line(name), self.source)
        if not isinstance(doc[name], dict) or header is None or header.array:
            raise RulesError(f"write [{name}] as a table header (an inline table is not "
                             "read)", self.index.top_line(name), self.source)
        return header, doc[name]

    def check(self, section: Section, context: str, key: str, checked: Callable[..., _T],
              *args: Any, **kwargs: Any) -> _T:
        """``checked(*args, **kwargs)``; its ValueError becomes a RulesError at ``key``."""
        try:
            return checked(*args, **kwargs)
        except ValueError as exc:
            raise self.fail(section, key, context, str(exc)) from None

    def unknown(self, section: Section, context: str, table: Mapping[str, Any],
                known: Iterable[str]) -> None:
        known = tuple(known)
        for key in table:
            if key not in known:
                hint = did_you_mean(key, known) or f"; keys here: {', '.join(known)}"
                raise self.fail(section, key, context, f"unknown key {key!r}{hint}")

    def settings(self, section: Section, context: str, table: Mapping[str, Any],
                 skip: Iterable[str] = ()) -> dict[str, Any]:
        skip = tuple(skip)
        self.unknown(section, context, table, (*skip, *SETTINGS))
        found: dict[str, Any] = {}
        for key, value in table.items():
            if key not in skip:
                norm, checked = self.check(section, context, key, setting, key, value)
                found[norm] = checked
        return dict(sorted(found.items()))

    def text(self, section: Section, context: str, table: Mapping[str, Any],
             key: str) -> str | None:
        if key not in table:
            return None
        return self.check(section, context, key, _text, key, table[key])

    def glob(self, section: Section, context: str, table: Mapping[str, Any],
             key: str) -> Glob | None:
        text = self.text(section, context, table, key)
        if text is None:
            return None
        try:
            return compile_glob(text)
        except ValueError as exc:
            raise self.fail(section, key, context, f"{key}: bad pattern {text!r}: {exc}") from None


def parse_document(doc: Mapping[str, Any], index: LineIndex, source: str) -> Rules:
    """The rules of a parsed TOML document; RulesError naming the line of what is wrong."""
    r = _Reader(index, source)
    if index.problems:
        line, message = index.problems[0]
        raise RulesError(message, line, source)
    for key in doc:
        if key not in TOP:
            hint = did_you_mean(key, TOP) or f"; the file has {', '.join(TOP)}"
            raise RulesError(f"unknown key or table {key!r}{hint}", index.top_line(key),
                             source)
    if "version" not in doc:
        raise RulesError(f"version is required: start the file with version = "
                         f"{RULES_VERSION}", 1, source)
    version = doc["version"]
    if type(version) is not int or version != RULES_VERSION:
        raise RulesError(f"this Tocsin reads rules version {RULES_VERSION} (got "
                         f"{show(version)})", index.top_line("version"), source)
    defaults: dict[str, Any] = {}
    defaults_line = None
    if found := r.table(doc, "defaults"):
        defaults = r.settings(found[0], "[defaults]", found[1])
        defaults_line = found[0].line
    return Rules(defaults, _overrides(r, doc), _error_rates(r, doc), _latencies(r, doc),
                 _runtime(r, doc), defaults_line)


def _overrides(r: _Reader, doc: Mapping[str, Any]) -> tuple[Override, ...]:
    found: list[Override] = []
    by_selector: dict[tuple[str | None, str | None, str | None], Override] = {}
    for n, (section, table) in enumerate(r.entries(doc, "override"), 1):
        context = f"override #{n}"
        settings = r.settings(section, context, table, SELECTOR)
        service = r.text(section, context, table, "service")
        env = r.text(section, context, table, "env")
        family = r.glob(section, context, table, "family")
        if service is None and env is None and family is None:
            raise r.fail(section, None, context, "selects every family: give service, env "
                         "or family (settings for everything go in [defaults])")
        if not settings:
            raise r.fail(section, None, context, f"sets nothing: give one of "
                         f"{', '.join(SETTINGS)}")
        if family and service and not globs_intersect(family.text, f"{escape(service)}:*"):
            raise r.fail(section, "family", context, f"family {family.text!r} can never match "
                         f"a family of service {service!r} (those start with "
                         f"{escape(service) + ':'!r})")
        override = Override(n, section.line, service, env, family, settings)
        selector = (service, env, family.text if family else None)
        if (twin := by_selector.get(selector)) is not None:
            raise r.fail(section, None, context, f"same selector as {twin.label}; merge "
                         "the two into one")
        by_selector[selector] = override
        found.append(override)
    return tuple(found)


def _step_fields(r: _Reader, section: Section, context: str,
                 table: Mapping[str, Any]) -> dict[str, Any]:
    if "service" not in table:
        raise r.fail(section, None, context, "service is required")
    min_requests = table.get("min_requests", DEFAULT_MIN_REQUESTS)
    window = table.get("window")
    return {
        "line": section.line,
        "service": r.text(section, context, table, "service"),
        "step": r.glob(section, context, table, "step"),
        "env": r.text(section, context, table, "env"),
        "min_requests": r.check(section, context, "min_requests", _integer, "min_requests",
                                min_requests, 1),
        "window_ms": None if window is None else r.check(
            section, context, "window", _duration, "window", window, positive=True),
    }


def _no_twins(r: _Reader, rules: Iterable[StepRule], name: str,
              sections: list[Section]) -> None:
    seen: dict[tuple[str, str | None, str | None], StepRule] = {}
    for rule in rules:
        selector = (rule.service, rule.env, rule.step.text if rule.step else None)
        if (twin := seen.get(selector)) is not None:
            raise r.fail(sections[rule.index - 1], None, f"{name} #{rule.index}",
                         f"same service, step and env as {name} #{twin.index} (line "
                         f"{twin.line}); merge the two into one")
        seen[selector] = rule


def _error_rates(r: _Reader, doc: Mapping[str, Any]) -> tuple[ErrorRateRule, ...]:
    found = []
    entries = r.entries(doc, "error_rate")
    for n, (section, table) in enumerate(entries, 1):
        context = f"error_rate #{n}"
        r.unknown(section, context, table, ERROR_RATE_KEYS)
        fields = _step_fields(r, section, context, table)
        if "threshold" not in table:
            raise r.fail(section, None, context, "threshold is required: the share of "
                         "failing requests at which it opens, 0 < threshold <= 1")
        threshold = r.check(section, context, "threshold", _number, "threshold",
                            table["threshold"], 0.0, 1.0, low_open=True)
        found.append(ErrorRateRule(n, **fields, threshold=threshold))
    _no_twins(r, found, "error_rate", [s for s, _ in entries])
    return tuple(found)


def _latencies(r: _Reader, doc: Mapping[str, Any]) -> tuple[LatencyRule, ...]:
    found = []
    entries = r.entries(doc, "latency")
    for n, (section, table) in enumerate(entries, 1):
        context = f"latency #{n}"
        r.unknown(section, context, table, LATENCY_KEYS)
        fields = _step_fields(r, section, context, table)
        if "threshold_ms" not in table and "lift" not in table:
            raise r.fail(section, None, context, "give threshold_ms (milliseconds), lift "
                         "(x the baseline), or both")
        threshold_ms = None if "threshold_ms" not in table else r.check(
            section, context, "threshold_ms", _number, "threshold_ms", table["threshold_ms"],
            0.0, low_open=True)
        lift = None if "lift" not in table else r.check(
            section, context, "lift", _number, "lift", table["lift"], 1.0, low_open=True)
        quantile = r.check(section, context, "quantile", _number, "quantile",
                           table.get("quantile", DEFAULT_QUANTILE), 0.0, 1.0, low_open=True,
                           high_open=True)
        found.append(LatencyRule(n, **fields, threshold_ms=threshold_ms, lift=lift,
                                 quantile=quantile))
    _no_twins(r, found, "latency", [s for s, _ in entries])
    return tuple(found)


def _runtime(r: _Reader, doc: Mapping[str, Any]) -> RuntimeRule:
    found = r.table(doc, "runtime")
    if found is None:
        return RuntimeRule()
    section, table = found
    r.unknown(section, "[runtime]", table, RUNTIME_KEYS)
    enabled = table.get("enabled", False)
    if not isinstance(enabled, bool):
        raise r.fail(section, "enabled", "[runtime]",
                     f"enabled must be true or false (got {show(enabled)})")
    after = r.check(section, "[runtime]", "persistent_after", _duration, "persistent_after",
                    table.get("persistent_after", DEFAULT_PERSISTENT_AFTER_MS), positive=True)
    reasons = table.get("reasons", list(DEFAULT_REASONS))
    if not isinstance(reasons, list) or not reasons or not all(
            isinstance(x, str) and x for x in reasons):
        raise r.fail(section, "reasons", "[runtime]", "reasons must be a non-empty array "
                     'of reasons, such as ["CrashLoopBackOff", "OOMKilled"]')
    return RuntimeRule(enabled, after, tuple(sorted(set(reasons))))


# ---------------------------------------------------------------------- --set


SET_KEYS = {**{f"detector.{key}": key for key in SETTINGS if key != "correlation_window"},
            "triage.correlation_window": "correlation_window",
            # the detector settings' own names (TOCSIN_DETECTOR__*) say the same
            "detector.window_ms": "window", "detector.resolve_after_ms": "resolve_after",
            "detector.min_active_ms": "min_active", "detector.min_rate_per_min": "min_rate",
            "triage.correlation_window_ms": "correlation_window"}


def _set_value(text: str) -> Any:
    """A --set value as TOML reads it (4, 2.5, "10m"), or else the text itself (10m, off)."""
    if "\n" not in text:
        try:
            value = read_toml(f"v = {text}")["v"]
        except (tomllib.TOMLDecodeError, TooDeep):
            return text
        if isinstance(value, bool | int | float | str):
            return value
    return text


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["detector.min_lift=4", "detector.window=10m", "triage.correlation_window=20m"]``
    -> ``{"min_lift": 4, "window": "10m", "correlation_window": "20m"}``: [defaults] keys
    and values, each checked (a later item wins over an earlier one of the same key).
    RulesError (source ``--set``, no line) naming the item that is wrong."""
    found: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise RulesError(f"{item!r}: expected KEY=VALUE, such as detector.min_lift=4",
                             None, "--set")
        if name not in SET_KEYS:
            hint = did_you_mean(name, SET_KEYS) or f"; keys are {', '.join(SET_KEYS)}"
            raise RulesError(f"{item!r}: unknown key {name!r}{hint}", None, "--set")
        key = SET_KEYS[name]
        value = _set_value(text.strip())
        try:
            setting(key, value)
        except ValueError as exc:
            raise RulesError(f"{item!r}: {exc}", None, "--set") from None
        found[key] = value
    return found
