"""News on an open incident (ADR 0018): what a new report version adds that a person on
call would want to be told — a signal newly correlated or gone, the likely cause changed,
a new failing family on its failing traces — and nothing else (a re-evaluation, a new
sample trace, a count that grew are not news).

A report version is reduced to its :class:`Basis`; :func:`news` compares two. News has a
signature (what was added and removed and the cause it leaves), and :func:`cooled` keeps
the same news from being told again within the cooldown, in event time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

NEWS_KINDS = frozenset({"alert", "runtime", "deploy", "dependency"})
COOLDOWN_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class Basis:
    """What news is measured against: the signals a report cites (``kind:id``), its cause
    (kind, rule) and the failing families on its failing traces."""

    lines: frozenset[str]
    cause: tuple[str, str]
    families: frozenset[str]

    def to_list(self) -> list[Any]:
        return [sorted(self.lines), list(self.cause), sorted(self.families)]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Basis:
        lines, cause, families = raw
        return cls(frozenset(lines), (cause[0], cause[1]), frozenset(families))


def basis(report: dict[str, Any]) -> Basis:
    lines = {f"{row['kind']}:{row['id']}" for row in report["evidence"]
             if row["kind"] in NEWS_KINDS}
    lines |= {f"alert:{a['id']}" for a in report["alerts"]}
    lines |= {f"runtime:{r['id']}" for r in report["runtime"]}
    if report.get("suspect_change"):
        lines.add(f"deploy:{report['suspect_change']['id']}")
    families = {f["family"] for f in report["snapshots"]["blast"].get("top_families") or ()}
    cause = report["cause"]
    return Basis(frozenset(lines), (cause["kind"], cause["rule_id"]), frozenset(families))


def news(before: Basis, after: Basis) -> dict[str, Any] | None:
    """What ``after`` tells that ``before`` did not, or None: ``added`` and ``removed``
    (``kind:id`` lines, ``family:<key>`` for a new failing family), ``cause`` (``from`` and
    ``to``, ``kind/rule``) when it changed, and ``signature``."""
    added = sorted(after.lines - before.lines) + \
        [f"family:{f}" for f in sorted(after.families - before.families)]
    removed = sorted(before.lines - after.lines)
    cause = None if after.cause == before.cause else {
        "from": "/".join(before.cause), "to": "/".join(after.cause)}
    if not added and not removed and cause is None:
        return None
    material = orjson.dumps([added, removed, "/".join(after.cause)])
    return {"added": added, "removed": removed, "cause": cause,
            "signature": "news_" + hashlib.sha256(material).hexdigest()[:16]}


def cooled(told: dict[str, int], signature: str, at_ms: int,
           cooldown_ms: int = COOLDOWN_MS) -> bool:
    """Whether news with this signature may be told at ``at_ms`` (event time): not told
    before, or told at least ``cooldown_ms`` earlier."""
    last = told.get(signature)
    return last is None or at_ms - last >= cooldown_ms
