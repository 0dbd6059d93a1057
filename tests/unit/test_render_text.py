"""The terminal rendering of a report (``tocsin report``'s default, ``?format=text``):
underlined headings, an aligned evidence table, the timeline drawn in block characters with
its figures, the response; untrusted text stays inert on a terminal (no escape sequence,
control or bidirectional character, one line per item) and is never escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.report_fixtures import report
from tests.unit.test_render import HOSTILE, hostile_report
from tests.unit.test_render_response import demo_actions, with_response
from tests.unit.test_render_timeline import make_timeline
from tocsin.processors.render import iso, timeline_lines
from tocsin.processors.render_text import SPARKS, term, text, timeline_chart, width
from tocsin.processors.report import seal
from tocsin.streams.web.reports import RENDERINGS, render_report

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "report_demo.json"

# Hostile text for a terminal: colours, cursor moves and screen clears (CSI, 7-bit and C1),
# a window title and an OSC 8 hyperlink, a DCS string, carriage return and backspace
# overwriting, bidi overrides and isolates, line breaks of every kind, Markdown.
TERMINAL_HOSTILE = [
    "\x1b[31mred\x1b[0m \x1b[2J\x1b[H\x1b[1;1Hcleared",
    "\x1b]0;owned title\x07 \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "\x1bP+q544e\x1b\\ dcs \x9b31m c1 csi \x9d0;t\x9c c1 osc \x1bc reset \x1b7\x1b8",
    "safe\rEVIL overwrite \x08\x08\x08 back",
    "amount \u202e0001$\u202c and \u2067isolate\u2069 \u200f rtl",
    "line1\nline2\r\nline3\u2028line4\u2029line5\x85line6\x0bline7\x0cline8\tend",
    "**bold** _it_ `code` [x](javascript:alert(1)) # heading | pipe \\ back",
    "\x00\x07\x1b[",  # a sequence cut short at the end
]
INERT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def golden() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GOLDEN.read_text())
    return loaded


def full_report(note: str = "raised the pool", **timeline: Any) -> dict[str, Any]:
    """The demo report with people's actions and a timeline (resolved at 09:47:30Z)."""
    return seal({**with_response(demo_actions(note=note)), "timeline": make_timeline(**timeline)})


def is_heading(lines: list[str], i: int) -> bool:
    """Whether line ``i`` is a heading: after a blank line (or first), underlined."""
    return bool(lines[i]) and i + 1 < len(lines) and (i == 0 or not lines[i - 1]) \
        and bool(lines[i + 1]) and set(lines[i + 1]) <= {"-", "="} \
        and width(lines[i + 1]) == width(lines[i])


def section(out: str, title: str) -> list[str]:
    """The lines under a heading (after its underline), up to the blank before the next."""
    lines = out.split("\n")
    start = lines.index(title)
    assert is_heading(lines, start)
    end = next((i - 1 for i in range(start + 2, len(lines)) if is_heading(lines, i)),
               len(lines))
    return lines[start + 2:end]


def assert_inert(out: str) -> None:
    assert "\x1b" not in out
    assert not INERT.search(out)
    assert "\r" not in out and "\t" not in out


# ---------------------------------------------------------------------- layout


def test_the_golden_report_renders_headings_facts_table_and_hashes() -> None:
    r = golden()
    out = text(r)
    lines = out.split("\n")
    assert lines[0] == f"Incident {r['incident']['id']}: {r['incident']['family']}"
    assert lines[1] == "=" * len(lines[0])
    assert lines[2] == "Status        active · env prod · onset 2026-11-02T09:40:03.000Z"
    assert lines[3] == "Where         checkout payment.charge, error PMT_502, calling payment"
    assert lines[4].startswith("Likely cause  dependency (high): dependency signal on payment")
    for title in ("Cause candidates", "Next checks", "Where it started, how far it spread",
                  "Evidence", "Alerts", "Runtime faults", "Deploys"):
        i = lines.index(title)
        assert lines[i - 1] == "" and lines[i + 1] == "-" * len(title)
    assert "Timeline" not in lines and "Response" not in lines  # neither is in this report
    assert lines[-3:] == [f"report    {r['report_hash']}",
                          f"evidence  {r['evidence_fingerprint']}", ""]
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert all(line == line.rstrip() for line in lines)
    # next checks are numbered, the spread is in sentences
    checks = section(out, "Next checks")
    assert checks[0] == f" 1. {r['next_checks'][0]}"
    assert section(out, "Where it started, how far it spread")[0] == \
        "- Failing downstream named by the events: payment (capture partial, no traces yet)."


def test_the_evidence_table_has_aligned_columns() -> None:
    r = golden()
    rows = section(text(r), "Evidence")
    header, rule, *body = [line for line in rows if line]
    assert header.split() == ["time", "kind", "source", "summary"]
    assert set(rule) <= {"─", " "}
    starts = [m.start() for m in re.finditer("─+", rule)]
    assert [header.index(h) for h in ("time", "kind", "source", "summary")] == starts
    assert len(body) == len(r["evidence"])
    for line, e in zip(body, r["evidence"], strict=True):
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        assert cells == [iso(e["time_ms"]), e["kind"], e["source"], e["summary"]]


def test_long_cells_are_clipped_to_the_table_width() -> None:
    r = hostile_report("x" * 500)
    rows = section(text(r), "Evidence")
    assert all(width(line) <= 100 for line in rows)
    assert any(line.endswith("x…") for line in rows)


def test_the_cause_candidates_mark_the_one_that_decided() -> None:
    rows = [line for line in section(text(golden()), "Cause candidates") if line]
    decided = [line for line in rows if line.startswith("▸")]
    assert len(decided) == 1 and "dependency_signal" in decided[0] and "sig_dep" in decided[0]
    assert any(line.startswith("Tiebreak: failing_downstream is closer") for line in rows)


def test_links_are_shown_only_when_they_are_http_urls() -> None:
    out = text(golden())
    assert "link  CheckoutErrorRate high: http://prometheus:9090/graph?g0.expr=rate" in out
    assert "change  checkout 1.5.0: https://github.com/acme/checkout/pull/412" in out
    r = golden()
    r["alerts"][0]["url"] = "javascript:alert(1)"
    assert "javascript:" not in text(r)


# ---------------------------------------------------------------------- timeline


def test_the_timeline_is_drawn_as_a_chart_with_its_figures() -> None:
    r = full_report()
    out = text(r)
    body = section(out, "Timeline")
    assert body[0] == "30 s buckets from 09:35:00Z to 09:57:30Z"
    chart = timeline_chart(r["timeline"])
    assert chart == body[2:2 + len(chart)]
    rows = {line.split()[0]: line for line in chart[:4]}
    assert set(rows) == {"errors", "requests", "error", "p95"}
    errors = rows["errors"]
    spark = errors.split()[2]
    assert set(spark) <= set(SPARKS) and len(spark) == 45  # one column per 30 s bucket
    assert errors.split()[1] == "0" and errors.endswith(" 40")  # lowest and highest
    assert spark[:10] == SPARKS[1] * 10 and spark[10:25] == SPARKS[-1] * 15 \
        and spark[25:] == SPARKS[0] * 20  # 1 before, 40 during, 0 after
    assert rows["error"].endswith(" 40%") and rows["p95"].endswith(" 944 ms")
    # the onset (09:40:00Z, column 10) and the resolution (09:47:30Z, column 25) marked
    marks = chart[4]
    offset = errors.index(spark)
    assert marks[offset + 10] == "▲" and marks[offset + 25] == "△"
    assert chart[5].split() == ["09:35:00Z", "09:57:30Z"]
    assert chart[6].strip() == "▲ onset 09:40:00Z   △ resolved 09:47:30Z"
    # then the same sentences as every other rendering
    assert [f"- {line}" for line in timeline_lines(r["timeline"])] == \
        [line for line in body if line.startswith("- ")]


def test_a_long_timeline_is_merged_into_columns_and_shows_the_points_left_out() -> None:
    r = full_report(during=400, after=30)
    chart = timeline_chart(r["timeline"])
    spark = chart[0].split()[2]
    assert len(spark) == 60 and "╌" in spark
    assert "(truncated: " in text(r)


def test_an_open_incident_has_no_resolution_mark_and_says_it_is_not_complete() -> None:
    r = full_report(during=3, after=2, resolve=False, complete=False, latency=False)
    out = text(r)
    assert "Timeline (until 09:42:30Z, not complete)" in out
    chart = timeline_chart(r["timeline"])
    assert [line.split()[0] for line in chart[:3]] == ["errors", "requests", "error"]
    assert "p95" not in chart[3]  # no durations: no p95 row
    assert "△" not in "\n".join(chart) and "▲ onset 09:40:00Z" in chart[-1]


def test_a_timeline_without_points_draws_no_chart() -> None:
    assert timeline_chart({**make_timeline(), "points": []}) == []


# ---------------------------------------------------------------------- response


def test_the_response_says_who_acted_hypotheses_and_notes() -> None:
    body = section(text(full_report()), "Response")
    assert body[:4] == ["Phase         resolved",
                        f"Acknowledged  ana at {iso(1_793_612_403_000 + 60_000)}",
                        f"Mitigated     bo at {iso(1_793_612_403_000 + 5 * 60_000)}",
                        f"Resolved      cy at {iso(1_793_612_403_000 + 6 * 60_000)}"]
    assert "Hypotheses:" in body and "Notes:" in body
    assert any(line.startswith("- confirmed: pool exhausted (by bo") for line in body)
    assert any(line.endswith("bo (annotated): raised the pool") for line in body)


def test_without_response_or_timeline_there_is_neither_section() -> None:
    out = text(report())
    assert "\nResponse\n" not in out and "\nTimeline" not in out


# ---------------------------------------------------------------------- untrusted text


@pytest.mark.parametrize("hostile", TERMINAL_HOSTILE + HOSTILE)
def test_untrusted_text_stays_inert_on_a_terminal(hostile: str) -> None:
    r = hostile_report(hostile)
    r = seal({**r, "response": with_response(demo_actions(
        note=hostile, name=hostile, title=hostile))["response"]})
    out = text(r)
    assert_inert(out)
    # no escaping: no backslash that the shown text does not have
    assert ("\\" in out) == ("\\" in term(hostile))
    # one line per item: the evidence table keeps one row per evidence row
    rows = [line for line in section(out, "Evidence") if line]
    assert len(rows) == 2 + len(r["evidence"])
    # the note is one line, its text shown as the terminal would show it, nothing escaped
    notes = [line for line in out.split("\n") if "(annotated):" in line]
    assert len(notes) == 1
    assert notes[0].endswith(f"(annotated): {term(hostile)}".rstrip())


def test_term_removes_whole_sequences_and_keeps_the_words() -> None:
    assert term("\x1b[31mred\x1b[0m") == "red"
    assert term("\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\") == "click"
    assert term("\x1b]0;title\x07after") == "after"
    assert term("\x9b2J\x9d0;t\x9cok") == "ok"
    assert term("a\rb\x08c\nd\r\ne\tf") == "a bc d e f"
    assert term("\u202eabc\u202c\u2066x\u2069") == "abcx"
    assert term("**b** [l](u) <s> &amp; \\") == "**b** [l](u) <s> &amp; \\"
    assert term("日本 e\u0301 👩\u200d💻") == "日本 e\u0301 👩\u200d💻"  # text is text


def test_wide_characters_keep_the_table_aligned() -> None:
    title = "日本語のタイトル"
    rows = [line for line in section(text(hostile_report(title)), "Evidence") if line]
    summary_at = rows[0].index("summary")
    shown = [line for line in rows[2:] if title in line]
    assert len(shown) == 4  # the four signals' rows
    assert all(width(line[:line.index(title)]) == summary_at for line in shown)


# ---------------------------------------------------------------------- determinism, HTTP


def test_the_same_report_gives_the_same_bytes() -> None:
    r = full_report()
    assert text(r) == text(json.loads(json.dumps(r))) == text(full_report())


def test_served_as_plain_text_from_the_stored_bytes() -> None:
    r = golden()
    body = json.dumps(r)
    data, content_type = render_report(body, "text")
    assert data == text(r).encode() and content_type == RENDERINGS["text"]
    assert content_type.startswith("text/plain")
    assert "charset" not in content_type  # aiohttp refuses a charset in content_type
