"""Each rendering of a report shows its timeline (ADR 0019) as a few figures per series,
after the incident's facts and before the response; a report without one renders as
before."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.unit.report_fixtures import report
from tests.unit.test_render_response import GOLDEN, renderings
from tocsin.processors.render import (
    markdown,
    md,
    pagerduty_note,
    slack,
    slack_blocks,
    timeline_lines,
)
from tocsin.processors.timeline import Timeline, TimelineConfig, duration_bin

B = 30_000
T0 = 1_793_612_400_000  # 2026-11-02T09:40:00Z, a bucket's start: the timeline's onset
BEFORE = 10  # buckets of the default 5 min buffer


def hist(**counts: int) -> dict[int, int]:
    """A duration histogram from ``ms80=60, ms950=40``-style counts."""
    out: dict[int, int] = {}
    for key, n in counts.items():
        b = duration_bin(float(key[2:]))
        out[b] = out.get(b, 0) + n
    return out


def make_timeline(during: int = 15, after: int = 20, resolve: bool = True,
                  complete: bool = True, config: TimelineConfig | None = None,
                  steps: bool = True, latency: bool = True) -> dict[str, Any]:
    """BEFORE quiet buckets (1 error in 100 requests, p50 82 ms, p95 122 ms), ``during``
    bad ones (40 errors, p95 944 ms), then ``after`` quiet ones without errors; resolved
    at the first of those unless ``resolve`` is False."""
    t = Timeline.start(T0, config or TimelineConfig(), B)
    quiet, bad = hist(ms80=90, ms120=10), hist(ms80=60, ms950=40)
    for k in range(BEFORE + during + after):
        i = t.first + k
        if resolve and k == BEFORE + during:
            t.resolve(i * B)
        t.advance(i)
        phase = "before" if k < BEFORE else "during" if k < BEFORE + during else "after"
        t.put_errors(i, {"before": 1, "during": 40, "after": 0}[phase])
        if steps:
            t.put_step(i, 100, ({} if not latency else bad if phase == "during" else quiet))
    view: dict[str, Any] = t.view(complete=complete)
    return view


def with_timeline(timeline: dict[str, Any]) -> dict[str, Any]:
    return {**report(), "timeline": timeline}


EXPECTED = [
    "errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 after",
    "requests per 30 s steady at 100",
    "error rate 1% before, peak 40% at 09:40:00Z, 0% after",
    "p50 steady at 82 ms",
    "p95 122 ms before, peak 944 ms at 09:40:00Z, 122 ms after",
]


def test_the_lines_say_before_peak_and_after_per_series() -> None:
    assert timeline_lines(make_timeline()) == EXPECTED


def test_an_open_incident_says_latest_instead_of_after() -> None:
    # "latest": the mean of as many of the newest points as the buffer before onset has
    lines = timeline_lines(make_timeline(after=BEFORE, resolve=False, complete=False))
    assert lines[0] == "errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 latest"
    lines = timeline_lines(make_timeline(after=4, resolve=False, complete=False))
    assert lines[0] == "errors per 30 s 1 before, peak 40 at 09:40:00Z, 24 latest"
    assert all(" after" not in line for line in lines)


def test_series_without_data_are_left_out() -> None:
    assert timeline_lines(make_timeline(steps=False)) == [
        "errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 after"]
    no_durations = timeline_lines(make_timeline(latency=False))
    assert [line.split(" ")[0] for line in no_durations] == ["errors", "requests", "error"]


def test_a_timeline_without_points_says_so() -> None:
    t = Timeline.start(T0, TimelineConfig(), B).view()
    assert t["points"] == []
    assert timeline_lines(t) == ["no points yet"]


def test_markdown_shows_the_timeline_after_the_facts() -> None:
    out = markdown(with_timeline(make_timeline())).split("\n")
    start = out.index("## Timeline")
    assert out[start - 2].startswith("- **Window:**") and out[start - 1] == ""
    assert out[start + 1] == ""
    assert out[start + 2:start + 7] == [f"- {md(line)}" for line in EXPECTED]
    assert out[start + 2] == r"- errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 after"
    assert out[start + 4] == r"- error rate 1% before, peak 40% at 09:40:00Z, 0% after"
    assert out[start + 7:start + 9] == ["", "## Next checks"]


def test_markdown_timeline_comes_before_the_response() -> None:
    r = with_timeline(make_timeline())
    r["response"] = {"phase": "acknowledged", "acknowledged": {"by": "ana", "at_ms": T0},
                     "hypotheses": [], "notes": [], "notes_total": 0}
    out = markdown(r)
    assert out.index("## Timeline") < out.index("## Response") < out.index("## Next checks")


def test_slack_shows_the_timeline_in_one_section() -> None:
    blocks = slack_blocks(with_timeline(make_timeline()))["blocks"]
    texts = [b.get("text", {}).get("text", "") for b in blocks]
    found = [i for i, t in enumerate(texts) if t.startswith("*Timeline*")]
    assert len(found) == 1
    i = found[0]
    assert blocks[i]["type"] == "section"
    assert texts[i] == "*Timeline*\n" + "\n".join(f"• {slack(line)}" for line in EXPECTED)
    assert texts[i + 1].startswith("*Next checks*")
    assert blocks[:i] + blocks[i + 1:] == slack_blocks(report())["blocks"]


def test_pagerduty_note_shows_the_timeline_as_plain_lines() -> None:
    note = pagerduty_note(with_timeline(make_timeline())).split("\n")
    start = note.index("Timeline:")
    assert note[start - 1].startswith("Onset ")
    assert note[start + 1:start + 6] == [f"- {line}" for line in EXPECTED]
    assert note[start + 6] == "Next checks:"
    assert "\n".join(note[:start] + note[start + 6:]) == pagerduty_note(report())


def test_only_the_timeline_part_differs() -> None:
    out = markdown(with_timeline(make_timeline())).split("\n")
    start = out.index("## Timeline")
    assert "\n".join(out[:start - 1] + out[start + 7:]) == markdown(report())


def test_a_report_without_a_timeline_renders_the_same_bytes_as_before() -> None:
    r = report()
    assert "timeline" not in r
    digests = {k: hashlib.sha256(v).hexdigest() for k, v in renderings(r).items()}
    assert digests == GOLDEN
    for out in renderings(r).values():
        assert b"Timeline" not in out and b"timeline" not in out


def test_a_timeline_not_complete_yet_says_until_when() -> None:
    r = with_timeline(make_timeline(after=4, resolve=False, complete=False))
    note = "(until 09:49:30Z, not complete)"
    assert f"## Timeline {md(note)}" in markdown(r).split("\n")
    assert any(b.get("text", {}).get("text", "").startswith(f"*Timeline* {note}\n")
               for b in slack_blocks(r)["blocks"])
    assert f"Timeline {note}:" in pagerduty_note(r).split("\n")


def test_a_truncated_timeline_says_how_many_points_were_left_out() -> None:
    t = make_timeline(during=40, after=4, config=TimelineConfig(max_points=20))
    assert t["truncated"] and t["omitted"] > 0
    truncated = f"(truncated: {t['omitted']} points left out of the series)"
    r = with_timeline(t)
    assert f"## Timeline {md(truncated)}" in markdown(r).split("\n")
    assert any(b.get("text", {}).get("text", "").startswith(f"*Timeline* {truncated}\n")
               for b in slack_blocks(r)["blocks"])
    assert f"Timeline {truncated}:" in pagerduty_note(r).split("\n")
    # The figures still cover the points left out: the means, the peak.
    assert timeline_lines(t)[0].startswith("errors per 30 s 1 before, peak 40 at ")
    assert t["summary"]["errors"]["mean"] == round((BEFORE + 40 * 40) / (BEFORE + 44), 6)


def test_both_notes_together() -> None:
    t = make_timeline(during=40, after=0, resolve=False, complete=False,
                      config=TimelineConfig(max_points=20))
    assert pagerduty_note(with_timeline(t)).split("\n")[3] == (
        "Timeline (until 10:00:00Z, not complete) "
        f"(truncated: {t['omitted']} points left out of the series):")


def test_renderings_are_a_function_of_the_report() -> None:
    a, b = with_timeline(make_timeline()), with_timeline(make_timeline())
    assert renderings(a) == renderings(b)
