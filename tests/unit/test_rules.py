"""Rules files (ADR 0022): every kind of error names its line, the matching order (family
pattern, service, env, [defaults], key by key, later wins a tie), the step and runtime
rules, the hash (stable under layout, changed by values), --set, and a property: a
family's settings are a brute-force layering of the overrides that match it."""

from __future__ import annotations

import fnmatch
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.processors.config import DetectorConfig
from tocsin.processors.rules import (
    EMPTY_HASH,
    RulesError,
    RuleSet,
    canonical_json,
    load_rules,
    load_rules_file,
    parse_duration,
    parse_set,
)
from tocsin.processors.rules_syntax import compile_glob, globs_intersect

BASE = DetectorConfig()
ADR = Path(__file__).resolve().parents[2] / "docs" / "adr" / "0022-rules-file.md"


def load(text: str, base: DetectorConfig | None = None) -> RuleSet:
    return load_rules(textwrap.dedent(text), "rules.toml", base)


def error(text: str, base: DetectorConfig | None = None) -> RulesError:
    with pytest.raises(RulesError) as info:
        load(text, base)
    return info.value


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The line (from 1) of the nth line of the dedented text that contains needle."""
    hits = [n for n, line in enumerate(textwrap.dedent(text).split("\n"), 1) if needle in line]
    return hits[nth - 1]


# ---------------------------------------------------------------------- errors name the line

TWO = """\
    version = 1
    [defaults]
    min_lift = 2

    [[override]]
    service = "search"
    min_count = 7

    [[override]]   # the second
    service = "checkout"
    {line}
    """

ERRORS = [
    # (the second override's last line, what the message says)
    ("min_lift = 0.5", "override #2: min_lift must be >= 1 (got 0.5)"),
    ("min_lfit = 2", "override #2: unknown key 'min_lfit' (did you mean 'min_lift'?)"),
    ("window_ms = 600000", "unknown key 'window_ms' (did you mean 'window'?)"),
    ('min_count = "ten"', "min_count must be an integer (got string 'ten')"),
    ("min_count = 2.5", "min_count must be an integer (got float 2.5)"),
    ("min_count = true", "min_count must be an integer (got boolean True)"),
    ("min_count = 0", "min_count must be >= 1 (got 0)"),
    ('min_lift = "3"', "min_lift must be a number (got string '3')"),
    ("min_lift = inf", "min_lift must be a finite number (got inf)"),
    ("rearm_ratio = 0", "rearm_ratio must be > 0 (got 0)"),
    ("rearm_ratio = 1.5", "rearm_ratio must be <= 1 (got 1.5)"),
    ("baseline_windows = -1", "baseline_windows must be >= 0 (got -1)"),
    ('min_rate = "never"', 'min_rate must be a number of errors per minute >= 0, or "off"'),
    ('window = "10 minutes"', "window: a duration is \"500ms\", \"90s\", \"10m\", \"2h\", "
                              "\"1d\" or integer milliseconds (got string '10 minutes')"),
    ('window = "1.5h"', "window: a duration is"),
    ("window = -5", "window: a duration cannot be negative (got -5)"),
    ("window = 1.5", "window: a duration is"),
    ('window = "0m"', "window must be longer than 0"),
    ('resolve_after = "2 m"', "resolve_after: a duration is"),
    ("correlation_window = [1]", "correlation_window: a duration is"),
    ("env = 3", "env must be a non-empty string (got integer 3)"),
    ('env = ""', "env must be a non-empty string (got string '')"),
    ('family = ""', "family must be a non-empty string (got string '')"),
    ('family = "checkout:a\\tb:*"', "family: bad pattern 'checkout:a\\tb:*': a pattern "
                                    "cannot hold control characters"),
    ('family = "search:*"', "family 'search:*' can never match a family of service "
                            "'checkout'"),
    ('colour = "red"', "unknown key 'colour'; keys here: service, env, family, min_count"),
]


@pytest.mark.parametrize(("line", "message"), ERRORS)
def test_an_error_in_an_override_names_its_line(line: str, message: str) -> None:
    text = TWO.format(line=line + "\nmin_active = \"1m\"")
    err = error(text)
    assert err.line == line_of(text, line)
    assert err.source == "rules.toml"
    assert message in str(err)
    assert str(err).startswith(f"rules.toml:{err.line}: ")


def test_the_message_reads_file_line_table_and_what() -> None:
    err = error(TWO.format(line="min_lift = 0.5"))
    assert str(err) == "rules.toml:11: override #2: min_lift must be >= 1 (got 0.5)"
    assert err.line == 11 and err.message == "override #2: min_lift must be >= 1 (got 0.5)"
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(("text", "needle", "message"), [
    ("version = 1\n[defaults]\nmin_lift = = 3\n", "min_lift", "not valid TOML: Invalid value"),
    ('version = 1\n[defaults]\nwindow = "10m\nmin_lift = 3\n', "window", "not valid TOML"),
    ("version = 1\n[defaults]\nmin_lift = 3\n[defaults]\nmin_count = 3\n", "[defaults]",
     "not valid TOML: Cannot declare ('defaults',) twice"),
    ("version = 1\n[defaults]\nmin_lift = 3\nmin_lift = 4\n", "min_lift = 4",
     "not valid TOML"),
])
def test_a_syntax_error_names_tomllibs_line(text: str, needle: str, message: str) -> None:
    err = error(text)
    assert err.line == line_of(text, needle, nth=text.count(needle))
    assert message in err.message and "(column " in err.message
    assert "at line" not in err.message


def test_a_syntax_error_at_the_end_names_the_last_line() -> None:
    err = error('version = 1\n[runtime]\nreasons = ["CrashLoopBackOff",\n')
    assert err.line == 3 and "at the end of the file" in err.message


@pytest.mark.parametrize(("text", "needle", "message"), [
    ("[defaults]\nmin_lift = 3\n", None, "version is required"),
    ("version = 2\n", "version", "this Tocsin reads rules version 1 (got integer 2)"),
    ('version = "1"\n', "version", "rules version 1 (got string '1')"),
    ("version = 1.0\n", "version", "rules version 1 (got float 1.0)"),
    ("version = 1\n\n[[overide]]\nservice = \"a\"\n", "[[overide]]",
     "unknown key or table 'overide' (did you mean 'override'?)"),
    ("version = 1\ncolour = 1\n", "colour", "unknown key or table 'colour'; the file has"),
    ("version = 1\n[defaults]\nmin_lift = 3\nwindwo = \"5m\"\n", "windwo",
     "[defaults]: unknown key 'windwo' (did you mean 'window'?)"),
    ("version = 1\ndefaults.min_lift = 3\n", "defaults.", "dotted keys are not used"),
    ("version = 1\n[[override]]\nservice = \"a\"\nmin.lift = 3\n", "min.lift",
     "dotted keys are not used"),
    ("version = 1\n[defaults.extra]\nmin_lift = 3\n", "[defaults.extra]",
     "dotted table names are not used"),
    ('version = 1\noverride = [{ service = "a", min_lift = 2 }]\n', "override =",
     "write each override as its own [[override]] table"),
    ("version = 1\ndefaults = { min_lift = 2 }\n", "defaults =",
     "write [defaults] as a table header"),
    ('version = 1\n[override]\nservice = "a"\nmin_lift = 2\n', "[override]",
     "[override] is written [[override]]"),
    ("version = 1\n[[defaults]]\nmin_lift = 2\n", "[[defaults]]",
     "[defaults] is one table, not [[defaults]]"),
    ("version = 1\n\n[[override]]\nmin_lift = 2\n", "[[override]]",
     "override #1: selects every family: give service, env or family"),
    ('version = 1\n\n[[override]]\nservice = "a"\n', "[[override]]",
     "override #1: sets nothing"),
    ('version = 1\n[[override]]\nservice = "a"\nfamily = "a:pay\\n*"\nmin_lift = 2\n',
     "family", "family: bad pattern 'a:pay\\n*': a pattern cannot hold control characters"),
])
def test_every_file_level_error_names_a_line(text: str, needle: str | None,
                                             message: str) -> None:
    err = error(text)
    assert err.line == (1 if needle is None else line_of(text, needle))
    assert message in err.message


def test_lines_are_found_past_multi_line_arrays_and_strings() -> None:
    text = """\
        version = 1
        [runtime]
        reasons = [
          "CrashLoopBackOff",   # [[override]]
          "OOMKilled",
        ]
        [[override]]
        service = '''a
        [[override]]
        min.lift = 3'''
        min_lift = 0.5
        """
    err = error(text)
    assert (err.line, err.message) == (11, "override #1: min_lift must be >= 1 (got 0.5)")


def test_two_overrides_with_one_selector_are_an_error_naming_both_lines() -> None:
    text = """\
        version = 1
        [[override]]
        service = "checkout"
        env = "prod"
        min_count = 3

        [[override]]
        service = "search"
        min_count = 4

        [[override]]
        env = "prod"
        service = "checkout"
        family = "**"
        min_lift = 4
        """
    err = error(text)
    assert err.line == line_of(text, "[[override]]", 3)
    assert err.message == ("override #3: same selector as override #1 (line 2); merge the "
                           "two into one")


@pytest.mark.parametrize(("kind", "lines", "needle", "message"), [
    ("error_rate", ['step = "a"', "threshold = 0.1"], "[[error_rate]]", "service is required"),
    ("error_rate", ['service = "a"'], "[[error_rate]]", "threshold is required"),
    ("error_rate", ['service = "a"', "threshold = 1.5"], "threshold",
     "threshold must be <= 1 (got 1.5)"),
    ("error_rate", ['service = "a"', "threshold = 0"], "threshold", "threshold must be > 0"),
    ("error_rate", ['service = "a"', "threshold = 0.1", "min_requests = 0"], "min_requests",
     "min_requests must be >= 1 (got 0)"),
    ("error_rate", ['service = "a"', "threshold = 0.1", 'window = "5 m"'], "window",
     "window: a duration is"),
    ("error_rate", ['service = "a"', "treshold = 0.1"], "treshold",
     "unknown key 'treshold' (did you mean 'threshold'?)"),
    ("latency", ['service = "a"', "min_requests = 5"], "[[latency]]",
     "give threshold_ms (milliseconds), lift (x the baseline), or both"),
    ("latency", ['service = "a"', "lift = 1.0"], "lift", "lift must be > 1 (got 1.0)"),
    ("latency", ['service = "a"', "threshold_ms = 0"], "threshold_ms",
     "threshold_ms must be > 0"),
    ("latency", ['service = "a"', "lift = 2", "quantile = 1.0"], "quantile",
     "quantile must be < 1 (got 1.0)"),
    ("latency", ['service = "a"', "lift = 2", "p95_ms = 800"], "p95_ms",
     "unknown key 'p95_ms'"),
])
def test_a_step_rule_error_names_its_line(kind: str, lines: list[str], needle: str,
                                          message: str) -> None:
    first = ['service = "b"', "threshold = 0.1" if kind == "error_rate" else "lift = 2"]
    text = "\n".join(["version = 1", "", f"[[{kind}]]", *first, "", f"[[{kind}]]", *lines, ""])
    err = error(text)
    second = text.split("\n")[6:]
    assert err.line == 7 + next(n for n, line in enumerate(second) if needle in line)
    assert f"{kind} #2: " in err.message and message in err.message


def test_two_step_rules_for_one_step_are_an_error_naming_both_lines() -> None:
    text = ('version = 1\n[[latency]]\nservice = "a"\nstep = "GET /"\nlift = 2\n'
            '[[latency]]\nservice = "a"\nstep = "GET /"\nthreshold_ms = 900\n')
    err = error(text)
    assert err.line == 6
    assert err.message == ("latency #2: same service, step and env as latency #1 (line 2); "
                           "merge the two into one")


@pytest.mark.parametrize(("lines", "needle", "message"), [
    (['enabled = "yes"'], "enabled", "enabled must be true or false (got string 'yes')"),
    (["enabled = true", "reasons = []"], "reasons", "reasons must be a non-empty array"),
    (["enabled = true", 'reasons = ["", "x"]'], "reasons", "reasons must be a non-empty"),
    (["enabled = true", 'persistant_after = "5m"'], "persistant_after",
     "unknown key 'persistant_after' (did you mean 'persistent_after'?)"),
    (["enabled = true", "persistent_after = 0"], "persistent_after",
     "persistent_after must be longer than 0"),
])
def test_a_runtime_error_names_its_line(lines: list[str], needle: str, message: str) -> None:
    text = "\n".join(["version = 1", "[runtime]", *lines, ""])
    err = error(text)
    assert err.line == line_of(text, needle)
    assert err.message.startswith("[runtime]: ") and message in err.message


def test_an_override_that_makes_an_invalid_detector_config_names_its_line() -> None:
    text = ('version = 1\n\n[[override]]\nservice = "a"\nmin_lift = 4\n\n'
            '[[override]]\nservice = "b"\nwindow = "45s"\n')
    load(text)  # without the base, nothing to check it against
    err = error(text, BASE)
    assert err.line == 7
    assert err.message == ('override #2: the detector settings (window = "45s") are not '
                           "valid: window_ms must be a whole number of bucket_ms")


def test_defaults_that_make_an_invalid_detector_config_name_the_defaults_line() -> None:
    err = error("version = 1\n\n[defaults]\nwindow = 45000\n", BASE)
    assert err.line == 3 and err.message.startswith("[defaults]: the detector settings")


def test_two_overrides_that_together_break_the_timeline_limits_are_caught() -> None:
    # 20 min (40 buckets) x (3 + 1) fits the 180 points after resolution, and 10 min x
    # (4 + 1) does, but 20 min x (4 + 1) = 200 does not.
    text = """\
        version = 1
        [[override]]
        service = "a"
        window = "20m"

        [[override]]
        env = "prod"
        baseline_windows = 4
        """
    err = error(text, BASE)
    assert err.line == 2  # the more specific one, naming the other
    assert err.message.startswith("override #1 with override #2 (line 6), which can apply "
                                  "to the same families: the detector settings "
                                  '(baseline_windows = 4, window = "20m") are not valid: '
                                  "timeline_max_points must keep")
    apart = text.replace('env = "prod"', 'service = "b"')
    assert load(apart, BASE).detector_for("x", "b", "b:s:E", BASE).baseline_windows == 4
    patterns = text.replace('env = "prod"', 'family = "b:*"')
    load(patterns, BASE)  # "a" and "b:*" never meet
    shadowed = text.replace('window = "20m"', 'window = "20m"\nbaseline_windows = 3')
    load(shadowed, BASE)  # the more specific one sets both: #2's value never joins "20m"


def test_a_step_rule_window_must_be_whole_buckets_given_the_base() -> None:
    text = 'version = 1\n[[error_rate]]\nservice = "a"\nthreshold = 0.1\nwindow = "45s"\n'
    assert load(text).error_rate[0].window_ms == 45_000
    err = error(text, BASE)
    assert err.line == 2 and "error_rate #1: window must be a whole number of buckets" in str(err)


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b'version = 1\n[[override]]\nservice = "caf\xe9"\nmin_lift = 2\n')
    with pytest.raises(RulesError) as info:
        load_rules_file(path)
    assert info.value.line == 3 and info.value.source == str(path)
    assert "not UTF-8: byte 0xe9" in str(info.value)


def test_a_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as info:
        load_rules_file(tmp_path / "nope.toml")
    assert info.value.line is None and "cannot read the rules file" in str(info.value)


def test_a_file_is_read_as_utf8_and_its_bytes_are_hashed(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    data = '\ufeffversion = 1\n[[override]]\nservice = "café"\nmin_lift = 2\n'.encode()
    path.write_bytes(data)
    rules = load_rules_file(path, BASE)
    assert rules.source == str(path) and rules.overrides[0].service == "café"
    assert rules.file_sha256 != load_rules(data.decode("utf-8-sig")).file_sha256
    assert rules.hash == load_rules(data.decode("utf-8-sig")).hash


# ---------------------------------------------------------------------- matching order

LAYERS = """\
    version = 1
    [defaults]
    min_lift = 2
    correlation_window = "20m"

    [[override]]
    family = "checkout:POST /pay:*"
    min_lift = 5

    [[override]]
    service = "checkout"
    min_lift = 4
    min_count = 9

    [[override]]
    env = "prod"
    min_lift = 3
    resolve_after = "5m"
    """


@pytest.mark.parametrize(("env", "service", "family", "expected"), [
    ("prod", "checkout", "checkout:POST /pay:TIMEOUT",
     {"min_lift": 5.0, "min_count": 9, "resolve_after_ms": 300_000}),
    ("prod", "checkout", "checkout:GET /cart:ERROR",
     {"min_lift": 4.0, "min_count": 9, "resolve_after_ms": 300_000}),
    ("prod", "search", "search:query:ERROR", {"min_lift": 3.0, "resolve_after_ms": 300_000}),
    ("staging", "search", "search:query:ERROR", {"min_lift": 2.0}),
    ("staging", "checkout", "checkout:POST /pay:E", {"min_lift": 5.0, "min_count": 9}),
])
def test_a_family_pattern_beats_a_service_beats_an_env_beats_defaults_key_by_key(
        env: str, service: str, family: str, expected: dict[str, Any]) -> None:
    rules = load(LAYERS, BASE)
    got = rules.detector_for(env, service, family, BASE)
    want = BASE.model_copy(update=expected)
    assert got == want
    assert rules.settings_for(env, service, family) == {**expected,
                                                        "correlation_window_ms": 1_200_000}
    assert rules.correlation_window_ms(env, service, family, 1) == 1_200_000


def test_explain_names_where_each_value_came_from() -> None:
    rules = load(LAYERS).with_defaults({"min_lift": 7, "min_active": "1m"})
    assert rules.explain("prod", "checkout", "checkout:GET /:E") == {
        "correlation_window_ms": (1_200_000, "[defaults]"),
        "min_active_ms": (60_000, "--set"),
        "min_count": (9, "override #2 (line 10)"),
        "min_lift": (4.0, "override #2 (line 10)"),
        "resolve_after_ms": (300_000, "override #3 (line 15)"),
    }
    assert rules.explain("dev", "search", "search:q:E")["min_lift"] == (7.0, "--set")


def test_any_family_pattern_with_a_literal_beats_service_and_env() -> None:
    text = """\
        version = 1
        [[override]]
        service = "checkout"
        env = "prod"
        min_count = 3
        [[override]]
        family = "*:TIMEOUT"
        min_count = 8
        [[override]]
        family = "*"
        env = "prod"
        min_count = 5
        """
    rules = load(text)
    assert rules.settings_for("prod", "checkout", "checkout:pay:TIMEOUT")["min_count"] == 8
    assert rules.settings_for("prod", "checkout", "checkout:pay:ERROR")["min_count"] == 3
    assert rules.settings_for("prod", "search", "search:q:ERROR")["min_count"] == 5
    assert rules.overrides[2].family is None and rules.overrides[2].rank == (0, 0, 1, 3)


def test_the_more_literal_pattern_wins() -> None:
    text = """\
        version = 1
        [[override]]
        family = "checkout:POST /pay:*"
        min_count = 19
        [[override]]
        family = "checkout:*"
        service = "checkout"
        env = "prod"
        min_count = 9
        """
    rules = load(text)
    assert rules.settings_for("prod", "checkout", "checkout:POST /pay:E")["min_count"] == 19
    assert rules.settings_for("prod", "checkout", "checkout:GET /:E")["min_count"] == 9
    assert [o.rank for o in rules.overrides] == [(19, 0, 0, 1), (9, 1, 1, 2)]


def test_a_tie_goes_to_the_override_later_in_the_file() -> None:
    first = '[[override]]\nfamily = "a:x*"\nmin_count = 1\nmin_lift = 6\n'
    second = '[[override]]\nfamily = "a:*y"\nmin_count = 2\n'
    forward = load_rules(f"version = 1\n{first}{second}")
    backward = load_rules(f"version = 1\n{second}{first}")
    # Both have 3 literal characters and no service or env: equally specific.
    assert forward.settings_for("p", "a", "a:xy") == {"min_count": 2, "min_lift": 6.0}
    assert backward.settings_for("p", "a", "a:xy") == {"min_count": 1, "min_lift": 6.0}
    assert forward.settings_for("p", "a", "a:xz") == {"min_count": 1, "min_lift": 6.0}
    assert forward.hash != backward.hash  # the order is part of what the rules say


def test_patterns_match_the_escaped_family_key_and_brackets_are_literal() -> None:
    text = """\
        version = 1
        [[override]]
        service = "pay:v2"
        family = 'pay\\:v2:GET /items/[id]:*'
        min_count = 4
        [[override]]
        family = "*:ERR?"
        min_count = 6
        """
    rules = load(text)
    assert rules.settings_for("p", "pay:v2", "pay\\:v2:GET /items/[id]:E") == {"min_count": 4}
    assert rules.settings_for("p", "pay:v2", "pay\\:v2:GET /items/i:E") == {}
    assert rules.settings_for("p", "s", "s:a:ERR1") == {"min_count": 6}
    assert rules.settings_for("p", "s", "s:a:ERR12") == {}


def test_detector_for_is_the_base_when_nothing_applies_and_is_memoised() -> None:
    rules = load(textwrap.dedent(LAYERS).replace("min_lift = 2\n", ""))
    assert RuleSet.empty().detector_for("prod", "a", "a:b:C", BASE) is BASE
    assert rules.detector_for("staging", "search", "search:q:E", BASE) is BASE
    one = rules.detector_for("prod", "search", "search:q:E", BASE)
    assert rules.detector_for("prod", "search", "search:q:E", BASE) is one
    assert rules.detector_for("prod", "other", "other:x:E", BASE) is one  # same settings
    assert one.min_lift == 3.0 and one.fingerprint() != BASE.fingerprint()
    other = DetectorConfig(min_count=2)
    again = rules.detector_for("prod", "search", "search:q:E", other)
    assert again.min_count == 2 and again.min_lift == 3.0  # the new base's memo
    assert rules.correlation_window_ms("prod", "x", "x:y:Z", 123) == 1_200_000
    assert RuleSet.empty().correlation_window_ms("prod", "x", "x:y:Z", 123) == 123


# ---------------------------------------------------------------------- step and runtime rules

STEP_RULES = """\
    version = 1
    [[error_rate]]
    service = "checkout"
    threshold = 0.2

    [[error_rate]]
    service = "checkout"
    step = "POST /*"
    threshold = 0.1
    min_requests = 50
    window = "5m"

    [[error_rate]]
    service = "checkout"
    step = "POST /*"
    env = "prod"
    threshold = 0.05

    [[latency]]
    service = "checkout"
    step = "GET /cart"
    threshold_ms = 800
    lift = 2

    [[latency]]
    service = "checkout"
    step = "GET /cart"
    env = "staging"
    lift = 3
    quantile = 0.99
    """


def test_an_error_rate_rule_is_the_most_specific_that_matches() -> None:
    rules = load(STEP_RULES, BASE)
    prod = rules.error_rate_rule_for("prod", "checkout", "POST /pay")
    assert prod is not None and (prod.index, prod.threshold, prod.line) == (3, 0.05, 13)
    staging = rules.error_rate_rule_for("staging", "checkout", "POST /pay")
    assert staging is not None and staging.index == 2
    assert (staging.min_requests, staging.window_ms) == (50, 300_000)
    anything = rules.error_rate_rule_for("prod", "checkout", "GET /cart")
    assert anything is not None and anything.index == 1 and anything.step is None
    assert (anything.min_requests, anything.window_ms) == (20, None)
    assert rules.error_rate_rule_for("prod", "search", "POST /pay") is None
    assert rules.error_rate_rule_for("prod", "checkout", "POST /pay") is prod  # memoised


def test_a_latency_rule_keeps_its_thresholds_and_defaults() -> None:
    rules = load(STEP_RULES, BASE)
    prod = rules.latency_rule_for("prod", "checkout", "GET /cart")
    assert prod is not None
    assert (prod.threshold_ms, prod.lift, prod.quantile, prod.min_requests) == (
        800.0, 2.0, 0.95, 20)
    staging = rules.latency_rule_for("staging", "checkout", "GET /cart")
    assert staging is not None
    assert (staging.threshold_ms, staging.lift, staging.quantile) == (None, 3.0, 0.99)
    assert rules.latency_rule_for("prod", "checkout", "GET /cart/") is None
    assert RuleSet.empty().latency_rule_for("prod", "checkout", "GET /cart") is None


def test_step_rules_tie_to_the_later_one() -> None:
    text = ('version = 1\n[[error_rate]]\nservice = "a"\nstep = "x*"\nthreshold = 0.1\n'
            '[[error_rate]]\nservice = "a"\nstep = "*y"\nthreshold = 0.2\n')
    found = load_rules(text).error_rate_rule_for("p", "a", "xy")
    assert found is not None and found.threshold == 0.2


def test_the_runtime_rule_is_off_by_default() -> None:
    assert not RuleSet.empty().runtime.enabled
    off = load("version = 1\n")
    assert not off.runtime.enabled and off.runtime.persistent_after_ms == 600_000
    assert off.runtime.reasons == ("CrashLoopBackOff",)
    on = load('version = 1\n[runtime]\nenabled = true\npersistent_after = "15m"\n'
              'reasons = ["OOMKilled", "CrashLoopBackOff", "OOMKilled"]\n')
    assert on.runtime.enabled and on.runtime.persistent_after_ms == 900_000
    assert on.runtime.reasons == ("CrashLoopBackOff", "OOMKilled")
    disabled = load('version = 1\n[runtime]\nenabled = false\npersistent_after = "15m"\n')
    assert disabled.hash == off.hash == EMPTY_HASH  # what a disabled rule would do is moot


# ---------------------------------------------------------------------- the hash

HASHED = """\
    version = 1
    [defaults]
    min_lift = 3
    correlation_window = "15m"

    [[override]]
    service = "checkout"
    family = "checkout:POST /pay:*"
    window = "10m"
    min_rate = "off"

    [[latency]]
    service = "checkout"
    lift = 2
    """

SAME = """\
    # the same rules, written otherwise
    version = 1

    [[latency]]
    lift = 2.0          # x the baseline
    service = "checkout"

    [defaults]
    correlation_window = 900000
    min_lift = 3.0

    [[override]]
    family = "checkout:POST /pay:**"
    window = "600s"
    min_rate = "off"
    service = "checkout"
    """


def test_the_hash_ignores_comments_layout_key_order_and_how_a_duration_is_spelled() -> None:
    one, two = load(HASHED), load(SAME)
    assert one.hash == two.hash and one.fingerprint() == two.fingerprint()
    assert one.file_sha256 != two.file_sha256
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", one.hash)
    assert re.fullmatch(r"[0-9a-f]{12}", one.fingerprint())
    assert one.hash.startswith("sha256:" + one.fingerprint()) and one == two


@pytest.mark.parametrize(("old", "new"), [
    ("min_lift = 3", "min_lift = 3.5"),
    ('correlation_window = "15m"', 'correlation_window = "16m"'),
    ('window = "10m"', 'window = "20m"'),
    ('min_rate = "off"', "min_rate = 0"),
    ('family = "checkout:POST /pay:*"', 'family = "checkout:POST /pay:E*"'),
    ("lift = 2", "lift = 2\nquantile = 0.99"),
    ("version = 1", "version = 1\n[runtime]\nenabled = true"),
])
def test_the_hash_changes_when_a_value_does(old: str, new: str) -> None:
    changed = textwrap.dedent(HASHED).replace(old, new)
    assert changed != textwrap.dedent(HASHED)
    assert load(changed).hash != load(HASHED).hash


def test_no_rules_have_the_documented_hash() -> None:
    empty = RuleSet.empty()
    assert empty.hash == EMPTY_HASH == load("# nothing yet\nversion = 1\n").hash
    assert EMPTY_HASH == ("sha256:33cd3d47262f7c08d59c03b4299f6ec27dfa879455608a5092dae0f0"
                          "2811b01a")
    assert canonical_json(empty.rules) == (b'{"defaults":{},"error_rate":[],"latency":[],'
                                           b'"override":[],"runtime":{"enabled":false},'
                                           b'"version":1}')
    assert empty.is_empty and not load(HASHED).is_empty
    assert empty.file_sha256 is None and empty.fingerprint() == "33cd3d47262f"
    assert EMPTY_HASH in ADR.read_text()


# ---------------------------------------------------------------------- --set


def test_parse_set_reads_detector_and_triage_keys() -> None:
    assert parse_set(["detector.min_lift=4", "detector.window=10m", " detector.min_rate = off",
                      "triage.correlation_window=20m", 'detector.resolve_after="90s"',
                      "detector.rearm_ratio=0.25", "detector.min_lift=4.5"]) == {
        "min_lift": 4.5, "window": "10m", "min_rate": "off", "correlation_window": "20m",
        "resolve_after": "90s", "rearm_ratio": 0.25}
    assert parse_set([]) == {}


@pytest.mark.parametrize(("item", "message"), [
    ("detector.min_lift", "'detector.min_lift': expected KEY=VALUE"),
    ("detector.min_lfit=4", "unknown key 'detector.min_lfit' (did you mean "
                            "'detector.min_lift'?)"),
    ("min_lift=4", "(did you mean 'detector.min_lift'?)"),
    ("triage.max_signals=4", "unknown key 'triage.max_signals'"),
    ("detector.min_lift=0.5", "'detector.min_lift=0.5': min_lift must be >= 1 (got 0.5)"),
    ("detector.window=10 minutes", "window: a duration is"),
    ("detector.min_count=many", "min_count must be an integer (got string 'many')"),
])
def test_a_bad_set_item_is_named(item: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_set(["detector.min_count=3", item])
    assert info.value.line is None and info.value.source == "--set"
    assert message in str(info.value) and str(info.value).startswith("--set: ")


def test_with_defaults_goes_on_top_of_the_files_defaults_under_the_overrides() -> None:
    rules = load(LAYERS)
    what_if = rules.with_defaults(parse_set(["detector.min_lift=6", "detector.min_count=2",
                                             "triage.correlation_window=1h"]))
    assert what_if.settings_for("staging", "search", "search:q:E") == {
        "min_lift": 6.0, "min_count": 2, "correlation_window_ms": 3_600_000}
    assert what_if.settings_for("prod", "checkout", "checkout:POST /pay:E")["min_lift"] == 5.0
    assert what_if.hash != rules.hash and rules.defaults["min_lift"] == 2.0
    assert rules.with_defaults({"min_lift": 2}).hash == rules.hash  # nothing changed
    assert rules.with_defaults({}).hash == rules.hash


def test_with_defaults_checks_its_values_and_the_base() -> None:
    with pytest.raises(RulesError) as info:
        RuleSet.empty().with_defaults({"min_lfit": 4})
    assert "did you mean 'min_lift'?" in str(info.value) and info.value.line is None
    with pytest.raises(RulesError) as info:
        RuleSet.empty().with_defaults({"window": "45s"}, BASE)
    assert info.value.message.startswith("[defaults] (with --set window): the detector")
    assert RuleSet.empty().with_defaults({"window": "45s"}).defaults == {"window_ms": 45_000}


# ---------------------------------------------------------------------- durations and globs


@pytest.mark.parametrize(("value", "ms"), [
    ("500ms", 500), ("90s", 90_000), ("10m", 600_000), ("2h", 7_200_000),
    ("1d", 86_400_000), ("0s", 0), (0, 0), (600_000, 600_000),
])
def test_a_duration_is_a_number_and_a_unit_or_milliseconds(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize("value", ["10", "10 m", "1.5h", "10M", "1w", "-5s", "", "m", -1,
                                   1.5, True, None, "\u0661\u0660m"])
def test_anything_else_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(("p", "q", "meet"), [
    ("a:*", "*:E", True), ("a:*", "b:*", False), ("a:?:E", "a:xy:*", False),
    ("a:??:E", "a:xy:*", True), ("*", "anything", True), ("a*b", "a*c", False),
    ("a*b*", "*c*a", True), ("abc", "abc", True), ("abc", "abd", False),
])
def test_two_patterns_meet_when_some_key_matches_both(p: str, q: str, meet: bool) -> None:
    assert globs_intersect(p, q) is meet and globs_intersect(q, p) is meet


def test_a_glob_counts_its_literal_characters() -> None:
    glob = compile_glob("checkout:POST /pay:**")
    assert glob is not None and glob.text == "checkout:POST /pay:*" and glob.literal == 19
    assert compile_glob("***") is None


# ---------------------------------------------------------------------- the ADR's example


def test_the_adrs_example_loads_and_gives_the_documented_settings() -> None:
    text = re.search(r"```toml\n(.*?)```", ADR.read_text(), re.S)
    assert text is not None
    rules = load_rules(text.group(1), "adr.toml", BASE)
    assert rules.explain("prod", "checkout", "checkout:POST /pay:TIMEOUT") == {
        "min_count": (10, "override #2 (line 11)"),
        "min_lift": (5.0, "override #2 (line 11)"),
        "window_ms": (600_000, "override #2 (line 11)"),
        "resolve_after_ms": (120_000, "override #2 (line 11)"),
        "min_active_ms": (600_000, "override #3 (line 20)"),
        "rearm_ratio": (0.3, "override #3 (line 20)"),
        "correlation_window_ms": (900_000, "[defaults]"),
    }
    assert rules.settings_for("prod", "checkout", "checkout:GET /cart:ERROR") == {
        "min_count": 3, "min_lift": 3.0, "correlation_window_ms": 900_000}
    staging = rules.detector_for("staging", "search", "search:q:E", BASE)
    assert staging.min_rate_per_min is None and staging.min_lift == 3.0
    assert rules.correlation_window_ms("staging", "search", "search:q:E", 0) == 1_800_000
    assert rules.runtime.enabled and rules.runtime.reasons == ("CrashLoopBackOff", "OOMKilled")


# ---------------------------------------------------------------------- property

SERVICES = ("a", "b")
PATTERNS = (None, "*", "a:*", "a:s1:*", "*:E1", "a:s?:E1", "b:*", "*:s1:*", "a:s1:E1")
FAMILIES = ("a:s1:E1", "a:s2:E1", "a:s1:E2", "b:s1:E1", "b:s2:E2")


def _valid(o: dict[str, Any]) -> bool:
    pattern = o.get("family")
    has_selector = bool({"service", "env"} & set(o)) or pattern not in (None, "*")
    return has_selector and not (pattern and "service" in o
                                 and not fnmatch.fnmatchcase(o["service"] + ":s1:E1", pattern)
                                 and not fnmatch.fnmatchcase(o["service"] + ":s2:E2", pattern))


OVERRIDE = st.fixed_dictionaries({}, optional={
    "service": st.sampled_from(SERVICES),
    "env": st.sampled_from(("prod", "staging")),
    "family": st.sampled_from(PATTERNS[1:]),
}).flatmap(lambda sel: st.fixed_dictionaries({**{k: st.just(v) for k, v in sel.items()},
                                              "min_count": st.integers(1, 30)}, optional={
    "min_lift": st.integers(1, 9).map(float),
    "correlation_window": st.integers(0, 10).map(lambda m: f"{m}m"),
})).filter(_valid)


def _selector(o: dict[str, Any]) -> tuple[Any, ...]:
    return (o.get("service"), o.get("env"), None if o.get("family") == "*" else o.get("family"))


def _toml(defaults: dict[str, Any], overrides: list[dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        return f'"{v}"' if isinstance(v, str) else repr(v)

    out = ["version = 1", "[defaults]", *(f"{k} = {value(v)}" for k, v in defaults.items())]
    for o in overrides:
        out += ["", "[[override]]", *(f"{k} = {value(v)}" for k, v in o.items())]
    return "\n".join(out) + "\n"


NORMAL = {"min_count": "min_count", "min_lift": "min_lift",
          "correlation_window": "correlation_window_ms"}


def _brute(defaults: dict[str, Any], overrides: list[dict[str, Any]], env: str, service: str,
           family: str) -> dict[str, Any]:
    """Layer the matching overrides from the least specific up, by the ADR's rank."""
    def matches(o: dict[str, Any]) -> bool:
        return (o.get("service", service) == service and o.get("env", env) == env
                and fnmatch.fnmatchcase(family, o.get("family", "*")))

    def rank(n_o: tuple[int, dict[str, Any]]) -> tuple[int, bool, bool, int]:
        n, o = n_o
        literal = sum(ch not in "*?" for ch in o.get("family", ""))
        return (literal, "service" in o, "env" in o, n)

    out = dict(defaults)
    for _, o in sorted(((n, o) for n, o in enumerate(overrides, 1) if matches(o)), key=rank):
        out.update({k: v for k, v in o.items() if k in NORMAL})
    return {NORMAL[k]: int(v[:-1]) * 60_000 if k == "correlation_window" else v
            for k, v in out.items()}


@settings(max_examples=150, deadline=None)
@given(defaults=st.fixed_dictionaries({}, optional={"min_lift": st.integers(1, 9).map(float),
                                                    "min_count": st.integers(1, 30)}),
       overrides=st.lists(OVERRIDE, max_size=7, unique_by=_selector),
       queries=st.lists(st.tuples(st.sampled_from(("prod", "staging", "dev")),
                                  st.sampled_from(FAMILIES)), min_size=1, max_size=6))
def test_a_familys_settings_are_the_brute_force_layering_of_its_overrides(
        defaults: dict[str, Any], overrides: list[dict[str, Any]],
        queries: list[tuple[str, str]]) -> None:
    rules = load_rules(_toml(defaults, overrides), "prop.toml", BASE)
    for env, family in queries:
        service = family.split(":")[0]
        want = _brute(defaults, overrides, env, service, family)
        assert rules.settings_for(env, service, family) == want
        detector = {k: v for k, v in want.items() if k != "correlation_window_ms"}
        assert rules.detector_for(env, service, family, BASE) == BASE.model_copy(
            update=detector)
        assert rules.correlation_window_ms(env, service, family, -1) == want.get(
            "correlation_window_ms", -1)


def test_values_nested_thousands_deep_are_an_error_naming_the_line_not_a_crash() -> None:
    text = "version = 1\n[defaults]\nmin_lift = " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(RulesError, match="nested too deep") as caught:
        load_rules(text, "rules.toml")
    assert caught.value.line == 3
    with pytest.raises(RulesError, match="min_lift"):
        parse_set(["detector.min_lift=" + "[" * 5000 + "]" * 5000])
