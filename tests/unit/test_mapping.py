"""Declarative field mappings (ADR 0013): each path form, each time format, renames,
constants and value maps, the anchor from a failing step's nested error object, records
that cannot be mapped (SchemaError naming the field), mapping files that cannot be used
(MappingError naming the line and key), the two example mappings, and a property: apply
never raises anything but SchemaError, and what it returns is a wide event as
validate_wide_event would leave it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tocsin.clients.produce import ProduceReport, prepare
from tocsin.processors.family import family_of
from tocsin.processors.mapping import (
    EventMapping,
    MappedFieldError,
    MappingError,
    load_mapping,
    mapped_decoder,
    parse_mapping,
)
from tocsin.schemas.codec import (
    WIDE_EVENT,
    SchemaError,
    WideEventDecoder,
    avro_schema,
    validate_wide_event,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mappings"
T0 = 1_793_610_000_000  # 2026-11-02T09:00:00Z
BASE = """
[fields]
event_time_ms = { value = 1793610000000 }
step = { value = "op" }
"""


def one_field(target: str, spec: str, extra: str = "") -> EventMapping:
    """A mapping with a constant time and step and ``target = spec``."""
    base = BASE if target != "step" else BASE.replace('step = { value = "op" }\n', "")
    service = "" if target == "service" else 'service = { value = "svc" }\n'
    return parse_mapping(f"{base}{service}{target} = {spec}\n{extra}", "test.toml")


# ---------------------------------------------------------------------- paths

PATHS = [
    # (path, record, value it reads)
    ("svc", {"svc": "a"}, "a"),
    ("app.name", {"app": {"name": "a"}}, "a"),
    ("a.b.c.d", {"a": {"b": {"c": {"d": "deep"}}}}, "deep"),
    ('fields."user.id"', {"fields": {"user.id": "u1", "user": {"id": "no"}}}, "u1"),
    ('"service.name"', {"service.name": "flat", "service": {"name": "nested"}}, "flat"),
    ('"a\\"b".c', {'a"b': {"c": "escaped quote"}}, "escaped quote"),
    ('"back\\\\slash"', {"back\\slash": "escaped backslash"}, "escaped backslash"),
    ('"with space"', {"with space": "s"}, "s"),
    ("items[0].name", {"items": [{"name": "first"}, {"name": "second"}]}, "first"),
    ("items[-1].name", {"items": [{"name": "first"}, {"name": "last"}]}, "last"),
    ("tags[1]", {"tags": ["x", "y"]}, "y"),
    # [] chooses the first failing element: status (else outcome) present and not ok
    ("steps[].name", {"steps": [{"name": "a", "status": "ok"}, {"name": "b"},
                                {"name": "c", "status": "error"},
                                {"name": "d", "status": "error"}]}, "c"),
    ("steps[].name", {"steps": [{"name": "a", "outcome": "OK"},
                                {"name": "b", "outcome": "failed"}]}, "b"),
    ("steps[].error.code", {"steps": [{"status": "ok", "error": {"code": "no"}},
                                      {"status": 500, "error": {"code": "E1"}}]}, "E1"),
    ("outer[].inner[].name", {"outer": [{"status": "ok"}, {
        "status": "bad", "inner": [{"status": "ok", "name": "x"},
                                   {"status": "bad", "name": "y"}]}]}, "y"),
]


@pytest.mark.parametrize(("path", "record", "expected"), PATHS)
def test_each_path_form_reads_its_value(path: str, record: dict[str, Any], expected: str
                                        ) -> None:
    mapping = one_field("service", f"'{path}'")
    assert mapping.apply(record)["service"] == expected


MISSES = [
    ("app.name", {"app": "not an object"}),
    ("app.name", {"app": {"name": None}}),
    ("app.name", {"app": ["name"]}),
    ("items[5].name", {"items": [{"name": "a"}]}),
    ("items[0].name", {"items": {"0": {"name": "a"}}}),
    ("steps[].name", {"steps": [{"name": "a", "status": "ok"}, {"name": "b"}]}),
    ("steps[].name", {"steps": "not a list"}),
    ("steps[].name", {"steps": [1, "x", None, [{"status": "error", "name": "nested"}]]}),
]


@pytest.mark.parametrize(("path", "record"), MISSES)
def test_a_path_that_does_not_resolve_takes_the_default(path: str, record: dict[str, Any]
                                                        ) -> None:
    mapping = one_field("service", f"{{ from = '{path}', default = 'fallback' }}")
    assert mapping.apply(record)["service"] == "fallback"


def test_alternatives_take_the_first_path_present() -> None:
    mapping = one_field("service", "['a', 'b.c', '\"d.e\"']")
    assert mapping.apply({"b": {"c": "second"}, "d.e": "third"})["service"] == "second"
    assert mapping.apply({"a": None, "d.e": "third"})["service"] == "third"


def test_every_path_through_the_same_list_sees_the_same_element() -> None:
    mapping = parse_mapping(BASE + """service = { value = "svc" }
[anchor]
name = "steps[].name"
error_code = "steps[].error.code"
""")
    # the first failing step has no code: its code is absent, not the next step's code
    event = mapping.apply({"steps": [{"name": "a", "status": "error"},
                                     {"name": "b", "status": "error",
                                      "error": {"code": "B"}}]})
    assert event["steps"] == [{"name": "a", "status": "error"}]
    assert family_of(event) is not None and family_of(event).key == "svc:a:ERROR"  # type: ignore[union-attr]


WHERE = [
    ('{ field = "status", not_in = ["ok", "success"] }',
     [{"name": "a", "status": "success"}, {"name": "b", "status": "failed"}], "b"),
    ('{ field = "level", in = ["error", "fatal"] }',
     [{"name": "a", "level": "info"}, {"name": "b", "level": "fatal"}], "b"),
    ('{ field = "error", exists = true }',
     [{"name": "a", "status": "error"}, {"name": "b", "error": {"code": "X"}}], "b"),
    ('{ field = ["result.ok", "passed"], in = [false] }',
     [{"name": "a", "result": {"ok": True}}, {"name": "b", "passed": False}], "b"),
    ('{ field = "http.code", not_in = [200, 204] }',
     [{"name": "a", "http": {"code": 200.0}}, {"name": "b", "http": {"code": 503}}], "b"),
]


@pytest.mark.parametrize(("rule", "steps", "expected"), WHERE)
def test_a_where_rule_chooses_the_element(rule: str, steps: list[dict[str, Any]],
                                          expected: str) -> None:
    mapping = one_field("service", "'spans[].name'", f'[where]\n"spans[]" = {rule}\n')
    assert mapping.apply({"spans": steps})["service"] == expected


# ---------------------------------------------------------------------- time

T0_123 = T0 + 123
TIMES = [
    ("rfc3339", "2026-11-02T09:00:00Z", T0),
    ("rfc3339", "2026-11-02T09:00:00.123Z", T0_123),
    ("rfc3339", "2026-11-02T09:00:00.123999999Z", T0_123),  # floored, nanoseconds read
    ("rfc3339", "2026-11-02T10:00:00.1234+01:00", T0_123),
    ("rfc3339", "2026-11-02T08:30:00.5-00:30", T0 + 500),
    ("rfc3339", "2026-11-02t09:00:00z", T0),
    ("rfc3339", "2026-11-02 09:00:00+00:00", T0),
    ("epoch_s", 1_793_610_000, T0),
    ("epoch_s", 1_793_610_000.123, T0_123),  # the decimal as written, not its binary float
    ("epoch_s", "1793610000.5", T0 + 500),
    ("epoch_ms", T0_123, T0_123),
    ("epoch_ms", float(T0_123) + 0.9, T0_123),
    ("epoch_ms", str(T0_123), T0_123),
    ("epoch_us", T0_123 * 1000 + 999, T0_123),
    ("epoch_ns", "1793610000123456789", T0_123),  # OTLP/JSON writes 64-bit ints as strings
    ("epoch_ns", 1_793_610_000_123_456_789, T0_123),
    ("auto", "2026-11-02T09:00:00.123Z", T0_123),
    ("auto", 1_793_610_000, T0),
    ("auto", 1_793_610_000.123, T0_123),
    ("auto", T0_123, T0_123),
    ("auto", str(T0_123), T0_123),
    ("auto", T0_123 * 1000, T0_123),
    ("auto", T0_123 * 1_000_000 + 456_789, T0_123),
    ("auto", "1793610000123456789", T0_123),
]


@pytest.mark.parametrize(("fmt", "value", "expected"), TIMES)
def test_each_time_format(fmt: str, value: Any, expected: int) -> None:
    mapping = parse_mapping(f"""
[fields]
event_time_ms = {{ from = "t", format = "{fmt}" }}
service = {{ value = "svc" }}
step = {{ value = "op" }}
""")
    assert mapping.apply({"t": value})["event_time_ms"] == expected


BAD_TIMES = [
    ("rfc3339", "2026-11-02T09:00:00", "not an RFC 3339 time with an offset"),
    ("rfc3339", "2026-11-02", "not an RFC 3339 time"),
    ("rfc3339", "2026-02-30T09:00:00Z", "day is out of range"),
    ("rfc3339", "2026-11-02T25:00:00Z", "out of range"),
    ("rfc3339", "2026-11-02T09:00:00+25:00", "offset"),
    ("rfc3339", T0, "not an RFC 3339 time"),
    ("rfc3339", "1969-12-31T23:59:59Z", "outside wide_event.v1's range"),
    ("epoch_ms", "yesterday", "not epoch milliseconds"),
    ("epoch_ms", True, "a boolean is not a time"),
    ("epoch_ms", -1, "outside wide_event.v1's range"),
    ("epoch_ns", {"nanos": 1}, "not epoch nanoseconds: an object"),
    ("epoch_s", 10 ** 30, "outside wide_event.v1's range"),
    ("auto", "next tuesday", "not an RFC 3339 time"),
    ("auto", [T0], "not a time (RFC 3339 or epoch): an array"),
]


@pytest.mark.parametrize(("fmt", "value", "message"), BAD_TIMES)
def test_a_time_that_does_not_read_names_event_time_ms_and_the_path(
        fmt: str, value: Any, message: str) -> None:
    mapping = parse_mapping(f"""
[fields]
event_time_ms = {{ from = "when.t", format = "{fmt}" }}
service = {{ value = "svc" }}
step = {{ value = "op" }}
""")
    with pytest.raises(MappedFieldError) as err:
        mapping.apply({"when": {"t": value}})
    assert err.value.field == "event_time_ms"
    assert err.value.source == "when.t"
    assert message in str(err.value)
    assert "(from when.t)" in str(err.value)


# ---------------------------------------------------------------------- fields

NESTED = """
version = 1

[fields]
event_time_ms = { from = "ts", format = "epoch_ms" }
service = "app.name"
step = "route"
env = { from = "app.env", default = "prod" }
status = { from = "outcome", map = { failed = "error", slow = "timeout" }, default = "ok" }
service_version = "version"
user_id = 'fields."user.id"'
request_id = "id"
duration_ms = "took_ms"

[anchor]
name = "steps[].name"
status = { from = "steps[].status", map = { failed = "error", slow = "timeout" } }
error_code = "steps[].error.code"
error_message = "steps[].error.message"
duration_ms = "steps[].took_ms"
downstream = { service = "steps[].error.dependency", kind = { value = "http" } }

[attributes]
region = "where"
retries = "retries"
"""

NESTED_RECORD = {
    "ts": T0_123, "app": {"name": "checkout"}, "route": "POST /checkout",
    "outcome": "failed", "version": "1.4.2", "fields": {"user.id": "user-17"},
    "id": 9, "took_ms": "812.5", "where": "eu-west-1", "retries": [1, 2],
    "steps": [
        {"name": "cart.load", "status": "ok", "took_ms": 3},
        {"name": "payment.charge", "status": "failed", "took_ms": 800,
         "error": {"code": "PMT_502", "message": "upstream 502", "dependency": "payment"}},
        {"name": "email.send", "status": "failed", "error": {"code": "MAIL"}},
    ],
    "ignored": {"anything": True},
}


def test_renames_nested_paths_and_the_anchor_from_the_failing_steps_error_object() -> None:
    mapping = parse_mapping(NESTED, "nested.toml")
    record = copy.deepcopy(NESTED_RECORD)
    event = mapping.apply(record)
    assert record == NESTED_RECORD, "the record is not changed"
    assert event == {
        "event_time_ms": T0_123, "service": "checkout", "step": "POST /checkout",
        "env": "prod", "status": "error", "service_version": "1.4.2",
        "user_id": "user-17", "request_id": "9", "duration_ms": 812.5,
        "steps": [{"name": "payment.charge", "status": "error", "error_code": "PMT_502",
                   "error_message": "upstream 502", "duration_ms": 800.0,
                   "downstream": {"service": "payment", "kind": "http"}}],
        "attributes": {"region": "eu-west-1", "retries": "[1,2]"},
    }
    assert validate_wide_event(copy.deepcopy(event)) == event
    family = family_of(event)
    assert family is not None and family.key == "checkout:payment.charge:PMT_502"


def test_without_a_failing_step_there_is_no_anchor_and_the_event_decides() -> None:
    mapping = parse_mapping(NESTED)
    record = {**NESTED_RECORD, "outcome": "slow",
              "steps": [{"name": "cart.load", "status": "ok"}]}
    event = mapping.apply(record)
    assert "steps" not in event
    assert family_of(event).key == "checkout:POST /checkout:TIMEOUT"  # type: ignore[union-attr]


VALUES = [
    # (spec for status, record, status)
    ('{ value = "error" }', {"s": "ok"}, "error"),
    ('{ from = "s", default = "suppressed" }', {}, "suppressed"),
    ('{ from = "s", default = "suppressed" }', {"s": None}, "suppressed"),
    ('{ from = "s", map = { "500" = "error", "true" = "error" } }', {"s": 500}, "error"),
    ('{ from = "s", map = { "500" = "error", "true" = "error" } }', {"s": 500.0}, "error"),
    ('{ from = "s", map = { "500" = "error", "true" = "error" } }', {"s": True}, "error"),
    ('{ from = "s", map = { "500" = "error" } }', {"s": "timeout"}, "timeout"),  # through
    ('{ from = "s", map = { "false" = "ok", "" = "ok" }, else = "error" }', {"s": ""}, "ok"),
    ('{ from = "s", map = { "false" = "ok", "" = "ok" }, else = "error" }',
     {"s": "payment declined"}, "error"),
    ('{ from = "s", map = { "false" = "ok" }, else = "error", default = "ok" }', {}, "ok"),
]


@pytest.mark.parametrize(("spec", "record", "expected"), VALUES)
def test_constants_defaults_and_value_maps(spec: str, record: dict[str, Any], expected: str
                                          ) -> None:
    assert one_field("status", spec).apply(record)["status"] == expected


def test_scalars_become_strings_for_string_fields() -> None:
    mapping = one_field("error_code", '"c"')
    assert [mapping.apply({"c": v}).get("error_code") for v in (502, 1.5, 2.0, True, "x")] \
        == ["502", "1.5", "2", "true", "x"]


def test_a_downstream_needs_its_service_to_resolve() -> None:
    mapping = one_field("downstream", '{ service = "peer", endpoint = "path" }')
    assert "downstream" not in mapping.apply({"path": "/charge"})
    assert mapping.apply({"peer": "payment", "path": "/charge"})["downstream"] == {
        "service": "payment", "endpoint": "/charge"}


# ---------------------------------------------------------------------- unmappable records

UNMAPPABLE = [
    # (record change, field, in the message)
    ({"app": {}}, "service", "mapped from app.name, which the record does not have"),
    ({"app": {"name": ""}}, "service", "required, a non-empty string (from app.name)"),
    ({"app": {"name": {"first": "a"}}}, "service", "must be a scalar, got an object"),
    ({"route": None}, "step", "mapped from route"),
    ({"ts": None}, "event_time_ms", "mapped from ts"),
    ({"ts": "soon"}, "event_time_ms", "not epoch milliseconds: 'soon' (from ts)"),
    ({"app": {"name": "a", "env": ""}}, "env", "non-empty string (from app.env)"),
    ({"outcome": "meh"}, "status", "'meh' is not a wide_event.v1 status"),
    ({"took_ms": "slow"}, "duration_ms", "must be a number, got 'slow' (from took_ms)"),
    ({"took_ms": True}, "duration_ms", "must be a number"),
    ({"steps": [{"name": ["x"], "status": "failed"}]}, "anchor.name", "must be a scalar"),
    ({"steps": [{"name": "", "status": "failed"}]}, "anchor.name", "non-empty string"),
    ({"steps": [{"name": "a", "status": "failed", "error": {"code": {"x": 1}}}]},
     "anchor.error_code", "must be a scalar, got an object (from steps[].error.code)"),
    ({"steps": [{"name": "a", "status": "failed", "error": {"dependency": ""}}]},
     "anchor.downstream.service", "non-empty string"),
    ({"steps": [{"name": "a", "status": "weird"}]}, "anchor.status", "'weird' is not"),
]


@pytest.mark.parametrize(("change", "field", "message"), UNMAPPABLE)
def test_an_unmappable_record_raises_schema_error_naming_the_field(
        change: dict[str, Any], field: str, message: str) -> None:
    mapping = parse_mapping(NESTED)
    with pytest.raises(SchemaError) as err:
        mapping.apply({**NESTED_RECORD, **change})
    assert err.value.field == field
    assert message in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize("value", [None, [], [NESTED_RECORD], "x", 1, 1.5, True])
def test_only_objects_map(value: Any) -> None:
    with pytest.raises(SchemaError, match="a mapped event is a JSON object"):
        parse_mapping(NESTED).apply(value)


# ---------------------------------------------------------------------- bad mapping files

GOOD = '[fields]\nevent_time_ms = "t"\nservice = "s"\nstep = "p"\n'
BAD_FILES = [
    ("[fields\nservice = 1\n", "bad.toml: not valid TOML: "),
    ('[fields]\nservice = "s"\nstep = "x\n', "(at line 3, column"),
    ("version = 1\n", "bad.toml: fields: missing: the [fields] table maps"),
    ('[fields]\nevent_time_ms = "t"\nservice = "s"\n',
     "bad.toml:1: fields: step is required and not mapped"),
    (GOOD + 'servce = "x"\n', "bad.toml:5: fields.servce: not a wide_event.v1 field"),
    (GOOD + 'status = { form = "x" }\n', "bad.toml:5: fields.status.form: unknown option"),
    (GOOD + 'env = "a..b"\n', "bad.toml:5: fields.env: bad path 'a..b': expected a key at 3"),
    (GOOD + "env = 'a.\"b'\n", "fields.env: bad path 'a.\"b': unterminated quote"),
    (GOOD + "env = 'a[x]'\n", "fields.env: bad path 'a[x]': expected [] or [N]"),
    (GOOD + "env = ''\n", "fields.env: bad path '': a path is a non-empty string"),
    (GOOD + "env = 5\n", "bad.toml:5: fields.env: a path, a list of paths, or a table"),
    (GOOD + "env = []\n", "fields.env: a path, or a non-empty list of paths"),
    ('[fields]\nevent_time_ms = { from = "t", format = "epoch_minutes" }\nservice = "s"\n'
     'step = "p"\n', "bad.toml:2: fields.event_time_ms.format: one of auto, rfc3339"),
    (GOOD + 'duration_ms = { from = "d", format = "epoch_ms" }\n',
     "fields.duration_ms.format: format is for event_time_ms only"),
    (GOOD + 'status = { value = "eror" }\n', "fields.status.value: 'eror' is not a wide"),
    (GOOD + 'status = { from = "s", map = { BAD = "broken" } }\n',
     "bad.toml:5: fields.status.map.BAD: 'broken' is not a wide_event.v1 status"),
    (GOOD + 'status = { from = "s", else = "error" }\n', "fields.status.else: else goes"),
    (GOOD + 'env = { from = "e", value = "prod" }\n', "fields.env: give exactly one of from"),
    (GOOD + 'env = { value = "prod", default = "x" }\n', "a constant (value) takes no other"),
    (GOOD + 'env = { value = [1] }\n', "fields.env.value: a string, number or boolean"),
    (GOOD + 'downstream = { endpoint = "e" }\n', "fields.downstream: a downstream needs"),
    (GOOD + 'downstream = { service = "d", port = "p" }\n',
     "fields.downstream.port: not a downstream field"),
    (GOOD + '[anchor]\nerror_code = "steps[].code"\n', "bad.toml:5: anchor: name is required"),
    (GOOD + '[anchor]\nname = "steps[].name"\nservice = "x"\n',
     "bad.toml:7: anchor.service: not a wide_event.v1 field here"),
    (GOOD + '[where]\n"steps" = { field = "s", exists = true }\n',
     'bad.toml:6: where.steps: a where rule names a list ending in []'),
    (GOOD + '[where]\n"steps[]" = { field = "s", exists = true }\n',
     'bad.toml:6: where."steps[]": no mapped path goes through this list'),
    (GOOD + 'env = "steps[].env"\n[where]\n"steps[]" = { field = "s", in = ["a"], '
     'exists = true }\n', 'where."steps[]": give exactly one of in, not_in, exists'),
    (GOOD + 'env = "steps[].env"\n[where]\n"steps[]" = { field = "s[]", exists = true }\n',
     "where.\"steps[]\".field: bad path 's[]': [] is not allowed here"),
    (GOOD + 'env = "steps[].env"\n[where]\n"steps[]" = { field = "s", not_in = "ok" }\n',
     'where."steps[]".not_in: a list of strings, numbers or booleans'),
    (GOOD + 'env = "steps[].env"\n[where]\n"steps[]" = "status"\n',
     'where."steps[]": a where rule is a table'),
    ("version = 2\n" + GOOD, "bad.toml:1: version: this Tocsin reads mapping version 1"),
    (GOOD + "[filters]\nx = 1\n", "bad.toml:5: filters: unknown table or key"),
    (GOOD + "[attributes]\nx = { from = 'a', format = 'auto' }\n",
     "attributes.x.format: format is for event_time_ms only"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_mapping_file_is_a_mapping_error_naming_line_and_key(text: str, message: str
                                                                   ) -> None:
    with pytest.raises(MappingError) as err:
        parse_mapping(text, "bad.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value), "one line"


def test_mapping_files_are_toml_and_must_exist(tmp_path: Path) -> None:
    yaml = tmp_path / "m.yaml"
    yaml.write_text("fields: {}\n")
    with pytest.raises(MappingError, match=r"m\.yaml: mapping files are TOML"):
        load_mapping(yaml)
    with pytest.raises(MappingError, match="cannot read the mapping file"):
        load_mapping(tmp_path / "absent.toml")
    good = tmp_path / "m.toml"
    good.write_text(GOOD)
    assert load_mapping(good).name == str(good)


# ---------------------------------------------------------------------- the decoder


def test_the_mapped_decoder_maps_json_and_leaves_avro_alone() -> None:
    decode = mapped_decoder(parse_mapping(NESTED), WideEventDecoder())
    assert decode(orjson.dumps(NESTED_RECORD))["service"] == "checkout"
    native = {"event_time_ms": T0, "service": "a", "step": "b"}
    avro = avro_schema(WIDE_EVENT).encode_soe(validate_wide_event(dict(native)))
    assert decode(avro)["service"] == "a"
    with pytest.raises(SchemaError, match="neither Avro nor valid JSON"):
        decode(b"{nope")
    with pytest.raises(SchemaError, match="empty record"):
        decode(b"")
    with pytest.raises(SchemaError) as err:
        decode(orjson.dumps(native))  # JSON in wide_event.v1 shape is mapped like any JSON
    assert err.value.field == "event_time_ms"


def test_produce_maps_client_side_and_names_the_line_and_field() -> None:
    report = ProduceReport()
    good = copy.deepcopy(NESTED_RECORD)
    no_route = {k: v for k, v in NESTED_RECORD.items() if k != "route"}
    sent = list(prepare([(1, good), (2, no_route), (3, [1])], True, "json", report,
                        parse_mapping(NESTED)))
    assert len(sent) == 1
    key, body = sent[0]
    assert key == b"checkout"
    assert family_of(orjson.loads(body)).key == "checkout:payment.charge:PMT_502"  # type: ignore[union-attr]
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (2, "step"), (3, "a mapped event is a JSON object, got an array")]


# ---------------------------------------------------------------------- the examples

EXPECTED = {
    "otel-log": [
        ({"event_time_ms": 1_793_612_400_123, "service": "checkout", "step": "POST /checkout",
          "env": "prod", "status": "ok", "service_version": "1.4.2",
          "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
          "user_id": "user-17",
          "attributes": {"message": "checkout ok", "http_status": "200",
                         "region": "eu-west-1"}}, None),
        ({"event_time_ms": 1_793_612_401_500, "service": "checkout", "step": "POST /checkout",
          "env": "prod", "status": "error", "error_code": "PMT_502",
          "error_message": "payment answered 502", "service_version": "1.4.2",
          "trace_id": "5bf92f3577b34da6a3ce929d0e0e4737", "span_id": "10f067aa0ba902b8",
          "user_id": "user-18", "downstream": {"service": "payment", "endpoint": "/charge"},
          "attributes": {"message": "charge failed: upstream 502", "http_status": "502",
                         "region": "eu-west-1"}}, "checkout:POST /checkout:PMT_502"),
        ({"event_time_ms": 1_793_612_402_000, "service": "cart", "step": "cart.load",
          "env": "staging", "status": "ok", "attributes": {"message": "slow cart"}}, None),
    ],
    "honeycomb": [
        ({"event_time_ms": 1_793_612_400_125, "service": "checkout", "step": "POST /checkout",
          "env": "prod", "status": "ok", "duration_ms": 41.2, "service_version": "1.4.2",
          "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
          "user_id": "user-17", "attributes": {"http_status": "200", "region": "eu-west-1"}},
         None),
        ({"event_time_ms": 1_793_612_401_250, "service": "checkout", "step": "POST /checkout",
          "env": "prod", "status": "error", "error_code": "PMT_502",
          "error_message": "payment declined", "duration_ms": 812.5,
          "service_version": "1.4.2", "trace_id": "5bf92f3577b34da6a3ce929d0e0e4737",
          "span_id": "10f067aa0ba902b8", "user_id": "user-18", "request_id": "req-9",
          "downstream": {"service": "payment", "kind": "http"},
          "attributes": {"http_status": "502"}}, "checkout:POST /checkout:PMT_502"),
        ({"event_time_ms": 1_793_612_402_000, "service": "cart", "step": "GET /cart",
          "env": "staging", "status": "error", "error_code": "CART_TIMEOUT",
          "error_message": "upstream timeout", "duration_ms": 3000.0,
          "attributes": {"http_status": "504"}}, "cart:GET /cart:CART_TIMEOUT"),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_mappings_map_their_example_records(name: str) -> None:
    mapping = load_mapping(EXAMPLES / f"{name}.toml")
    lines = (EXAMPLES / f"{name}.ndjson").read_bytes().splitlines()
    assert len(lines) == len(EXPECTED[name])
    for line, (expected, family) in zip(lines, EXPECTED[name], strict=True):
        event = mapping.apply(orjson.loads(line))
        assert event == expected
        assert validate_wide_event(copy.deepcopy(event)) == event
        found = family_of(event)
        assert (found.key if found else None) == family


def test_the_example_mappings_name_what_is_missing() -> None:
    honeycomb = load_mapping(EXAMPLES / "honeycomb.toml")
    with pytest.raises(SchemaError) as err:
        honeycomb.apply({"timestamp": "2026-11-02T09:40:00Z", "name": "GET /"})
    assert err.value.field == "service"
    assert 'mapped from "service.name"' in str(err.value)
    otel = load_mapping(EXAMPLES / "otel-log.toml")
    with pytest.raises(SchemaError) as err:
        otel.apply({"resource": {"attributes": {"service.name": "a"}}})
    assert err.value.field == "event_time_ms"
    assert "timeUnixNano | observedTimeUnixNano" in str(err.value)


# ---------------------------------------------------------------------- property

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
MAPPINGS = [parse_mapping(NESTED), load_mapping(EXAMPLES / "honeycomb.toml"),
            load_mapping(EXAMPLES / "otel-log.toml")]
VALID = [(0, NESTED_RECORD)] + [
    (which, orjson.loads(line)) for which, name in ((1, "honeycomb"), (2, "otel-log"))
    for line in (EXAMPLES / f"{name}.ndjson").read_bytes().splitlines()]


def _places(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) inside a JSON value, in a stable order."""
    out: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        out += _places(child)
    return out


@st.composite
def mapped_records(draw: st.DrawFn) -> tuple[int, Any]:
    """A record each mapping maps, with 0-3 values replaced by anything or deleted; or
    any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.integers(0, len(MAPPINGS) - 1)), draw(json_values)
    which, base = draw(st.sampled_from(VALID))
    record = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        places = _places(record)
        if not places:
            break
        container, key = draw(st.sampled_from(places))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(json_values | st.text(max_size=30)
                                  | st.integers(-2, 2 ** 64) | st.floats())
    return which, record


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mapped_records())
def test_apply_raises_only_schema_error_and_returns_valid_wide_events(case: tuple[int, Any]
                                                                      ) -> None:
    which, record = case
    mapping = MAPPINGS[which]
    before = copy.deepcopy(record)  # floats are shared, so even a NaN compares equal
    try:
        event = mapping.apply(record)
    except SchemaError as exc:
        assert record == before, "the record is not changed"
        assert exc.field is None or isinstance(exc.field, str)
        with pytest.raises(SchemaError) as again:
            mapping.apply(record)
        assert str(again.value) == str(exc), "deterministic"
        return
    assert record == before, "the record is not changed"
    assert validate_wide_event(copy.deepcopy(event)) == event
    assert mapping.apply(record) == event, "deterministic"
    orjson.dumps(event)  # and it goes on the wire


def test_a_mapping_nested_thousands_deep_is_an_error_naming_the_line_not_a_crash() -> None:
    text = 'version = 1\nx = ' + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(MappingError, match=r"m\.toml:2: values nested too deep"):
        parse_mapping(text, "m.toml")
