"""Signal intake, the pure part: webhook payloads, exactly as real systems send them, into
Tocsin's normalized :class:`Signal` (ADR 0007).

``parse(payload)`` sniffs the provider from the payload's shape (or takes the one it is
told), and returns the payload's signals in payload order; ``intake(payload)`` also says
what gave no signal and what the sender truncated. Same payload, same signals: there is no
clock here, so a payload without a time of its own (a PagerDuty acknowledge) is dated by
the ``received_ms`` the caller passes, and refused without it.

Providers (each module's docstring has its shape and mapping): alertmanager (webhook
versions 4 and 3), grafana (unified and legacy alerting), pagerduty (Events v2; V1, V2 and
V3 webhooks), sentry, kubernetes (Events, Pods), ci (GitHub deployment_status, GitLab
deployment, generic JSON), native. Real bodies of each, with their sources, are in
``tests/fixtures/webhooks``.
"""

from __future__ import annotations

from collections.abc import Callable

from tocsin.processors.signals import (
    alertmanager,
    deploys,
    grafana,
    kubernetes,
    native,
    pagerduty,
    sentry,
)
from tocsin.processors.signals.model import (
    SOURCES,
    IntakeError,
    IntakeResult,
    Signal,
    signal_id,
)
from tocsin.processors.signals.sniff import sniff

Parser = Callable[[object, int | None], IntakeResult]

PARSERS: dict[str, Parser] = {
    alertmanager.NAME: alertmanager.parse,
    grafana.NAME: grafana.parse,
    pagerduty.NAME: pagerduty.parse,
    sentry.NAME: sentry.parse,
    kubernetes.NAME: kubernetes.parse,
    deploys.NAME: deploys.parse,
    native.NAME: native.parse,
}
PROVIDERS: tuple[str, ...] = tuple(PARSERS)


def intake(payload: object, provider: str | None = None,
           received_ms: int | None = None) -> IntakeResult:
    """Signals of one payload, with what it did not give (skipped parts, truncation).

    ``provider`` forces a format instead of sniffing; a payload that does not fit it
    raises :class:`IntakeError` naming the missing or wrong field. ``received_ms`` is the
    intake's receive time, used only for payloads that carry no time of their own.
    """
    name = sniff(payload) if provider is None else provider
    parser = PARSERS.get(name)
    if parser is None:
        raise IntakeError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}")
    try:
        return parser(payload, received_ms)
    except IntakeError as exc:
        if exc.provider is not None:
            raise
        raise exc.of(name) from exc  # the Signal's own checks do not know the provider


def parse(payload: object, provider: str | None = None,
          received_ms: int | None = None) -> list[Signal]:
    """The payload's signals, in payload order (see :func:`intake`)."""
    return list(intake(payload, provider, received_ms).signals)


__all__ = [
    "PROVIDERS",
    "SOURCES",
    "IntakeError",
    "IntakeResult",
    "Signal",
    "intake",
    "parse",
    "signal_id",
    "sniff",
]
