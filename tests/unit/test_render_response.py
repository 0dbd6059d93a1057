"""The response section (what people did, ADR 0016) in every rendering: phase, who
acknowledged, mitigated and resolved, hypotheses at their status, the latest notes with a
count of the rest; people's text stays text in each target; a report without a response
renders exactly as it did before there was one."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.report_fixtures import MIN, ONSET, SIGNALS, STATE, report
from tests.unit.test_render import HOSTILE
from tocsin.processors.classify import classify
from tocsin.processors.render import iso, markdown, md, pagerduty_note, slack, slack_blocks
from tocsin.processors.report import (
    IncidentState,
    Opening,
    build,
    canonical_json,
    response_section,
)

SCRIPT = "<script>alert(1)</script>"
MARKDOWN = "**x** [l](http://e)"
AS_OF = ONSET + 5 * MIN
RESOLVED = replace(STATE, status="resolved", phase="resolved")


def act(kind: str, actor: str, minute: int, note: str | None = None,
        title: str | None = None, status: str | None = None) -> dict[str, Any]:
    """One operator action as the lifecycle event gives it to response_section."""
    return {"kind": kind, "actor": actor, "at_ms": ONSET + minute * MIN, "note": note,
            "title": title, "hypothesis_status": status}


def at(minute: int) -> str:
    return iso(ONSET + minute * MIN)


def demo_actions(note: str = "raised the pool", name: str = "bo",
                 title: str = "pool exhausted") -> list[dict[str, Any]]:
    """ana acknowledges and proposes a hypothesis, ``name`` notes ``note``, confirms it and
    mitigates, cy resolves with a note."""
    return [act("acknowledged", "ana", 1),
            act("hypothesis", "ana", 2, title=title, status="proposed"),
            act("annotated", name, 3, note=note),
            act("hypothesis", name, 4, title=title, status="confirmed"),
            act("mitigated", name, 5),
            act("resolved", "cy", 6, note="fixed")]


def with_response(actions: list[dict[str, Any]],
                  state: IncidentState = RESOLVED) -> dict[str, Any]:
    """The fixtures' demo report (same signals, opening and time), with people's actions."""
    return build(state, SIGNALS, classify(state.facts, SIGNALS), AS_OF, None,
                 Opening(ONSET, STATE, None), response=response_section(state, actions))


def slack_texts(message: dict[str, Any]) -> list[str]:
    """Every mrkdwn string of a Block Kit message."""
    blocks = message["blocks"]
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    texts += [f["text"] for b in blocks for f in b.get("fields", [])]
    texts += [e["text"] for b in blocks for e in b.get("elements", [])]
    return texts


def response_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks between the cause's reason and the next checks."""
    blocks = message["blocks"]
    start = 3  # header, the status fields, the reason
    end = next(i for i, b in enumerate(blocks)
               if b.get("text", {}).get("text", "").startswith("*Next checks*"))
    return list(blocks[start:end])


# A report without a response: the same bytes as before the response section existed.

# sha256 of each rendering of the fixtures' demo report, as rendered before this change.
GOLDEN = {
    "md": "f18068feba6d9cf673c14472c6af509e963a41b112989e3fa0b8fed03ec06965",
    "slack": "5741573580190fb3638f88500d0ec707b0c198111a18c2dca9ae64275c6ab0fe",
    "pagerduty": "f73d9bd2453e084470d6a67a62431e7320c5265cc2ead8902f503f6ffe86a776",
}


def renderings(r: dict[str, Any]) -> dict[str, bytes]:
    """Each format's bytes, as streams.web.reports serves them."""
    return {"md": markdown(r).encode(), "slack": canonical_json(slack_blocks(r)),
            "pagerduty": pagerduty_note(r).encode()}


def test_a_report_without_a_response_renders_the_same_bytes_as_before() -> None:
    r = report()
    assert "response" not in r
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in renderings(r).items()}
    assert digests == GOLDEN


def test_built_without_response_is_the_report_without_one_and_renders_alike() -> None:
    plain_report = report()
    built = build(STATE, SIGNALS, classify(STATE.facts, SIGNALS), AS_OF, None,
                  Opening(ONSET, STATE, None), response=None)
    assert built == plain_report
    assert renderings(built) == renderings(plain_report)
    for out in renderings(built).values():
        assert b"Response" not in out and b"Hypotheses" not in out and b"Notes" not in out


def test_only_the_response_part_differs_when_there_is_one() -> None:
    state = replace(STATE, phase="acknowledged")
    without = build(state, SIGNALS, classify(state.facts, SIGNALS), AS_OF, None,
                    Opening(ONSET, STATE, None))
    responded = with_response([act("acknowledged", "ana", 1)], state)
    # The same report but for the response (and the hash that covers it).
    stripped = {k: v for k, v in responded.items() if k != "response"}
    stripped["report_hash"] = without["report_hash"]
    assert stripped == without
    same_hash = {**responded, "report_hash": without["report_hash"]}

    lines = markdown(same_hash).split("\n")
    start = lines.index("## Response")
    assert lines[start - 1] == ""
    assert "\n".join(lines[:start - 1] + lines[start + 4:]) == markdown(without)

    message = slack_blocks(same_hash)
    blocks = response_blocks(message)
    assert len(blocks) == 1
    assert {**message, "blocks": [b for b in message["blocks"] if b not in blocks]} == \
        slack_blocks(without)

    note = pagerduty_note(same_hash).split("\n")
    assert note[3] == f"Response: phase acknowledged; acknowledged by ana at {at(1)}"
    assert "\n".join(note[:3] + note[4:]) == pagerduty_note(without)


# What each rendering says of the response.

def test_markdown_shows_the_response() -> None:
    out = markdown(with_response(demo_actions()))
    section = out[out.index("## Response"):out.index("## Next checks")]
    assert section == "\n".join([
        "## Response", "",
        "- **Phase:** resolved",
        f"- **Acknowledged:** ana at {at(1)}",
        f"- **Mitigated:** bo at {at(5)}",
        f"- **Resolved:** cy at {at(6)}",
        "", "### Hypotheses", "",
        f"- **confirmed** · pool exhausted · by bo at {at(4)} (proposed by ana)",
        "", "### Notes", "",
        f"- {at(3)} · bo (annotated): raised the pool",
        f"- {at(6)} · cy (resolved): fixed",
        "", ""])
    # It comes right after the summary, before the next checks.
    assert out.index("- **Window:**") < out.index("## Response") < out.index("## Next checks")


def test_slack_shows_the_response() -> None:
    message = slack_blocks(with_response(demo_actions()))
    blocks = response_blocks(message)
    assert blocks == [
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": "*Phase*\nresolved"},
            {"type": "mrkdwn", "text": f"*Acknowledged*\nana at {at(1)}"},
            {"type": "mrkdwn", "text": f"*Mitigated*\nbo at {at(5)}"},
            {"type": "mrkdwn", "text": f"*Resolved*\ncy at {at(6)}"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            f"*Hypotheses*\n• *confirmed* pool exhausted (by bo at {at(4)}; proposed by "
            "ana)")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            f"*Notes*\n• {at(3)} *bo* (annotated): raised the pool\n"
            f"• {at(6)} *cy* (resolved): fixed")}},
    ]
    json.dumps(message)  # still valid JSON for the API


def test_pagerduty_note_shows_the_response() -> None:
    note = pagerduty_note(with_response(demo_actions())).split("\n")
    start = note.index(next(ln for ln in note if ln.startswith("Response:")))
    assert note[start - 1].startswith("Onset ")
    assert note[start:note.index("Next checks:")] == [
        f"Response: phase resolved; acknowledged by ana at {at(1)}; mitigated by bo at "
        f"{at(5)}; resolved by cy at {at(6)}",
        "Hypotheses:",
        f"- confirmed: pool exhausted (by bo at {at(4)}; proposed by ana)",
        "Notes:",
        f"- {at(3)} bo (annotated): raised the pool",
        f"- {at(6)} cy (resolved): fixed",
    ]


def test_only_what_happened_is_said() -> None:
    """Nobody acknowledged or resolved yet: no such lines; a machine resolve names no one."""
    noted = with_response([act("annotated", "ana", 1, note="looking")],
                          replace(STATE, phase="triggered"))
    for out in (markdown(noted), json.dumps(slack_blocks(noted)), pagerduty_note(noted)):
        assert "cknowledged" not in out and "itigated" not in out and "Resolved" not in out
        assert "ypotheses" not in out and "looking" in out
    assert f"Response: phase triggered\nNotes:\n- {at(1)} ana (annotated): looking" in \
        pagerduty_note(noted)

    machine = with_response([act("acknowledged", "ana", 1)], RESOLVED)
    assert machine["response"]["resolved"] is None
    out = markdown(machine)
    assert f"- **Phase:** resolved\n- **Acknowledged:** ana at {at(1)}\n\n## Next" in out
    assert "Resolved:" not in out and "resolved by" not in pagerduty_note(machine)


def test_hypotheses_keep_their_latest_status_and_are_capped() -> None:
    actions = [act("hypothesis", "ana", 1, title="dns", status="proposed"),
               act("hypothesis", "bo", 2, title="dns", status="rejected"),
               *[act("hypothesis", "ana", 3 + n, title=f"h{n}", status="proposed")
                 for n in range(9)]]
    r = with_response(actions)
    out = markdown(r)
    assert f"- **rejected** · dns · by bo at {at(2)} (proposed by ana)" in out
    assert "**proposed** · dns" not in out
    assert "### Hypotheses (first 8 of 10, 2 more hypotheses not shown)" in out
    assert "· h6 ·" in out and "· h7 ·" not in out
    hypotheses = response_blocks(slack_blocks(r))[1]["text"]["text"]
    assert hypotheses.startswith("*Hypotheses* (first 8 of 10, 2 more hypotheses not shown)\n")
    assert hypotheses.count("\n• ") == 8 and "*rejected* dns" in hypotheses
    note = pagerduty_note(r)
    assert "Hypotheses (first 8 of 10, 2 more hypotheses not shown):" in note
    assert "- rejected: dns (by bo" in note and "- proposed: h7 " not in note


def test_the_latest_notes_are_shown_and_the_rest_counted() -> None:
    actions = [act("annotated", "ana", n, note=f"note {n:02d}") for n in range(60)]
    r = with_response(actions)
    assert (len(r["response"]["notes"]), r["response"]["notes_total"]) == (50, 60)
    shown = [f"note {n:02d}" for n in range(55, 60)]
    more = "latest 5 of 60, 55 more notes not shown"

    out = markdown(r)
    assert f"### Notes ({more})" in out
    assert all(f"(annotated): {md(s)}" in out for s in shown)
    assert "note 54" not in out and "note 00" not in out
    assert out.index("note 55") < out.index("note 59")

    notes = response_blocks(slack_blocks(r))[-1]["text"]["text"]
    assert notes.split("\n")[0] == f"*Notes* ({more})"
    assert [ln.rsplit(": ", 1)[1] for ln in notes.split("\n")[1:]] == shown

    note = pagerduty_note(r)
    assert f"Notes ({more}):" in note and "note 54" not in note
    assert all(f"(annotated): {s}\n" in note for s in shown)


def test_a_long_note_is_clipped_in_every_rendering() -> None:
    r = with_response([act("annotated", "ana", 1, note="y" * 3_990 + "TAIL")])
    for out in (markdown(r), json.dumps(slack_blocks(r), ensure_ascii=False),
                pagerduty_note(r)):
        assert "y" * 499 + "…" in out and "y" * 500 not in out and "TAIL" not in out


# People's text stays text.

def hostile_response(text: str) -> dict[str, Any]:
    """``text`` as a responder's name, a hypothesis title and a note."""
    return with_response(demo_actions(note=text, name=text, title=text))


def test_markdown_escapes_peoples_text() -> None:
    r = with_response(demo_actions(note=f"{SCRIPT} {MARKDOWN}", name=SCRIPT, title=MARKDOWN))
    out = markdown(r)
    assert "<script" not in out and "**x**" not in out and "[l](" not in out
    assert (f"- {at(3)} · &lt;script&gt;alert\\(1\\)&lt;/script&gt; (annotated): "
            "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\*\\*x\\*\\* \\[l\\]\\(http://e\\)"
            ) in out
    assert f"- **Mitigated:** {md(SCRIPT)} at {at(5)}" in out
    assert f"- **confirmed** · {md(MARKDOWN)} · by {md(SCRIPT)} at {at(4)}" in out


def test_slack_escapes_peoples_text() -> None:
    r = with_response(demo_actions(note=f"{SCRIPT} {MARKDOWN} <!channel> @here",
                                   name=SCRIPT, title=MARKDOWN))
    fields, hypotheses, notes = response_blocks(slack_blocks(r))
    assert {"type": "mrkdwn", "text": f"*Mitigated*\n&lt;script&gt;alert(1)&lt;/script&gt; "
            f"at {at(5)}"} in fields["fields"]
    assert f"• *confirmed* {MARKDOWN} (by &lt;script&gt;" in hypotheses["text"]["text"]
    assert (f"• {at(3)} *&lt;script&gt;alert(1)&lt;/script&gt;* (annotated): "
            "&lt;script&gt;alert(1)&lt;/script&gt; **x** [l](http://e) &lt;!channel&gt; "
            "@\u200dhere") in notes["text"]["text"]


def test_pagerduty_keeps_peoples_text_plain_and_on_its_line() -> None:
    forged = f"{SCRIPT}\nReport sha256:forged\r\x00\x07"
    r = with_response(demo_actions(note=forged, name=MARKDOWN))
    note = pagerduty_note(r)
    assert f"- {at(3)} {MARKDOWN} (annotated): {SCRIPT} Report sha256:forged \n" in note
    assert f"mitigated by {MARKDOWN} at {at(5)}" in note
    assert "\x00" not in note and "\x07" not in note and "\r" not in note
    assert [ln for ln in note.split("\n") if ln.startswith("Report ")] == \
        [f"Report {r['report_hash']}"]


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_response_has_no_live_markup(text: str) -> None:
    out = markdown(hostile_response(text))
    section = out[out.index("## Response"):out.index("## Next checks")]
    assert md(text) in section
    assert "<script" not in section and "<img" not in section and "<!channel>" not in section
    assert "](javascript:" not in section and "![x](" not in section
    assert "\x00" not in section and "\x07" not in section
    assert not re.search(r"(?<!\\)\*\*bold", section) and not re.search(r"(?<!\\)`", section)
    # Each response item stays on its own line.
    assert section.count("\n- ") == 1 + 3 + 1 + 2


@pytest.mark.parametrize("text", HOSTILE)
def test_slack_response_has_no_mentions_links_or_raw_angle_brackets(text: str) -> None:
    message = slack_blocks(hostile_response(text))
    flat = text.replace("\n", " ").replace("\r", " ")
    assert slack(flat) in response_blocks(message)[2]["text"]["text"]
    for t in slack_texts(message):
        assert "<" not in t and ">" not in t, t
        assert not re.search(r"(?<!\u200d)@(channel|here|everyone)\b", t, re.I), t
    json.dumps(message)


@pytest.mark.parametrize("text", HOSTILE)
def test_pagerduty_response_is_plain_text(text: str) -> None:
    note = pagerduty_note(hostile_response(text))
    assert "\x00" not in note and "\x07" not in note
    lines = note.split("\n")
    response = lines[lines.index(next(ln for ln in lines if ln.startswith("Response:"))):
                     lines.index("Next checks:")]
    assert len(response) == 1 + 2 + 3  # the response line, a hypothesis, two notes
