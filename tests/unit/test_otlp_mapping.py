"""Span outcome, error code, step, peer and wide-event rules (ADR 0011), one table each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tocsin.processors.family import Family, failing_downstream, family_of
from tocsin.processors.otlp import Peer, Span, decode_spans, is_entry, step_of, wide_events
from tocsin.processors.otlp.spans import Service, _url_path, clean_attrs, make_span
from tocsin.schemas.codec import WIDE_EVENT, avro_schema, validate_wide_event

OTEL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "otel"
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS = {"unset": 0, "ok": 1, "error": 2}
T0 = 1_714_564_800_000_000_000
NAMES = {"http_response_status_code": "http.response.status_code",
         "http_status_code": "http.status_code", "rpc_grpc_status_code": "rpc.grpc.status_code",
         "http_request_method": "http.request.method", "error_type": "error.type",
         "peer_service": "peer.service", "server_address": "server.address",
         "net_peer_name": "net.peer.name", "url_full": "url.full",
         "url_template": "url.template", "rpc_system": "rpc.system",
         "rpc_service": "rpc.service", "rpc_method": "rpc.method",
         "db_system_name": "db.system.name", "db_system": "db.system",
         "db_operation_name": "db.operation.name", "messaging_system": "messaging.system",
         "messaging_destination_name": "messaging.destination.name",
         "http_route": "http.route", "http_method": "http.method"}


def span(kind: str = "server", status: str = "unset", exception: str | None = None,
         span_id: str = "00000000000000a1", parent: str | None = None, flags: int = 0,
         name: str = "op", start_ms: int = 0, service: str = "svc",
         env: str | None = "prod", **attrs: object) -> Span:
    """A span through the same constructor the decoders use; attribute names are passed
    with ``_`` for ``.`` (``http_route`` → ``http.route``), see :data:`NAMES`."""
    return make_span(
        service=Service(service, env, "1.0"), scope="test", trace_id="ab" * 16,
        span_id=span_id, parent_span_id=parent, flags=flags, name=name, kind=KINDS[kind],
        start_ns=T0 + start_ms * 1_000_000, end_ns=T0 + (start_ms + 5) * 1_000_000,
        status_code=STATUS[status], status_message=None,
        attrs=clean_attrs({NAMES[k]: v for k, v in attrs.items()}),
        exception=(exception, f"{exception} happened") if exception else None)


def http(code: int) -> dict[str, Any]:
    return {"http_response_status_code": code}


OUTCOMES: list[tuple[str, Span, bool, str | None]] = [
    ("server 404 is the caller's fault", span("server", **http(404)), False, None),
    ("server 500", span("server", **http(500)), True, "HTTP_500"),
    ("client 503", span("client", **http(503)), True, "HTTP_503"),
    ("client 404 without ERROR status", span("client", **http(404)), False, None),
    ("client 404 that instrumentation marked ERROR", span("client", "error", **http(404)),
     True, "HTTP_404"),
    ("status ERROR alone: code left to the family default", span("server", "error"),
     True, None),
    ("explicit OK is final", span("server", "ok", "ValueError", **http(500)), False, None),
    ("gRPC NOT_FOUND on a server is not an error", span("server", rpc_grpc_status_code=5),
     False, None),
    ("gRPC UNAVAILABLE on a server", span("server", rpc_grpc_status_code=14), True,
     "GRPC_14"),
    ("gRPC NOT_FOUND on a client", span("client", rpc_grpc_status_code=5), True, "GRPC_5"),
    ("gRPC OK", span("client", rpc_grpc_status_code=0), False, None),
    ("exception event alone", span("internal", exception="ValueError"), True, "ValueError"),
    ("error.type wins", span("server", "error", "KeyError", error_type="TimeoutError",
                             **http(504)), True, "TimeoutError"),
    ("numeric error.type is the HTTP status", span("server", "error", error_type="502",
                                                   **http(502)), True, "HTTP_502"),
    ("numeric error.type on gRPC", span("client", error_type="14", rpc_grpc_status_code=14),
     True, "GRPC_14"),
    ("error.type _OTHER falls through", span("server", "error", error_type="_OTHER",
                                             **http(503)), True, "HTTP_503"),
    ("exception.type before the status", span("server", "error", "db.Timeout", **http(500)),
     True, "db.Timeout"),
    ("old http.status_code, as a string", span("server", http_status_code="502"), True,
     "HTTP_502"),
]


@pytest.mark.parametrize(("s", "error", "code"), [o[1:] for o in OUTCOMES],
                         ids=[o[0] for o in OUTCOMES])
def test_outcome_and_error_code(s: Span, error: bool, code: str | None) -> None:
    assert (s.error, s.error_code) == (error, code)
    event = wide_events([s])[0]
    assert (event["status"], event["error_code"]) == ("error" if error else "ok", code)


def test_error_message_is_status_message_else_exception_message_and_clipped() -> None:
    s = span("server", exception="ValueError")
    assert s.error_message == "ValueError happened"
    long = make_span(service=Service("s", None, None), scope=None, trace_id="ab" * 16,
                     span_id="cd" * 8, parent_span_id=None, flags=0, name="n", kind=2,
                     start_ns=T0, end_ns=T0, status_code=2, status_message="x" * 5000,
                     attrs=clean_attrs({}), exception=None)
    assert long.error_message == "x" * 2048
    assert span("server", **http(200)).error_message is None


@pytest.mark.parametrize(("s", "step"), [
    (span(http_route="/api/charge", http_request_method="POST"), "POST /api/charge"),
    (span(http_route="/users/{id}", http_method="GET", name="GET /users/42"), "GET /users/{id}"),
    (span(http_route="/x", http_request_method="_OTHER"), "HTTP /x"),
    (span(http_route="/x"), "/x"),
    (span(name="bank.Cards/Charge", rpc_system="grpc"), "bank.Cards/Charge"),
    (span(name=""), "(unnamed span)"),
])
def test_step(s: Span, step: str) -> None:
    assert step_of(s) == step


@pytest.mark.parametrize(("attrs", "peer"), [
    ({"peer_service": "payments", "server_address": "10.0.0.7"}, Peer("payments")),
    ({"server_address": "payment", "net_peer_name": "old", "http_request_method": "POST",
      "url_full": "http://payment:8080/api/charge?card=4111#x"},
     Peer("payment", "/api/charge", "http")),
    ({"net_peer_name": "inventory", "http_method": "GET", "url_template": "/items/{id}"},
     Peer("inventory", "/items/{id}", "http")),
    ({"rpc_system": "grpc", "rpc_service": "bank.Cards", "rpc_method": "Charge"},
     Peer("bank.Cards", "bank.Cards/Charge", "grpc")),
    ({"db_system_name": "postgresql", "server_address": "db-1", "db_operation_name": "SELECT"},
     Peer("db-1", "SELECT", "db")),
    ({"db_system": "redis"}, Peer("redis", None, "db")),
    ({"messaging_system": "kafka", "messaging_destination_name": "orders"},
     Peer("kafka", "orders", "messaging")),
    ({}, None),
])
def test_peer_of_client_spans(attrs: dict[str, Any], peer: Peer | None) -> None:
    assert span("client", **attrs).peer == peer
    assert span("producer", **attrs).peer == peer
    assert span("server", **attrs).peer is None


@pytest.mark.parametrize(("s", "entry"), [
    (span("server", parent="00000000000000b1", flags=0x100), True),
    (span("consumer", parent="00000000000000b1", flags=0x100), True),
    (span("client"), True),  # a root: a batch job's outbound call
    (span("internal", parent="00000000000000b1", flags=0x300), True),  # remote parent
    (span("client", parent="00000000000000b1", flags=0x100), False),
    (span("internal", parent="00000000000000b1"), False),  # remoteness unknown: local
])
def test_entry_spans(s: Span, entry: bool) -> None:
    assert is_entry(s) is entry


def test_fixture_trace_gives_one_family_per_service_pointing_downstream() -> None:
    events = wide_events(decode_spans((OTEL / "trace-3svc-batch.pb").read_bytes()))
    assert [(family_of(e), failing_downstream(e)) for e in events] == [
        (Family("production", "payment", "POST /api/charge", "PaymentDeclinedError"), None),
        (Family("production", "checkout", "POST /api/checkout", "HTTP_502"), "payment"),
        (Family("production", "frontend", "GET /cart/checkout", "HTTP_502"), "checkout"),
    ]
    checkout = events[1]
    assert checkout["downstream"] == {"service": "payment", "endpoint": "/api/charge",
                                      "kind": "http"}
    assert (checkout["event_time_ms"], checkout["duration_ms"]) == (1714564800060, 56.0)
    assert (checkout["trace_id"], checkout["span_id"], checkout["parent_span_id"]) == (
        "6762b34f4e26ea8e603235a1e58e1b1c", "97da1b729ffe1d99", "6861072c1e753a93")
    assert checkout["error_message"] == "payment service returned 500"
    assert checkout["attributes"] == {
        "span.kind": "server", "otel.scope.name": "heldout.fixtures.make_traces",
        "otel.status_code": "ERROR", "http.response.status_code": "502"}


def test_wide_events_fit_the_contract() -> None:
    spans = decode_spans((OTEL / "trace-3svc-batch.pb").read_bytes())
    schema = avro_schema(WIDE_EVENT)
    for event in wide_events(spans) + wide_events([span(env=None, **http(200))]):
        assert list(event) == schema.fields
        checked = validate_wide_event(dict(event))
        assert checked == event
        assert schema.decode_soe(schema.encode_soe(event)) == event
    assert wide_events([span(env=None)])[0]["env"] == "prod"


def chain(client_attrs: dict[str, Any], callee: str | None) -> list[Span]:
    """checkout SERVER → INTERNAL → CLIENT (fails) [→ callee SERVER]."""
    out = [
        span("server", "error", span_id="00000000000000a1", service="checkout",
             **http(502)),
        span("internal", span_id="00000000000000a2", parent="00000000000000a1",
             service="checkout"),
        span("client", "error", span_id="00000000000000a3", parent="00000000000000a2",
             service="checkout", start_ms=2, **client_attrs),
    ]
    if callee is not None:
        out.append(span("server", "error", span_id="00000000000000a4",
                         parent="00000000000000a3", flags=0x300, service=callee))
    return out


def test_downstream_found_through_internal_spans() -> None:
    event = wide_events(chain({"peer_service": "payment"}, None))[0]
    assert event["downstream"] == {"service": "payment", "endpoint": None, "kind": None}


def test_downstream_from_the_callee_server_span_when_the_client_names_nobody() -> None:
    events = wide_events(chain({}, "ledger"))
    assert [e["service"] for e in events] == ["checkout", "ledger"]
    assert failing_downstream(events[0]) == "ledger"
    assert wide_events(chain({"server_address": "10.1.2.3"}, "ledger"))[0][
        "downstream"]["service"] == "10.1.2.3"  # the client's own attributes come first


def test_family_does_not_depend_on_which_spans_share_the_payload() -> None:
    spans = chain({"peer_service": "payment"}, "payment")
    whole = wide_events(spans)
    alone = wide_events(spans[:1]) + wide_events(spans[1:])
    assert [family_of(e) for e in whole] == [family_of(e) for e in alone]
    assert failing_downstream(whole[0]) == "payment"
    assert failing_downstream(alone[0]) is None  # evidence only: the assembler fills it


def test_earliest_failing_client_names_the_downstream() -> None:
    root = span("server", "error", span_id="00000000000000a1", **http(500))
    late = span("client", "error", span_id="00000000000000a2", parent=root.span_id,
                start_ms=3, peer_service="late")
    early = span("client", "error", span_id="00000000000000a3", parent=root.span_id,
                 start_ms=1, peer_service="early")
    ok = span("client", span_id="00000000000000a4", parent=root.span_id, start_ms=0,
              peer_service="fine")
    assert failing_downstream(wide_events([root, late, early, ok])[0]) == "early"


def test_successful_entry_keeps_no_downstream() -> None:
    root = span("server", span_id="00000000000000a1", **http(200))
    retried = span("client", "error", span_id="00000000000000a2", parent=root.span_id,
                   peer_service="flaky")
    (event,) = wide_events([root, retried])
    assert (event["status"], event["downstream"]) == ("ok", None)


def test_root_client_span_is_its_own_entry_with_its_peer() -> None:
    (event,) = wide_events([span("client", **http(503), server_address="api.example.com")])
    assert failing_downstream(event) == "api.example.com"


def test_parent_cycle_does_not_hang() -> None:
    a = span("client", "error", span_id="00000000000000a1", parent="00000000000000a2")
    b = replace(a, span_id="00000000000000a2", parent_span_id="00000000000000a1")
    assert wide_events([a, b]) == []


_SEGMENT = st.text("abcxyz019-._~%{}=:@", max_size=6)


@example(scheme="", host="", path="/a/b://c/d", query=None, fragment=None)
@example(scheme="https://", host="h:8443", path="/x://y", query="a=://", fragment=None)
@given(scheme=st.sampled_from(["http://", "https://", "grpc://", "//", ""]),
       host=st.from_regex(r"[a-z0-9.-]{0,12}(:[0-9]{1,5})?", fullmatch=True),
       path=st.lists(_SEGMENT, max_size=4).map(lambda p: "".join("/" + s for s in p)),
       query=st.none() | st.text("a=&/?:1", max_size=6),
       fragment=st.none() | st.text("x/?#", max_size=4))
def test_url_path_is_what_urlsplit_gives(scheme: str, host: str, path: str,
                                         query: str | None, fragment: str | None) -> None:
    """The hand-written URL path (hot path) against the standard library's parser."""
    url = (scheme + host if scheme else "") + path + \
        ("?" + query if query is not None else "") + \
        ("#" + fragment if fragment is not None else "")
    assert _url_path(url) == (urlsplit(url).path or None)


def test_url_path_keeps_what_is_not_a_url() -> None:
    assert _url_path("localhost:8080/x") == "localhost:8080/x"  # urlsplit: "8080/x"
