"""Serving a stored report in each format: JSON is the stored canonical bytes themselves;
the renderings are pure functions of them, so every reader gets the same bytes for the
same report hash (topic, DuckDB, HTTP, CLI)."""

from __future__ import annotations

import json

from tocsin.processors.render import markdown, pagerduty_note, slack_blocks
from tocsin.processors.render_text import text
from tocsin.processors.report import canonical_json

RENDERINGS = {
    "json": "application/json",
    "text": "text/plain",  # UTF-8, as every rendering
    "md": "text/markdown",
    "slack": "application/json",
    "pagerduty": "text/plain",
}


def render_report(body: str, fmt: str) -> tuple[bytes, str]:
    """``body`` is the report's canonical JSON as stored."""
    if fmt == "json":
        return body.encode(), RENDERINGS[fmt]
    report = json.loads(body)
    if fmt == "text":
        return text(report).encode(), RENDERINGS[fmt]
    if fmt == "md":
        return markdown(report).encode(), RENDERINGS[fmt]
    if fmt == "slack":
        return canonical_json(slack_blocks(report)), RENDERINGS[fmt]
    return pagerduty_note(report).encode(), RENDERINGS[fmt]
