"""Which provider sent a payload, told by its shape alone (as the reference intake did).

Order matters where shapes overlap: Grafana's webhook is Alertmanager's layout plus its own
keys, so it is tried first; a native signal's ``type`` (alert | runtime | deploy |
dependency) never collides with a Kubernetes watch event's ``type`` (ADDED, MODIFIED …).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tocsin.processors.signals import (
    alertmanager,
    deploys,
    grafana,
    kubernetes,
    native,
    pagerduty,
    sentry,
)
from tocsin.processors.signals.fields import kind_of
from tocsin.processors.signals.model import IntakeError

Matcher = Callable[[Mapping[str, Any]], bool]

# (provider, shape test, what the shape is), in sniffing order.
SHAPES: tuple[tuple[str, Matcher, str], ...] = (
    (grafana.NAME, grafana.matches, grafana.SHAPE),
    (alertmanager.NAME, alertmanager.matches, alertmanager.SHAPE),
    (pagerduty.NAME, pagerduty.matches, pagerduty.SHAPE),
    (sentry.NAME, sentry.matches, sentry.SHAPE),
    (kubernetes.NAME, kubernetes.matches, kubernetes.SHAPE),
    (deploys.NAME, deploys.matches, deploys.SHAPE),
    (native.NAME, native.matches, native.SHAPE),
)


def expected() -> str:
    return "; ".join(shape for _, _, shape in SHAPES)


def sniff(payload: object) -> str:
    """The provider whose shape ``payload`` has; :class:`IntakeError` naming every shape
    looked for when none fits."""
    if not isinstance(payload, Mapping):
        raise IntakeError(f"unrecognised payload: a JSON object is expected, got "
                          f"{kind_of(payload)} (send one payload per request, or a "
                          f"Kubernetes List). Expected one of: {expected()}")
    for name, test, _ in SHAPES:
        if test(payload):
            return name
    if isinstance(payload.get("alerts"), list):
        raise IntakeError(f'unrecognised payload: it has "alerts" but version '
                          f'{payload.get("version")!r} is neither Alertmanager\'s "4" nor '
                          f'Grafana\'s "1" (nor Alertmanager\'s older "3"). Expected one of: '
                          f'{expected()}')
    raise IntakeError(f"unrecognised payload (keys: {', '.join(sorted(payload)[:8]) or 'none'}"
                      f"). Expected one of: {expected()}")
