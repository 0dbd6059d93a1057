"""Renderings keep untrusted text as text (untrusted text stays text): hostile payloads in every
free-text field, checked in Markdown, Slack Block Kit and the PagerDuty note."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.report_fixtures import hostile, report
from tocsin.processors.render import (
    markdown,
    md,
    pagerduty_note,
    slack,
    slack_blocks,
    spread_lines,
)

HOSTILE = [
    "<!channel> pay up",
    "<!here|here> and <@U024BE7LH> and <#C024BE7LH>",
    "@channel @here @everyone wake up",
    "<https://evil.example|click me>",
    "[click](javascript:alert(1)) ![x](https://evil.example/p.png)",
    "<script>alert(1)</script> <img src=x onerror=alert(1)>",
    "**bold** _it_ `code` ~~s~~ # heading | pipe",
    "line1\nline2\r\x00\x07",
    "&amp; &lt; already escaped",
]


def hostile_report(text: str) -> dict[str, Any]:
    """The demo report with ``text`` in every signal's free text and, as span data would
    carry it (service.name, span names), in the trace snapshots' services and steps."""
    r = report(hostile(text))
    origin = {"service": text, "step": text, "span_id": "ab" * 8, "kind": "server",
              "error_code": text, "downstream": None}
    hop = {"service": text, "step": text, "span_id": "ab" * 8, "error": True}
    r["snapshots"] = {
        "blast": {"capture": "ok", "affected_requests": 3, "distinct_users": 2,
                  "users_estimated": False, "affected_services": [text, "checkout"],
                  "top_services": [], "top_families": [], "sample_traces": [text],
                  "incomplete_traces": 0},
        "propagation": {"capture": "ok", "origin": origin, "path": [hop, hop],
                        "sample_trace": text,
                        "origins": [{"service": text, "step": text, "traces": 3}]},
        "at_opening": {"at_ms": 0, **r["snapshots"]},
    }
    return r


def test_spread_lines_come_from_the_trace_snapshots() -> None:
    lines = spread_lines(hostile_report("payment"))
    assert lines[0] == ("Started in payment payment, named by 3 failing traces; path "
                        "payment → payment; sample trace payment (capture ok).")
    assert lines[1] == "Spread: 3 failing requests, 2 users, services payment, checkout " \
        "(capture ok)."
    assert lines[2] == "At opening (1970-01-01T00:00:00.000Z): 5 errors."


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_has_no_live_markup(text: str) -> None:
    out = markdown(hostile_report(text))
    assert "<script" not in out and "<img" not in out and "<!channel>" not in out
    assert "](javascript:" not in out and "![x](" not in out
    assert "\x00" not in out and "\x07" not in out
    # Every table row still has exactly four cells: no injected pipes or newlines.
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert rows and all(len(re.findall(r"(?<!\\)\|", r)) == 5 for r in rows)


@pytest.mark.parametrize("text", HOSTILE)
def test_slack_blocks_have_no_mentions_links_or_raw_angle_brackets(text: str) -> None:
    message = slack_blocks(hostile_report(text))
    mrkdwn = [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"
              and "text" in b]
    mrkdwn += [f["text"] for b in message["blocks"] for f in b.get("fields", [])]
    mrkdwn += [e["text"] for b in message["blocks"] for e in b.get("elements", [])]
    for t in mrkdwn:
        assert "<" not in t and ">" not in t, t
        assert not re.search(r"(?<!\u200d)@(channel|here|everyone)\b", t, re.I), t
    json.dumps(message)  # valid JSON for the API


def test_slack_escaping_follows_slacks_rules() -> None:
    assert slack("a & b < c > d") == "a &amp; b &lt; c &gt; d"
    assert slack("<!channel>") == "&lt;!channel&gt;"
    assert slack("@here") == "@\u200dhere"


def test_markdown_escaping_is_reversible_text() -> None:
    assert md("[a](b)") == r"\[a\]\(b\)"
    assert md("<b>") == "&lt;b&gt;"


@pytest.mark.parametrize("text", HOSTILE)
def test_pagerduty_note_is_plain_text(text: str) -> None:
    note = pagerduty_note(hostile_report(text))
    assert "\x00" not in note and "\x07" not in note
    assert len(note) <= 25_000


def test_renderings_cite_hash_and_cause() -> None:
    r = report()
    assert r["report_hash"] in markdown(r)
    assert r["report_hash"] in json.dumps(slack_blocks(r))
    assert r["report_hash"] in pagerduty_note(r)
    assert "dependency (high)" in pagerduty_note(r)
