"""Anchor step and family key (ADR 0001)."""

from __future__ import annotations

from typing import Any

import pytest

from tocsin.processors.family import Family, anchor, escape, family_of


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"step": "GET /", "status": "ok"}, None),
        ({"step": "GET /", "status": "suppressed", "error_code": "X"}, None),
        ({"step": "GET /", "status": "error", "error_code": "E1"}, ("GET /", "E1")),
        ({"step": "GET /", "status": "timeout"}, ("GET /", "TIMEOUT")),
        ({"step": "GET /", "status": "error"}, ("GET /", "ERROR")),
        ({"step": "GET /", "status": "partial"}, ("GET /", "PARTIAL")),
        ({"step": "GET /", "status": "aborted", "error_code": None}, ("GET /", "ABORTED")),
        # The first failing step of the request is the anchor, not the request itself.
        ({"step": "POST /checkout", "status": "error", "error_code": "CHK_500",
          "steps": [{"name": "cart.load", "status": "ok"},
                    {"name": "payment.charge", "status": "error", "error_code": "PMT_502"},
                    {"name": "inventory.reserve", "status": "timeout"}]},
         ("payment.charge", "PMT_502")),
        ({"step": "POST /checkout", "status": "error", "error_code": "CHK_500",
          "steps": [{"name": "cart.load", "status": "ok"}]}, ("POST /checkout", "CHK_500")),
    ],
)
def test_anchor(event: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert anchor(event) == expected


def test_family_key_escapes_colons_and_backslashes() -> None:
    fam = Family("prod", "svc:a", "GET /x\\y", "E:1")
    assert fam.key == "svc\\:a:GET /x\\\\y:E\\:1"
    assert fam.qualified == "prod:" + fam.key
    assert escape("a:b") != escape("a\\:b")


def test_family_of_defaults_env_to_prod() -> None:
    assert family_of({"service": "s", "step": "p", "status": "error", "error_code": "E"}) == \
        Family("prod", "s", "p", "E")
