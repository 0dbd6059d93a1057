"""(b3) The rules file of the event path with step rules on (ADR 0022): a latency rule and
an error-rate rule on every step of every service of the workload (a block per service
without ``step``: every step of it), for ``TOCSIN_RULES``.

Thresholds no steady step of the workload crosses by its own level (durations 5 to 30 ms,
5% errors); the replay spikes (30 consecutive errors of a fresh step) cross 50% on their
own step, and the latency rule's lift compares a step with its baseline windows, so some
of these families do open: the worker's lifecycle counters are printed with the figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .worker import Throughput
from .workload import SERVICES

LATENCY_THRESHOLD_MS = 2000
LATENCY_LIFT = 3.0
ERROR_RATE_THRESHOLD = 0.5
MIN_REQUESTS = 20


def rules_text(services: tuple[str, ...] = SERVICES) -> str:
    """The TOML: ``[[latency]]`` and ``[[error_rate]]`` for each service."""
    lines = ["# python -m bench (b3): a latency and an error-rate rule on every step",
             "version = 1", ""]
    for s in services:
        lines += ["[[latency]]", f'service = "{s}"', f"threshold_ms = {LATENCY_THRESHOLD_MS}",
                  f"lift = {LATENCY_LIFT}", f"min_requests = {MIN_REQUESTS}", "",
                  "[[error_rate]]", f'service = "{s}"', f"threshold = {ERROR_RATE_THRESHOLD}",
                  f"min_requests = {MIN_REQUESTS}", ""]
    return "\n".join(lines)


def write_rules(path: Path) -> Path:
    path.write_text(rules_text())
    return path


@dataclass(frozen=True)
class RulesRun:
    """(b3): the --role detect worker of (b2) under the rules file; None when it failed
    (``error``) or did not run (``skipped``)."""

    throughput: Throughput | None = None
    lifecycle: dict[str, Any] = field(default_factory=dict)  # /healthz at the end
    error: str | None = None
    skipped: str | None = None
