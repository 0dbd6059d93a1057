"""Tocsin's native signal JSON, and the dependency signals that arrive through it."""

from __future__ import annotations

from typing import Any

import pytest

from tocsin.processors.signals import IntakeError, Signal, parse, signal_id, sniff

T = 1_793_610_000_000


def test_a_dependency_signal() -> None:
    payload = {"type": "dependency", "service": "checkout", "downstream": "payment",
               "env": "prod", "reason": "PMT_502", "error_code": "PMT_502",
               "event_time_ms": T, "dedup_key": "payment-502"}
    assert sniff(payload) == "native"
    [sig] = parse(payload)
    assert (sig.type, sig.source, sig.state, sig.severity) == (
        "dependency", "native", "firing", "warning")
    assert (sig.downstream, sig.error_code, sig.title) == ("payment", "PMT_502",
                                                           "dependency payment PMT_502")
    assert sig.signal_id == signal_id("native", "payment-502")
    assert (sig.event_time_ms, sig.starts_at_ms, sig.occurrences) == (T, T, 1)


@pytest.mark.parametrize("payload,title,severity", [
    ({"type": "deploy", "service": "checkout", "version": "1.8.0"}, "deploy checkout 1.8.0",
     "info"),
    ({"type": "runtime", "service": "checkout", "runtime_subtype": "panic"},
     "runtime checkout panic", "warning"),
    ({"type": "alert", "service": "checkout", "reason": "HighLatency"},
     "alert checkout HighLatency", "warning"),
    ({"type": "alert"}, "alert unknown", "warning"),
])
def test_defaults(payload: dict[str, Any], title: str, severity: str) -> None:
    [sig] = parse(dict(payload, timestamp="2026-11-02T09:00:00Z"))
    assert (sig.title, sig.severity, sig.state, sig.source) == (title, severity, "firing",
                                                                "native")
    assert sig.dedup_key.startswith("derived:")


def test_derived_identity_folds_resends_and_separates_different_things() -> None:
    one = {"type": "dependency", "service": "checkout", "downstream": "payment"}
    assert parse(dict(one, event_time_ms=T))[0].signal_id == parse(
        dict(one, event_time_ms=T + 30_000))[0].signal_id
    assert parse(dict(one, event_time_ms=T))[0].signal_id != parse(
        dict(one, downstream="inventory", event_time_ms=T))[0].signal_id
    fingerprinted = parse(dict(one, fingerprint="fp-1", event_time_ms=T))[0]
    assert fingerprinted.dedup_key == "fp-1"


def test_correlation_keys_from_labels_and_annotations() -> None:
    [sig] = parse({"type": "alert", "event_time_ms": T,
                   "labels": {"tocsin_incident_id": "inc_0123456789abcdef"},
                   "annotations": {"trace_id": "abc"}})
    assert (sig.incident_id, sig.trace_id) == ("inc_0123456789abcdef", "abc")


def test_a_normalized_signal_re_enters_unchanged() -> None:
    original = Signal(dedup_key="a1bc48475b20e73d|1580948278432", type="alert",
                      state="resolved", source="alertmanager", service="checkout",
                      severity="critical", title="t", event_time_ms=T, starts_at_ms=T - 5,
                      ends_at_ms=T, labels={"alertname": "X"}, occurrences=3)
    assert parse(original.to_dict(), provider="native") == [original]
    assert sniff(original.to_dict()) == "native"


def test_receive_time_dates_a_native_signal_without_time() -> None:
    assert parse({"type": "alert"}, received_ms=T)[0].event_time_ms == T
    with pytest.raises(IntakeError, match="event_time_ms: required"):
        parse({"type": "alert"})


@pytest.mark.parametrize("payload,message", [
    ({"type": "incident", "event_time_ms": T}, "type: Input should be"),
    ({"type": "alert", "event_time_ms": "now"}, "event_time_ms: Input should be a valid int"),
    ({"type": "alert", "event_time_ms": T, "servcie": "x"}, "servcie: Extra inputs"),
    ({"type": "alert", "event_time_ms": T, "severity": "high"}, "severity: Input should be"),
    ({"type": "alert", "event_time_ms": T, "labels": {"a": 1}}, r"labels\.a: Input should"),
    ({"type": "runtime", "event_time_ms": T, "runtime_subtype": "segfault"},
     "runtime_subtype: Input should be"),
    ({"type": "alert", "timestamp": "2026-11-02T09:00:00"}, "timestamp: not a time with a"),
    ({"type": "alert", "event_time_ms": T, "source": "datadog"}, "source: invalid value"),
    ({"type": "alert", "event_time_ms": T, "signal_id": "sig_0000000000000000"},
     "signal_id: does not match"),
    ({"type": "alert", "event_time_ms": T, "occurrences": 0}, "occurrences: Input should"),
    ({"type": "alert", "event_time_ms": T, "service": ""}, "service: String should have"),
])
def test_invalid_native_signals_name_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(IntakeError, match=message):
        parse(payload, provider="native")
