"""Rules files (``TOCSIN_RULES=FILE``, ADR 0022): per-service, per-env and per-family
settings for the detector and triage, and the error-rate, latency and runtime rules.

Pure: the text is given (or read by :func:`load_rules_file`), nothing else is read. A
:class:`RuleSet` answers "which settings apply to this (env, service, family)?", most
specific match first, key by key; answers are memoised, so on a hot path each is a dict
lookup after the first. Its :attr:`RuleSet.hash` covers the parsed, normalised rules (not
comments, layout, key order or how a duration is spelled); its :meth:`RuleSet.fingerprint`
joins the detector's in the state table name, so state written under other rules is never
read.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from tocsin.processors.config import DetectorConfig
from tocsin.processors.family import escape
from tocsin.processors.rules_parse import (
    DETECTOR_KEYS,
    FILE_KEY,
    ErrorRateRule,
    LatencyRule,
    Override,
    Rules,
    RuntimeRule,
    StepRule,
    file_form,
    parse_document,
    parse_set,
    setting,
)
from tocsin.processors.rules_syntax import (
    LineIndex,
    RulesError,
    decode,
    globs_intersect,
    parse_duration,
    syntax_error,
)
from tocsin.processors.toml_text import TooDeep, read_toml

__all__ = [
    "EMPTY_HASH",
    "ErrorRateRule",
    "LatencyRule",
    "Override",
    "RuleSet",
    "RulesError",
    "RuntimeRule",
    "canonical_json",
    "load_rules",
    "load_rules_file",
    "parse_duration",
    "parse_set",
]

EMPTY_HASH = "sha256:33cd3d47262f7c08d59c03b4299f6ec27dfa879455608a5092dae0f02811b01a"
"""The hash of no rules: no file, or a file with nothing but ``version = 1``."""

CACHE_MAX = 65_536  # memoised answers per kind; past it the memo starts over (same answers)

_Key = tuple[str, str, str]
_Rule = TypeVar("_Rule", bound=StepRule)


def canonical_json(rules: Rules) -> bytes:
    """The form the hash is taken of: sorted keys, no spaces, durations in ms."""
    return json.dumps(rules.canonical(), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode()


class RuleSet:
    """A rules file, parsed and checked: read-only, with memoised answers."""

    __slots__ = ("_base", "_checked", "_configs", "_detectors", "_error_rate", "_latency",
                 "_layered", "_ranked", "file_sha256", "hash", "rules", "source")

    def __init__(self, rules: Rules, source: str = "<rules>",
                 file_sha256: str | None = None) -> None:
        self.rules = rules
        self.source = source
        self.file_sha256 = file_sha256  # "sha256:..." of the file's bytes, for citing
        self.hash = "sha256:" + hashlib.sha256(canonical_json(rules)).hexdigest()
        self._ranked = tuple(sorted(rules.overrides, key=lambda o: o.rank, reverse=True))
        self._layered: dict[_Key, dict[str, tuple[Any, str]]] = {}
        self._base: DetectorConfig | None = None
        self._detectors: dict[_Key, DetectorConfig] = {}
        self._configs: dict[tuple[tuple[str, Any], ...], DetectorConfig] = {}
        self._checked: DetectorConfig | None = None  # the base check() last passed
        self._error_rate: dict[_Key, ErrorRateRule | None] = {}
        self._latency: dict[_Key, LatencyRule | None] = {}

    @classmethod
    def empty(cls) -> RuleSet:
        """No rules file: every answer is the base settings; the hash is EMPTY_HASH."""
        return cls(Rules(), "<none>")

    def __repr__(self) -> str:
        return f"RuleSet({self.source!r}, {self.hash})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleSet) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    # ------------------------------------------------------------------ what the file says

    @property
    def defaults(self) -> Mapping[str, Any]:
        """[defaults] (with --set), by normalised key: ``window_ms``, ``min_lift``, ..."""
        return self.rules.defaults

    @property
    def overrides(self) -> tuple[Override, ...]:
        return self.rules.overrides

    @property
    def error_rate(self) -> tuple[ErrorRateRule, ...]:
        return self.rules.error_rate

    @property
    def latency(self) -> tuple[LatencyRule, ...]:
        return self.rules.latency

    @property
    def runtime(self) -> RuntimeRule:
        return self.rules.runtime

    @property
    def is_empty(self) -> bool:
        return self.hash == EMPTY_HASH

    def fingerprint(self) -> str:
        """12 hex digits of the hash: what joins the detector's in the state table name."""
        return self.hash.removeprefix("sha256:")[:12]

    # ------------------------------------------------------------------ settings per family

    def explain(self, env: str, service: str, family: str) -> dict[str, tuple[Any, str]]:
        """The settings the rules give a family, by normalised key, each with where it
        comes from: ``override #2 (line 9)``, ``[defaults]`` or ``--set``. Keys the rules
        do not set are absent (the base settings apply)."""
        key = (env, service, family)
        found = self._layered.get(key)
        if found is None:
            if len(self._layered) >= CACHE_MAX:
                self._layered.clear()
            found = self._layered[key] = self._layer(env, service, family)
        return found

    def settings_for(self, env: str, service: str, family: str) -> dict[str, Any]:
        """:meth:`explain` without the origins."""
        return {k: v for k, (v, _) in self.explain(env, service, family).items()}

    def _layer(self, env: str, service: str, family: str) -> dict[str, tuple[Any, str]]:
        found: dict[str, tuple[Any, str]] = {}
        for override in self._ranked:  # most specific first: the first to set a key wins
            if override.matches(env, service, family):
                for k, v in override.settings.items():
                    found.setdefault(k, (v, override.label))
        for k, v in self.rules.defaults.items():
            found.setdefault(k, (v, "--set" if k in self.rules.from_set else "[defaults]"))
        return dict(sorted(found.items()))

    def detector_for(self, env: str, service: str, family: str,
                     base: DetectorConfig) -> DetectorConfig:
        """The detector settings for a family: ``base`` with what the rules set for it.
        ``base`` itself when they set nothing; families given the same settings share one
        object. Memoised per (env, service, family) for the latest ``base``."""
        if base is not self._base:
            self._base, self._detectors, self._configs = base, {}, {}
        key = (env, service, family)
        found = self._detectors.get(key)
        if found is None:
            if len(self._detectors) >= CACHE_MAX:
                self._detectors.clear()
            found = self._detectors[key] = self._config(base, key)
        return found

    def _config(self, base: DetectorConfig, key: _Key) -> DetectorConfig:
        layered = self.explain(*key)
        update = tuple((k, v) for k, (v, _) in layered.items() if k in DETECTOR_KEYS)
        if not update:
            return base
        found = self._configs.get(update)
        if found is None:
            origins = sorted({o for k, (_, o) in layered.items() if k in DETECTOR_KEYS})
            found = self._configs[update] = self._validated(
                base, dict(update), f"for {key[0]} {key[2]} (from {', '.join(origins)})",
                None)
        return found

    def _validated(self, base: DetectorConfig, update: Mapping[str, Any], context: str,
                   line: int | None) -> DetectorConfig:
        try:
            return DetectorConfig.model_validate({**base.model_dump(), **update})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            shown = ", ".join(file_form(k, v) for k, v in update.items() if k in DETECTOR_KEYS)
            raise RulesError(f"{context}: the detector settings ({shown}) are not valid: "
                             f"{where + ': ' if where else ''}{message}", line,
                             self.source) from None

    def correlation_window_ms(self, env: str, service: str, family: str,
                              default: int) -> int:
        """Triage's correlation window for an incident of this family (ADR 0009)."""
        found = self.explain(env, service, family).get("correlation_window_ms")
        return default if found is None else int(found[0])

    # ------------------------------------------------------------------ step rules

    def error_rate_rule_for(self, env: str, service: str, step: str) -> ErrorRateRule | None:
        """The error-rate rule of a step: the most specific that matches, None without."""
        return self._step_rule(self._error_rate, self.rules.error_rate, (env, service, step))

    def latency_rule_for(self, env: str, service: str, step: str) -> LatencyRule | None:
        """The latency rule of a step: the most specific that matches, None without."""
        return self._step_rule(self._latency, self.rules.latency, (env, service, step))

    @staticmethod
    def _step_rule(memo: dict[_Key, _Rule | None], rules: tuple[_Rule, ...],
                   key: _Key) -> _Rule | None:
        if key in memo:
            return memo[key]
        if len(memo) >= CACHE_MAX:
            memo.clear()
        matching = [r for r in rules if r.matches(*key)]
        found = memo[key] = max(matching, key=lambda r: r.rank) if matching else None
        return found

    # ------------------------------------------------------------------ checks and changes

    def check(self, base: DetectorConfig) -> None:
        """RulesError, naming the line, unless every family's detector settings are a
        valid DetectorConfig over ``base`` (a window of whole buckets, the timeline's
        limits), and every step rule's window is whole buckets.

        Checked: [defaults] alone; each override over [defaults]; and each pair of
        overrides that can apply to one family, when one gives the window and the other
        the baseline windows (the only settings DetectorConfig checks together). A
        family's settings are always one of those, so nothing fails later."""
        if base is self._checked:
            return
        given = sorted(FILE_KEY[k] for k in self.rules.from_set)
        self._validated(base, self._detector_defaults(), "[defaults]" + (
            f" (with --set {', '.join(given)})" if given else ""), self.rules.defaults_line)
        for o in self.rules.overrides:
            self._validated(base, {**self._detector_defaults(), **_detector(o.settings)},
                            f"override #{o.index}", o.line)
        pair = ("baseline_windows", "window_ms")
        seen: set[tuple[tuple[str, Any], ...]] = set()  # (window, baseline) combinations
        wb = {o.index: set(pair) & set(o.settings) for o in self._ranked}
        for i, high in enumerate(self._ranked):
            for low in self._ranked[i + 1:]:
                if not (wb[high.index] and wb[low.index] - wb[high.index]):
                    continue  # the two give no window and baseline pair of their own
                combo = tuple((k, (high if k in wb[high.index] else low).settings[k])
                              for k in pair)
                if combo not in seen and _overlap(high, low):
                    seen.add(combo)
                    self._validated(base, {**self._detector_defaults(), **dict(combo)},
                                    f"override #{high.index} with {low.label}, which can "
                                    "apply to the same families", high.line)
        for kind, rules in (("error_rate", self.rules.error_rate),
                            ("latency", self.rules.latency)):
            for rule in rules:
                if rule.window_ms is not None and rule.window_ms % base.bucket_ms:
                    raise RulesError(f"{kind} #{rule.index}: window must be a whole number "
                                     f"of buckets ({base.bucket_ms} ms each)", rule.line,
                                     self.source)
        self._checked = base

    def _detector_defaults(self) -> dict[str, Any]:
        return _detector(self.rules.defaults)

    def with_defaults(self, overrides: Mapping[str, Any],
                      base: DetectorConfig | None = None) -> RuleSet:
        """These rules with more [defaults] on top of the file's: ``{"min_lift": 4,
        "window": "10m"}`` (file keys, as :func:`parse_set` returns them), checked over
        ``base`` when given. Overrides still win over them; the hash of the result
        covers them."""
        update: dict[str, Any] = {}
        for key, value in overrides.items():
            try:
                norm, checked = setting(key, value)
            except ValueError as exc:
                raise RulesError(f"{key}={value!r}: {exc}", None, "--set") from None
            update[norm] = checked
        rules = replace(self.rules, defaults=dict(sorted({**self.rules.defaults,
                                                          **update}.items())),
                        from_set=self.rules.from_set | set(update))
        found = RuleSet(rules, self.source, self.file_sha256)
        if base is not None:
            found.check(base)
        return found


def _detector(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that are DetectorConfig's (not triage's correlation window)."""
    return {k: v for k, v in settings.items() if k in DETECTOR_KEYS}


def _overlap(a: Override, b: Override) -> bool:
    """Whether some (env, service, family) can match both (erring on yes)."""
    if a.service and b.service and a.service != b.service:
        return False
    if a.env and b.env and a.env != b.env:
        return False

    def pattern(o: Override) -> str:
        if o.family is not None:
            return o.family.text
        return f"{escape(o.service)}:*" if o.service else "*"

    return globs_intersect(pattern(a), pattern(b))


def load_rules(text: str, source: str = "<rules>", base: DetectorConfig | None = None,
               file_sha256: str | None = None) -> RuleSet:
    """A rules file's text, parsed and checked (and checked over ``base`` when given);
    RulesError naming the source and line of the first thing wrong."""
    try:
        doc = read_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax_error(exc, text, source) from None
    except TooDeep as exc:
        raise RulesError("values nested too deep to read", exc.line, source) from None
    rules = parse_document(doc, LineIndex(text), source)
    sha = file_sha256 or "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    found = RuleSet(rules, source, sha)
    if base is not None:
        found.check(base)
    return found


def load_rules_file(path: str | Path, base: DetectorConfig | None = None) -> RuleSet:
    """Read a rules file (UTF-8 TOML) and :func:`load_rules` it; RulesError when it cannot
    be read, is not UTF-8, or is not valid rules."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read the rules file: {exc.strerror or exc}", None,
                         str(path)) from None
    text = decode(data, str(path))
    return load_rules(text, str(path), base, "sha256:" + hashlib.sha256(data).hexdigest())

