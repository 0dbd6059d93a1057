"""Sniffing: every real payload is told by its shape; anything else is refused with a
message naming every shape that was looked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tocsin.processors.signals import PROVIDERS, IntakeError, intake, parse, sniff

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
PROVIDER_OF_DIR = {"alertmanager": "alertmanager", "grafana": "grafana",
                   "pagerduty": "pagerduty", "kubernetes": "kubernetes"}


def payloads() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for folder in PROVIDER_OF_DIR:
        for path in sorted((FIXTURES / folder).iterdir()):
            if path.suffix == ".json":
                out.append((f"{folder}/{path.name}", json.loads(path.read_text())))
            elif path.suffix == ".ndjson":
                for n, line in enumerate(path.read_text().splitlines()):
                    out.append((f"{folder}/{path.name}:{n + 1}", json.loads(line)))
    return out


PAYLOADS = payloads()
SNIPPETS = {"kubernetes/pod-status-lastState-oomkilled-k8s-docs.json"}  # not a payload


def test_every_fixture_folder_is_covered() -> None:
    assert len(PAYLOADS) == 4 + 3 + 6 + 3 + 11


@pytest.mark.parametrize("name,payload", PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_every_fixture_sniffs_to_its_provider(name: str, payload: Any) -> None:
    if name in SNIPPETS:
        with pytest.raises(IntakeError):
            sniff(payload)
        return
    provider = PROVIDER_OF_DIR[name.split("/")[0]]
    assert sniff(payload) == provider
    result = intake(payload, received_ms=1)
    assert result.provider == provider
    assert all(s.source == provider for s in result.signals)
    assert result.signals or result.skipped, "a payload gives signals or says why not"


@pytest.mark.parametrize("name,payload", [p for p in PAYLOADS if p[0] not in SNIPPETS],
                         ids=[n for n, _ in PAYLOADS if n not in SNIPPETS])
def test_forcing_another_provider_is_refused_with_the_field(name: str, payload: Any) -> None:
    own = sniff(payload)
    for other in PROVIDERS:
        if other == own:
            continue
        with pytest.raises(IntakeError, match=rf"^{other} payload: "):
            intake(payload, provider=other, received_ms=1)


@pytest.mark.parametrize("payload,message", [
    ([{"type": "alert"}], "a JSON object is expected, got an array"),
    ("text", "got a string"),
    (None, "got null"),
    ({}, r"unrecognised payload \(keys: none\)"),
    ({"hello": "world"}, r"keys: hello"),
    ({"version": "2", "alerts": []}, "neither Alertmanager's \"4\" nor Grafana's \"1\""),
    ({"type": "ADDED"}, "unrecognised payload"),
])
def test_unrecognised_payloads_name_what_was_looked_for(payload: Any, message: str) -> None:
    with pytest.raises(IntakeError, match=message) as caught:
        sniff(payload)
    text = str(caught.value)
    for looked_for in ("Alertmanager webhook", "Grafana alerting webhook",
                       "PagerDuty Events API v2", "Sentry webhook", "Kubernetes Event",
                       "CI deploy notification", "Tocsin native signal"):
        assert looked_for in text


def test_an_unknown_forced_provider_is_refused() -> None:
    with pytest.raises(IntakeError, match="unknown provider 'datadog'; known: alertmanager"):
        parse({}, provider="datadog")


def test_intake_error_is_a_value_error_with_field_and_provider() -> None:
    with pytest.raises(ValueError, match="alerts") as caught:
        parse({"version": "4", "alerts": [{"status": "firing"}]})
    error = caught.value
    assert isinstance(error, IntakeError)
    assert (error.provider, error.field) == ("alertmanager", "alerts[0].startsAt")
    assert str(error) == ("alertmanager payload: alerts[0].startsAt: required, an RFC 3339 "
                          "time with a UTC offset")


def test_a_native_refusal_lists_at_most_five_problems() -> None:
    with pytest.raises(IntakeError, match=r"; and \d+ more$"):
        parse({f"field{n}": n for n in range(9)}, provider="native")
