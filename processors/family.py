"""Error families: which step of a wide event failed first, and the family it belongs to.

The family key is the reference one, ``service:step:code`` with ``:`` and ``\\`` escaped by a
backslash, qualified by the environment (ADR 0001).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

FAILING = frozenset({"error", "timeout", "partial", "aborted"})
SUPPRESSED = "suppressed"
DEFAULT_CODE = {"error": "ERROR", "timeout": "TIMEOUT", "partial": "PARTIAL", "aborted": "ABORTED"}


class Family(NamedTuple):
    env: str
    service: str
    step: str
    error_code: str

    @property
    def key(self) -> str:
        """``service:step:code``, escaped: the family's name in every output."""
        return f"{escape(self.service)}:{escape(self.step)}:{escape(self.error_code)}"

    @property
    def qualified(self) -> str:
        """The key with its environment: unique across environments."""
        return f"{escape(self.env)}:{self.key}"


def escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(":", "\\:")


def anchor(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(step, error code) of the first failing step, or None when nothing failed.

    The ``steps`` list is searched first, in order; without a failing entry there, the
    event's own ``step`` and ``status`` decide. A failure without a code gets the status's
    default code (``TIMEOUT`` for a timeout, ``ERROR`` for an error, ...).
    """
    for step in event.get("steps") or ():
        status = step.get("status", "ok")
        if status in FAILING:
            return step["name"], step.get("error_code") or DEFAULT_CODE[status]
    status = event.get("status", "ok")
    if status in FAILING:
        return event["step"], event.get("error_code") or DEFAULT_CODE[status]
    return None


def failing_downstream(event: Mapping[str, Any]) -> str | None:
    """The service the anchor step was calling, when the event names one."""
    for step in event.get("steps") or ():
        if step.get("status", "ok") in FAILING:
            down = step.get("downstream")
            return down.get("service") if down else None
    down = event.get("downstream")
    return down.get("service") if down else None


def family_of(event: Mapping[str, Any]) -> Family | None:
    found = anchor(event)
    if found is None:
        return None
    return Family(event.get("env") or "prod", event["service"], found[0], found[1])
