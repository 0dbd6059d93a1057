"""Label conventions shared by the providers: service, env, severity, correlation keys, and
the Alertmanager fingerprint of a label set (ADR 0007).

Labels are searched before annotations, keys in the order listed; the first non-empty
value wins. Keys are matched exactly (Prometheus label names are case-sensitive).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from tocsin.processors.signals.model import Severity

SERVICE_KEYS = ("service", "service_name", "app", "app_kubernetes_io_name", "job")
ENV_KEYS = ("env", "environment", "deployment_environment")
SEVERITY_KEYS = ("severity", "priority", "level")

INCIDENT_KEYS = ("tocsin_incident_id", "incident_id")
TRACE_KEYS = ("tocsin_trace_id", "trace_id")
ERROR_CODE_KEYS = ("tocsin_error_code", "error_code")
DOWNSTREAM_KEYS = ("tocsin_downstream", "downstream", "dependency")

# Words seen in the wild for each level. "error" is critical because PagerDuty, whose
# four-level scale is the most widely emitted one, pages (high urgency) on critical and
# error alike, and Prometheus rule sets that use "error" use it for paging alerts.
SEVERITY_WORDS: dict[str, Severity] = {
    **dict.fromkeys(("critical", "crit", "fatal", "emergency", "emerg", "alert", "error",
                     "err", "page", "high", "major", "disaster", "p1", "p2", "sev1", "sev2",
                     "sev-1", "sev-2", "s1", "s2"), "critical"),
    **dict.fromkeys(("warning", "warn", "medium", "moderate", "average", "minor", "p3",
                     "sev3", "sev-3", "s3"), "warning"),
    **dict.fromkeys(("info", "informational", "information", "notice", "low", "debug",
                     "none", "ok", "p4", "p5", "sev4", "sev5", "sev-4", "sev-5", "s4",
                     "s5"), "info"),
}


def first(maps: tuple[Mapping[str, str], ...], keys: tuple[str, ...]) -> str | None:
    """The first non-empty value of ``keys``, searching each map in turn."""
    for found in maps:
        for key in keys:
            value = found.get(key)
            if value:
                return value
    return None


def severity_of(word: str | None, default: Severity) -> Severity:
    """Map a provider's severity word (any case) onto critical / warning / info."""
    if not word:
        return default
    return SEVERITY_WORDS.get(word.strip().lower(), default)


class Correlation(NamedTuple):
    """The keys that tie a signal to an incident (ADR 0009): incident id, trace id, error
    code, downstream dependency."""

    incident_id: str | None
    trace_id: str | None
    error_code: str | None
    downstream: str | None


def correlation(*maps: Mapping[str, str]) -> Correlation:
    return Correlation(
        first(maps, INCIDENT_KEYS), first(maps, TRACE_KEYS),
        first(maps, ERROR_CODE_KEYS), first(maps, DOWNSTREAM_KEYS),
    )


# FNV-1a, 64 bit, as in prometheus/common model/fnv.go.
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set, as 16 hex digits.

    prometheus/common ``LabelSet.Fingerprint``: label names sorted (byte order), then for
    each name FNV-1a-64 over ``name``, ``0xff``, ``value``, ``0xff``, printed ``%016x``.
    It reproduces the fingerprints Alertmanager itself sent in the fixtures (tested); Grafana
    fingerprints also cover labels it strips before sending, so for Grafana this is only a
    stable stand-in, not Grafana's own value.
    """
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return f"{h:016x}"
