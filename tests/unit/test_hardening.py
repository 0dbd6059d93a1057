"""The edges' rules, with fake clocks and no server: tokens and grants, body inflation
limits, the rate limit by signals, and the log's repeat filter (ADR 0014)."""

from __future__ import annotations

import gzip
import logging
import zlib

import pytest

from tocsin.streams.web.auth import Access, ConfigError, Grant, Refusal, grant_of, is_loopback
from tocsin.streams.web.bodies import MAX_LAYERS, BodyError, inflate
from tocsin.streams.web.intake import Bucket, delivery_id
from tocsin.streams.worker.logging_limits import RepeatFilter


@pytest.mark.parametrize(("source", "value", "providers", "kinds", "traces"), [
    ("alertmanager", "a-token-123", {"alertmanager"}, {"alert"}, False),
    ("ci", "a-token-123", {"ci"}, {"deploy"}, False),
    ("kubernetes", "a-token-123", {"kubernetes"}, {"runtime"}, False),
    ("otlp", "a-token-123", set(), set(), True),
    ("ops", {"token": "a-token-123", "providers": ["native", "ci"]}, {"native", "ci"},
     {"alert", "runtime", "deploy", "dependency"}, False),
    ("mixed", {"token": "a-token-123", "providers": ["native"], "kinds": ["alert"],
               "traces": True}, {"native"}, {"alert"}, True),
])
def test_a_grant_is_what_its_source_may_send(source: str, value: object, providers: set[str],
                                             kinds: set[str], traces: bool) -> None:
    grant = grant_of(source, value)
    assert (set(grant.providers), set(grant.kinds), grant.traces) == (providers, kinds, traces)


@pytest.mark.parametrize(("source", "value", "why"), [
    ("team", "a-token-123", "provider name"),
    ("x", {"providers": ["ci"]}, "token"),
    ("x", {"token": "a-token-123", "providers": ["nagios"]}, "providers"),
    ("x", {"token": "a-token-123", "kinds": ["everything"]}, "kinds"),
    ("x", {"token": "short", "providers": ["ci"]}, "8 characters"),
    ("x", {"token": "a-token-123", "scope": "all"}, "unknown keys"),
    ("x", {"token": "a-token-123", "traces": "yes"}, "traces"),
])
def test_a_bad_grant_is_refused_naming_the_entry(source: str, value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as err:
        grant_of(source, value)
    assert repr(source) in str(err.value)


def test_access_checks_tokens_and_never_names_them() -> None:
    access = Access({"analyst": "read-token-1"}, {"alertmanager": "am-token-12"})
    assert access.reader("Bearer read-token-1") == "analyst"
    assert access.reader("Bearer am-token-12") == Refusal(401, "unknown bearer token")
    assert access.reader(None) == Refusal(401, "missing bearer token (Authorization: "
                                               "Bearer ...)")
    assert access.reader("Basic read-token-1").status == 401  # type: ignore[union-attr]
    grant = access.sender("Bearer am-token-12")
    assert isinstance(grant, Grant) and grant.source == "alertmanager"
    assert access.sender("Bearer read-token-1") == Refusal(401, "unknown bearer token")
    assert grant.refuses_provider("ci") and not grant.refuses_provider("alertmanager")
    assert grant.refuses_kinds({"deploy"}) and not grant.refuses_kinds({"alert"})
    open_access = Access({}, {})
    assert open_access.reader(None) is None and open_access.sender("Bearer x") is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("example.com", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def gz(data: bytes, times: int = 1) -> bytes:
    for _ in range(times):
        data = gzip.compress(data)
    return data


@pytest.mark.parametrize(("body", "encoding", "limit", "expected"), [
    (b"{}", None, 10, b"{}"),
    (gz(b"{}"), "gzip", 10, b"{}"),
    (gz(b"{}"), None, 10, b"{}"),  # gzip sniffed without a header
    (gz(b"{}", 2), "gzip", 100, b"{}"),  # a layer the header does not name
    (gz(b"{}", 2), "gzip, gzip", 100, b"{}"),
    (zlib.compress(b"{}"), "deflate", 10, b"{}"),
    (gz(b"{}") + gz(b"[]"), "gzip", 10, b"{}[]"),  # two gzip members
    (gz(b"x" * 10), "gzip", 10, b"x" * 10),
    (b"{}", "identity", 10, b"{}"),
])
def test_inflate_undoes_every_layer(body: bytes, encoding: str | None, limit: int,
                                    expected: bytes) -> None:
    assert inflate(body, encoding, limit) == expected


@pytest.mark.parametrize(("body", "encoding", "status"), [
    (gz(b"x" * 11), "gzip", 413),
    (gz(b"x" * 11, 2), None, 413),
    (gz(b"\0" * 50_000_000, 2), "gzip", 413),  # a bomb: stops at the limit
    (gz(b"{}", MAX_LAYERS + 1), None, 413),
    (gz(b"{}")[:-5], "gzip", 400),
    (b"\x1f\x8bnot gzip", None, 400),
    (b"{}", "br", 415),
    (b"x" * 11, None, 413),
])
def test_inflate_refuses(body: bytes, encoding: str | None, status: int) -> None:
    with pytest.raises(BodyError) as err:
        inflate(body, encoding, 10)
    assert err.value.status == status


def test_the_bucket_counts_signals_with_a_fake_clock() -> None:
    bucket = Bucket(rate=2.0, burst=10.0)
    assert bucket.take(0.0, 8) == 0.0
    assert bucket.take(0.0, 3) == pytest.approx(0.5)  # 2 left, 3 wanted: 1 more in 0.5 s
    assert bucket.take(0.0, 2) == 0.0, "a refused take takes nothing"
    assert bucket.take(0.0, 1) == pytest.approx(0.5)
    assert bucket.take(100.0, 10) == 0.0, "refills to the burst, never beyond"
    assert bucket.take(100.0, 1) == pytest.approx(0.5)
    assert bucket.take(99.0, 1) > 0, "a clock that steps back refills nothing"


def test_a_delivery_is_its_source_and_key() -> None:
    assert delivery_id("am", "k1") == delivery_id("am", "k1")
    assert delivery_id("am", "k1") != delivery_id("ci", "k1")
    assert delivery_id("am", "k1") != delivery_id("am", "k2")


def test_repeated_log_lines_are_held_back_and_counted() -> None:
    now = [0.0]
    limit = RepeatFilter(interval_s=10, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", level, __file__, 1, msg, None, None)

    assert limit.filter(record("Unable connect to %s"))
    assert not any(limit.filter(record("Unable connect to %s")) for _ in range(100))
    assert limit.filter(record("another line"))
    assert limit.filter(record("debug lines pass", logging.DEBUG))
    now[0] = 10.0
    again = record("Unable connect to %s")
    assert limit.filter(again)
    assert "[100 similar messages held back]" in str(again.msg)
