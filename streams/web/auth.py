"""Who may read and who may write (ADR 0014).

Two kinds of bearer token, configured apart:

- API tokens (``TOCSIN_API_TOKENS``, name → token) guard what reads the projection: the
  query surface, incidents, reports and, unless ``TOCSIN_METRICS_PUBLIC`` is set,
  ``/metrics``.
- Intake tokens (``TOCSIN_INTAKE_TOKENS``) each belong to a source and are bound to what it
  may send: the providers whose payloads it may post, the signal kinds those may carry,
  and whether it may post OTLP traces. An Alertmanager token cannot post a deploy.

Tokens are compared with :func:`hmac.compare_digest` against every configured token (no
early exit), and no answer ever echoes a header's value.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from tocsin.processors.signals import PROVIDERS
from tocsin.processors.signals.model import SIGNAL_TYPES

# What a provider's payloads carry: the kinds a shorthand token for it may post.
PROVIDER_KINDS: dict[str, frozenset[str]] = {
    "alertmanager": frozenset({"alert"}),
    "grafana": frozenset({"alert"}),
    "pagerduty": frozenset({"alert"}),
    "sentry": frozenset({"alert", "runtime"}),
    "kubernetes": frozenset({"runtime"}),
    "ci": frozenset({"deploy"}),
    "native": frozenset(SIGNAL_TYPES),
}
TRACES = "otlp"  # the shorthand name of a token that may post only traces


@dataclass(frozen=True)
class Grant:
    """What one intake token's source may send."""

    source: str
    token: str
    providers: frozenset[str]
    kinds: frozenset[str]
    traces: bool

    def refuses_provider(self, provider: str) -> str | None:
        if provider not in self.providers:
            return (f"the token of source {self.source!r} may not post {provider} payloads "
                    f"(it may post: {', '.join(sorted(self.providers)) or 'no signals'})")
        return None

    def refuses_kinds(self, kinds: set[str]) -> str | None:
        extra = sorted(kinds - self.kinds)
        if extra:
            return (f"the token of source {self.source!r} may not post {', '.join(extra)} "
                    f"signals (it may post: {', '.join(sorted(self.kinds)) or 'none'})")
        return None


class ConfigError(ValueError):
    """A token configuration that cannot be honoured; the message says which entry."""


def grant_of(source: str, value: Any) -> Grant:
    """One ``TOCSIN_INTAKE_TOKENS`` entry: ``"token"`` when the source's name is a provider
    (or ``otlp``), else ``{"token": ..., "providers": [...], "kinds": [...], "traces": bool}``.
    """
    if isinstance(value, str):
        if source == TRACES:
            return Grant(source, value, frozenset(), frozenset(), True)
        if source not in PROVIDERS:
            raise ConfigError(
                f"intake token {source!r}: a bare token needs a provider name as its source "
                f"({', '.join(PROVIDERS)} or {TRACES}); otherwise give "
                '{"token": "...", "providers": [...], "kinds": [...], "traces": false}')
        return Grant(source, value, frozenset({source}), PROVIDER_KINDS[source], False)
    if not isinstance(value, dict) or not isinstance(value.get("token"), str):
        raise ConfigError(f"intake token {source!r}: needs a string \"token\"")
    unknown = set(value) - {"token", "providers", "kinds", "traces"}
    if unknown:
        raise ConfigError(f"intake token {source!r}: unknown keys {sorted(unknown)}")
    providers = value.get("providers", [])
    if not isinstance(providers, list) or not set(providers) <= set(PROVIDERS):
        raise ConfigError(f"intake token {source!r}: providers must be a list of "
                          f"{', '.join(PROVIDERS)}")
    default_kinds: set[str] = set()
    for p in providers:
        default_kinds |= PROVIDER_KINDS[p]
    kinds = value.get("kinds", sorted(default_kinds))
    if not isinstance(kinds, list) or not set(kinds) <= set(SIGNAL_TYPES):
        raise ConfigError(f"intake token {source!r}: kinds must be a list of "
                          f"{', '.join(SIGNAL_TYPES)}")
    traces = value.get("traces", False)
    if not isinstance(traces, bool):
        raise ConfigError(f"intake token {source!r}: traces must be true or false")
    if len(value["token"]) < 8:
        raise ConfigError(f"intake token {source!r}: shorter than 8 characters")
    return Grant(source, value["token"], frozenset(providers), frozenset(kinds), traces)


def _match(offered: str, tokens: list[tuple[str, Any]]) -> Any:
    """The value whose token equals ``offered``: every token compared, no early exit."""
    found = None
    raw = offered.encode()
    for token, value in tokens:
        if hmac.compare_digest(raw, token.encode()):
            found = value
    return found


def bearer(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return header[len("Bearer "):].strip() or None


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str

    @property
    def headers(self) -> dict[str, str]:
        if self.status != 401:
            return {}
        return {"WWW-Authenticate": 'Bearer realm="tocsin"' if "missing" in self.message
                else 'Bearer realm="tocsin", error="invalid_token"'}


MISSING = Refusal(401, "missing bearer token (Authorization: Bearer ...)")
UNKNOWN = Refusal(401, "unknown bearer token")


class Access:
    """The configured tokens, checked per request."""

    def __init__(self, api_tokens: dict[str, str], intake_tokens: dict[str, Any]) -> None:
        for name, token in api_tokens.items():
            if not isinstance(token, str) or len(token) < 8:
                raise ConfigError(f"API token {name!r}: a string of at least 8 characters")
        self.api = sorted((token, name) for name, token in api_tokens.items())
        grants = [grant_of(source, value) for source, value in sorted(intake_tokens.items())]
        self.intake = [(g.token, g) for g in grants]

    @property
    def api_guarded(self) -> bool:
        return bool(self.api)

    @property
    def intake_guarded(self) -> bool:
        return bool(self.intake)

    def reader(self, header: str | None) -> str | Refusal | None:
        """The API token's name; None when no API tokens are configured (open reads)."""
        if not self.api:
            return None
        offered = bearer(header)
        if offered is None:
            return MISSING
        name = _match(offered, self.api)
        return UNKNOWN if name is None else str(name)

    def sender(self, header: str | None) -> Grant | Refusal | None:
        """The intake token's grant; None when no intake tokens are configured."""
        if not self.intake:
            return None
        offered = bearer(header)
        if offered is None:
            return MISSING
        grant = _match(offered, self.intake)
        return UNKNOWN if grant is None else grant


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
