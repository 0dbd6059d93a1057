"""Renderings of a triage report: Markdown, Slack Block Kit, PagerDuty note, terminal text.

Untrusted text (alert titles and annotations, error codes, service names, labels) stays
text in every target (untrusted text stays text):

- Markdown: every character Markdown or HTML could act on is backslash-escaped or
  entity-encoded, so ``[x](javascript:...)``, ``![img](...)``, ``<script>`` and
  autolinks render literally.
- Slack mrkdwn: ``&``, ``<``, ``>`` become ``&amp;``, ``&lt;``, ``&gt;`` (Slack's own rule),
  which defuses ``<!channel>``, ``<@U123>`` and ``<url|label>``; bare ``@channel``,
  ``@here`` and ``@everyone`` get a zero-width joiner so no client turns them into
  mentions; formatting characters are shown as themselves.
- PagerDuty note: plain text, control characters removed, length capped.
- Terminal text (:func:`text`): nothing is escaped; what a terminal would act on is
  removed (:func:`term`): escape sequences whole (colours, cursor moves, titles, OSC 8
  hyperlinks), C0 and C1 controls, backspace, carriage returns and the bidirectional
  overrides; line breaks become spaces, so each item stays on its line.

People's text in a report's ``response`` section (names, hypothesis titles, notes) is
untrusted text like the rest and goes through the same helper for each target; in Slack
and the PagerDuty note it is also kept to one line (as :func:`md` does), so a note cannot
forge lines of its own.

Links Tocsin itself builds (provider URLs) are written only when they are http(s) URLs,
and escaped like any other text.

A report's ``timeline`` (ADR 0019; absent from older reports, which then render as before)
is shown as a few figures per series, the same sentences in every target
(:func:`timeline_lines`), after the incident's facts and before the response; the terminal
text draws it too, a row of block characters per series (:func:`timeline_chart`).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
ZWJ = "\u200d"
PAGERDUTY_NOTE_MAX = 25_000
NOTES_SHOWN = 5  # the latest notes a rendering shows; the rest are counted
HYPOTHESES_SHOWN = 8
NOTE_SHOWN_MAX = 500  # characters of a note a rendering shows


def iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[
        :-3] + "Z"


def md(text: object) -> str:
    """Markdown-safe text: HTML entities first, then Markdown's punctuation escaped."""
    s = CONTROL.sub("", str(text))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("\n", " ").replace("\r", " ")


def slack(text: object) -> str:
    """Slack mrkdwn-safe text (Slack's escaping rules plus defused bare mentions)."""
    s = CONTROL.sub("", str(text))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MENTION.sub(lambda m: "@" + ZWJ + m.group(1), s)


def plain(text: object) -> str:
    return CONTROL.sub("", str(text))


def _safe_url(url: object) -> str | None:
    if isinstance(url, str) and re.match(r"^https?://[^\s<>\"'`]+$", url):
        return url
    return None


def _headline(report: dict[str, Any]) -> tuple[str, str, str]:
    inc = report["incident"]
    cause = report["cause"]
    return inc["family"], f"{cause['kind']} ({cause['confidence']})", cause["reason"]


def _some(names: list[str], shown: int = 8) -> str:
    """At most ``shown`` names, then how many more (a blast can name 1,000 services)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def spread_lines(report: dict[str, Any]) -> list[str]:
    """Where the failure started and how far it spread, from the report's snapshots, in
    plain sentences (each renderer escapes them); nothing is said that they do not hold."""
    snaps = report["snapshots"]
    p, b = snaps["propagation"], snaps["blast"]
    lines = []
    origin = p.get("origin")
    if origin and origin.get("step"):  # from traces: service and step of the origin span
        hops = " → ".join(h["service"] or "(missing span)" for h in p["path"])
        named = next((o["traces"] for o in p.get("origins", ())
                      if (o["service"], o["step"]) == (origin["service"], origin["step"])),
                     None)
        share = f", named by {named} failing traces" if named is not None else ""
        lines.append(f"Started in {origin['service']} {origin['step']}{share}; path {hops}; "
                     f"sample trace {p['sample_trace']} (capture {p['capture']}).")
    elif origin:
        lines.append(f"Failing downstream named by the events: {origin['service']} "
                     f"(capture {p['capture']}, no traces yet).")
    if "distinct_users" in b and b["affected_requests"]:
        users = b["distinct_users"]
        about = "about " if b["users_estimated"] else ""
        lines.append(f"Spread: {b['affected_requests']} failing requests, {about}{users} "
                     f"users, services {_some(b['affected_services'])} "
                     f"(capture {b['capture']}).")
    else:
        lines.append(f"Spread: {b['affected_requests']} errors counted by detection in "
                     f"{_some(b['affected_services'])} (capture {b['capture']}, no "
                     "traces yet).")
    opening = snaps.get("at_opening")
    if opening is not None and opening["blast"]["affected_requests"] is not None:
        lines.append(f"At opening ({iso(opening['at_ms'])}): "
                     f"{opening['blast']['affected_requests']} "
                     f"{'failing requests' if 'distinct_users' in opening['blast'] else 'errors'}.")
    return lines


def _one_line(text: object) -> str:
    return str(text).replace("\n", " ").replace("\r", " ")


def _clip(text: object, most: int) -> str:
    s = str(text)
    return s if len(s) <= most else s[:most - 1] + "…"


def _more(shown: int, total: int, what: str, which: str) -> str:
    """How many of ``total`` are shown, in plain words ("" when all are)."""
    more = total - shown
    return f"{which} {shown} of {total}, {more} more {what} not shown" if more > 0 else ""


def _response(report: dict[str, Any]) -> dict[str, Any] | None:
    """What a rendering shows of the report's ``response`` (people's actions, ADR 0016),
    as raw values each renderer escapes: the phase, who acknowledged, mitigated and
    resolved and when, the first hypotheses, the latest notes and how many were left
    out. None when the report has no response section."""
    r = report.get("response")
    if r is None:
        return None
    hypotheses = list(r.get("hypotheses") or ())
    notes = list(r.get("notes") or ())
    shown_notes = notes[max(len(notes) - NOTES_SHOWN, 0):]
    total = max(int(r.get("notes_total", len(notes))), len(notes))
    return {
        "phase": r.get("phase"),
        "who": [(label, r[key]["by"], r[key]["at_ms"]) for key, label in (
            ("acknowledged", "Acknowledged"), ("mitigated", "Mitigated"),
            ("resolved", "Resolved")) if r.get(key)],
        "hypotheses": hypotheses[:HYPOTHESES_SHOWN],
        "hypotheses_more": _more(min(len(hypotheses), HYPOTHESES_SHOWN), len(hypotheses),
                                 "hypotheses", "first"),
        "notes": [{**n, "note": _clip(n["note"], NOTE_SHOWN_MAX)} for n in shown_notes],
        "notes_more": _more(len(shown_notes), total, "notes", "latest"),
    }


def _markdown_response(view: dict[str, Any]) -> list[str]:
    lines = ["", "## Response", "", f"- **Phase:** {md(view['phase'])}",
             *[f"- **{label}:** {md(by)} at {iso(at_ms)}" for label, by, at_ms in view["who"]]]
    if view["hypotheses"]:
        more = f" ({md(view['hypotheses_more'])})" if view["hypotheses_more"] else ""
        lines += ["", f"### Hypotheses{more}", "",
                  *[f"- **{md(h['status'])}** · {md(h['title'])} · by {md(h['by'])} at "
                    f"{iso(h['at_ms'])} (proposed by {md(h['proposed_by'])})"
                    for h in view["hypotheses"]]]
    if view["notes"]:
        more = f" ({md(view['notes_more'])})" if view["notes_more"] else ""
        lines += ["", f"### Notes{more}", "",
                  *[f"- {iso(n['at_ms'])} · {md(n['by'])} ({md(n['kind'])}): {md(n['note'])}"
                    for n in view["notes"]]]
    return lines


def _slack_response(view: dict[str, Any]) -> list[dict[str, Any]]:
    def text(s: object) -> str:
        return slack(_one_line(s))

    fields = [{"type": "mrkdwn", "text": f"*Phase*\n{text(view['phase'])}"[:2000]},
              *[{"type": "mrkdwn", "text": f"*{label}*\n{text(by)} at {iso(at_ms)}"[:2000]}
                for label, by, at_ms in view["who"]]]
    blocks: list[dict[str, Any]] = [{"type": "section", "fields": fields}]
    if view["hypotheses"]:
        more = f" ({text(view['hypotheses_more'])})" if view["hypotheses_more"] else ""
        body = "\n".join(f"• *{text(h['status'])}* {text(h['title'])} (by {text(h['by'])} at "
                         f"{iso(h['at_ms'])}; proposed by {text(h['proposed_by'])})"
                         for h in view["hypotheses"])
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"*Hypotheses*{more}\n{body}"[:3000]}})
    if view["notes"]:
        more = f" ({text(view['notes_more'])})" if view["notes_more"] else ""
        body = "\n".join(f"• {iso(n['at_ms'])} *{text(n['by'])}* ({text(n['kind'])}): "
                         f"{text(n['note'])}" for n in view["notes"])
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"*Notes*{more}\n{body}"[:3000]}})
    return blocks


def _pagerduty_response(view: dict[str, Any]) -> list[str]:
    who = "".join(f"; {label.lower()} by {_one_line(by)} at {iso(at_ms)}"
                  for label, by, at_ms in view["who"])
    lines = [f"Response: phase {_one_line(view['phase'])}{who}"]
    if view["hypotheses"]:
        more = f" ({view['hypotheses_more']})" if view["hypotheses_more"] else ""
        lines += [f"Hypotheses{more}:",
                  *[f"- {_one_line(h['status'])}: {_one_line(h['title'])} (by "
                    f"{_one_line(h['by'])} at {iso(h['at_ms'])}; proposed by "
                    f"{_one_line(h['proposed_by'])})" for h in view["hypotheses"]]]
    if view["notes"]:
        more = f" ({view['notes_more']})" if view["notes_more"] else ""
        lines += [f"Notes{more}:",
                  *[f"- {iso(n['at_ms'])} {_one_line(n['by'])} ({_one_line(n['kind'])}): "
                    f"{_one_line(n['note'])}" for n in view["notes"]]]
    return lines


# The timeline (ADR 0019): a few figures per series, the same in every rendering.

TIMELINE_SERIES = (("errors", "errors per {bucket}"), ("requests", "requests per {bucket}"),
                   ("error_rate", "error rate"), ("p50_ms", "p50"), ("p95_ms", "p95"))


def clock(ms: int | None) -> str:
    """The time of day of ``ms`` to the second, UTC: ``12:04:30Z``."""
    return "-" if ms is None else iso(ms)[11:19] + "Z"


def bucket_text(ms: int) -> str:
    """A bucket's length in words: ``30 s``, ``1 min``."""
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    return f"{ms // 1000} s" if ms % 1000 == 0 else f"{ms} ms"


def _figure(value: float) -> str:
    """A count or a mean of counts: whole numbers as such, small means to two digits."""
    if value == int(value):
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def timeline_value(name: str, value: float | None) -> str:
    """One figure of a timeline series, in its unit (``38.5%``, ``950 ms``)."""
    if value is None:
        return "n/a"
    if name == "error_rate":
        pct = value * 100
        return f"{pct:.2g}%" if 0 < abs(pct) < 0.1 else f"{pct:.1f}%".replace(".0%", "%")
    if name in ("p50_ms", "p95_ms"):
        return f"{_figure(value)} ms"
    return _figure(value)


def timeline_notes(timeline: dict[str, Any]) -> list[str]:
    """What the reader must know of how much the timeline holds."""
    notes = []
    if not timeline.get("complete"):
        notes.append(f"(until {clock(timeline.get('to_ms'))}, not complete)")
    if timeline.get("truncated"):
        notes.append(f"(truncated: {timeline.get('omitted', 0)} points left out of the series)")
    return notes


def timeline_lines(timeline: dict[str, Any]) -> list[str]:
    """One plain sentence per series that has data: its mean before the onset, its peak and
    when, its mean after the resolution ("latest" while the incident is open), in the
    series' unit (or the one value of a series that never changed); each renderer escapes
    them. Nothing but the timeline's own figures."""
    summary = timeline.get("summary") or {}
    after = "after" if timeline.get("resolved_ms") is not None else "latest"
    bucket = bucket_text(int(timeline.get("bucket_ms") or 0))
    lines = []
    for name, label in TIMELINE_SERIES:
        s = summary.get(name)
        if not s or s.get("max") is None or (name == "requests" and not s["max"]):
            continue  # no value (requests: the step was never seen)
        title = label.format(bucket=bucket)
        if s.get("min") == s["max"]:
            lines.append(f"{title} steady at {timeline_value(name, s['max'])}")
            continue
        parts = []
        if s.get("start") is not None:
            parts.append(f"{timeline_value(name, s['start'])} before")
        parts.append(f"peak {timeline_value(name, s['max'])} at {clock(s.get('max_at_ms'))}")
        if s.get("end") is not None:
            parts.append(f"{timeline_value(name, s['end'])} {after}")
        lines.append(f"{title} {', '.join(parts)}")
    return lines or ["no points yet"]


def _timeline(report: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The timeline's notes (one string, "" when none) and lines; None without one."""
    timeline = report.get("timeline")
    if timeline is None:
        return None
    notes = " ".join(timeline_notes(timeline))
    return (" " + notes if notes else ""), timeline_lines(timeline)


def _markdown_timeline(report: dict[str, Any]) -> list[str]:
    view = _timeline(report)
    if view is None:
        return []
    notes, lines = view
    return ["", f"## Timeline{md(notes)}", "", *[f"- {md(line)}" for line in lines]]


def _slack_timeline(report: dict[str, Any]) -> list[dict[str, Any]]:
    view = _timeline(report)
    if view is None:
        return []
    notes, lines = view
    body = "\n".join(f"• {slack(line)}" for line in lines)
    return [{"type": "section", "text": {
        "type": "mrkdwn", "text": f"*Timeline*{slack(notes)}\n{body}"[:3000]}}]


def _pagerduty_timeline(report: dict[str, Any]) -> list[str]:
    view = _timeline(report)
    if view is None:
        return []
    notes, lines = view
    return [f"Timeline{notes}:", *[f"- {line}" for line in lines]]


def markdown(report: dict[str, Any]) -> str:
    inc, cause = report["incident"], report["cause"]
    family, verdict, reason = _headline(report)
    w = inc["window"]
    view = _response(report)
    lines = [
        f"# Incident {md(inc['id'])}: {md(family)}",
        "",
        f"- **Status:** {md(inc['status'])} · **env:** {md(inc['env'])} · "
        f"**onset:** {iso(inc['onset_ms'])}",
        f"- **Likely cause:** {md(verdict)}: {md(reason)} "
        f"(rule `{md(cause['rule_id'])}` v{cause['rule_version']})",
        f"- **Window:** {w['count']} errors, baseline {w['baseline']}, lift "
        f"{w['lift'] if w['lift'] is not None else 'n/a'}, peak {w['peak']}",
        *_markdown_timeline(report),
        *(_markdown_response(view) if view is not None else []),
        "",
        "## Next checks",
        "",
        *[f"1. {md(c)}" for c in report["next_checks"]],
        "",
        "## Where it started, how far it spread",
        "",
        *[f"- {md(line)}" for line in spread_lines(report)],
        "",
        "## Evidence",
        "",
        "| time | kind | source | summary |",
        "|---|---|---|---|",
        *[f"| {iso(e['time_ms'])} | {md(e['kind'])} | {md(e['source'])} | {md(e['summary'])} |"
          for e in report["evidence"]],
    ]
    if report["alerts"]:
        lines += ["", "## Alerts", ""]
        for a in report["alerts"]:
            url = _safe_url(a.get("url"))
            link = f" ({md(url)})" if url else ""
            lines.append(f"- {md(a['severity'])} · {md(a['title'])} · {md(a['state'])} · "
                         f"{a['occurrences']} occurrences{link}")
    lines += ["", f"`{report['report_hash']}` · evidence `{report['evidence_fingerprint']}`",
              ""]
    return "\n".join(lines)


def slack_blocks(report: dict[str, Any]) -> dict[str, Any]:
    """A Slack Block Kit message (``blocks`` plus a plain ``text`` fallback)."""
    inc, cause = report["incident"], report["cause"]
    family, verdict, reason = _headline(report)
    evidence = "\n".join(f"• {iso(e['time_ms'])} *{slack(e['kind'])}* {slack(e['summary'])}"
                         for e in report["evidence"])
    checks = "\n".join(f"{n}. {slack(c)}" for n, c in enumerate(report["next_checks"], 1))
    spread = "\n".join(f"• {slack(line)}" for line in spread_lines(report))
    view = _response(report)
    return {
        "text": plain(f"Incident {inc['id']} on {family}: {verdict}")[:3000],
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "emoji": False,
                                        "text": plain(f"Incident: {family}")[:150]}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Status*\n{slack(inc['status'])}"},
                {"type": "mrkdwn", "text": f"*Onset*\n{iso(inc['onset_ms'])}"},
                {"type": "mrkdwn", "text": f"*Likely cause*\n{slack(verdict)}"},
                {"type": "mrkdwn", "text": f"*Rule*\n{slack(cause['rule_id'])}"},
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": slack(reason)[:3000]}},
            *_slack_timeline(report),
            *(_slack_response(view) if view is not None else []),
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"*Next checks*\n{checks}"[:3000]}},
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"*Where it started*\n{spread}"[:3000]}},
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"*Evidence*\n{evidence}"[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": slack(
                f"{inc['id']} · {report['report_hash']}")}]},
        ],
    }


def pagerduty_note(report: dict[str, Any]) -> str:
    """A PagerDuty incident note: plain text."""
    inc = report["incident"]
    family, verdict, reason = _headline(report)
    view = _response(report)
    lines = [f"Tocsin triage {inc['id']} ({family})",
             f"Likely cause: {verdict}: {reason}",
             f"Onset {iso(inc['onset_ms'])}, status {inc['status']}",
             *_pagerduty_timeline(report),
             *(_pagerduty_response(view) if view is not None else []),
             "Next checks:", *[f"- {c}" for c in report["next_checks"]],
             *spread_lines(report),
             f"Report {report['report_hash']}"]
    return plain("\n".join(lines))[:PAGERDUTY_NOTE_MAX]


# The terminal (``text``): plain text, aligned, with the timeline drawn in block characters.

TEXT_WIDTH = 100  # the columns a table is made to fit (other lines are sentences and wrap)
CHART_MAX = 60  # the most columns of a timeline chart (buckets are merged to fit)
SPARKS = "▁▂▃▄▅▆▇█"
LEFT_OUT = "╌"  # a chart column whose buckets were all left out of the series
CHART_SERIES = (("errors", "errors"), ("requests", "requests"), ("error_rate", "error rate"),
                ("p95_ms", "p95"))
ONSET_MARK, RESOLVED_MARK = "▲", "△"

# What a terminal would act on, as whole sequences: CSI (ESC [ or C1 0x9b) with its
# parameters and final byte; OSC, DCS, SOS, PM and APC (ESC ] P X ^ _ or their C1 forms) with
# their payload, up to the string terminator (BEL, ESC \ or C1 ST); any other escape (ESC,
# its intermediates and final byte). A sequence cut short is removed as far as it goes.
TERMINAL_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x00-\x1f\x7f-\x9f]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?")
LINE_BREAK = re.compile(r"\r\n|[\t\n\v\f\r\x1c-\x1e\x85\u2028\u2029]")
# Left after those: C0 and C1 controls, DEL, the bidirectional marks, embeddings, overrides
# and isolates (which reorder what follows them on screen), and lone surrogates.
TERMINAL_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def term(text: object) -> str:
    """Text a terminal shows as it is, on one line: escape sequences (colours, cursor
    moves, titles, hyperlinks) removed whole, line breaks and tabs made spaces, every other
    control character and the bidirectional controls removed. Nothing is escaped."""
    s = TERMINAL_ESCAPE.sub("", str(text))
    return TERMINAL_CONTROL.sub("", LINE_BREAK.sub(" ", s))


def _cell_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    """The columns ``text`` takes on a terminal (wide characters two, marks none)."""
    return sum(_cell_width(ch) for ch in text)


def _fit(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` columns, with an ellipsis where it was cut."""
    if width(text) <= most:
        return text
    out, used = [], 0
    for ch in text:
        w = _cell_width(ch)
        if used + w > most - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _pad(text: str, columns: int, right: bool = False) -> str:
    fill = " " * max(columns - width(text), 0)
    return fill + text if right else text + fill


def _heading(title: str, rule: str = "-") -> list[str]:
    title = _fit(term(title), TEXT_WIDTH)
    return ["", title, rule * width(title)]


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    """``label  value`` lines, the values aligned."""
    most = max((width(label) for label, _ in pairs), default=0)
    return [f"{_pad(label, most)}  {term(value)}" for label, value in pairs]


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]],
           most: tuple[int, ...]) -> list[str]:
    """An aligned table: each cell on one line, cut to its column's ``most``; the last
    column gets what is left of :data:`TEXT_WIDTH` (at least 20)."""
    cells = [[_fit(term(c), m) for c, m in zip(row, most[:-1], strict=False)]
             for row in rows]
    widths = [max([width(h), *(width(r[i]) for r in cells)])
              for i, h in enumerate(header[:-1])]
    last = max(20, TEXT_WIDTH - sum(widths) - 2 * len(widths))
    for row, raw in zip(cells, rows, strict=True):
        row.append(_fit(term(raw[-1]), min(last, most[-1])))
    widths.append(max([width(header[-1]), *(width(r[-1]) for r in cells)]))

    def line(values: list[str]) -> str:
        return "  ".join(_pad(v, w) for v, w in zip(values, widths, strict=True)).rstrip()

    rule = ["─" * w if h else "" for h, w in zip(header, widths, strict=True)]
    return [line(list(header)), line(rule), *map(line, cells)]


def _column_values(points: list[dict[str, Any]], name: str, first_ms: int, span_ms: int,
                   columns: int) -> tuple[list[bool], list[float | None]]:
    """Which chart columns have points, and the highest value of each (None: no value)."""
    covered = [False] * columns
    values: list[float | None] = [None] * columns
    for p in points:
        col = min(columns - 1, max(0, (p["t_ms"] - first_ms) * columns // span_ms))
        covered[col] = True
        v = p.get(name)
        if v is not None:
            current = values[col]
            values[col] = float(v) if current is None else max(current, float(v))
    return covered, values


def _spark(covered: list[bool], values: list[float | None]) -> tuple[str, float, float]:
    """One series as a row of blocks scaled from its lowest to its highest value (any value
    above the lowest at least one step up), with that lowest and highest."""
    present = [v for v in values if v is not None]
    lo, hi = min(present), max(present)
    row = []
    for has, v in zip(covered, values, strict=True):
        if not has:
            row.append(LEFT_OUT)
        elif v is None:
            row.append(" ")
        elif v == lo or hi == lo:
            row.append(SPARKS[0])
        else:
            step = int((v - lo) / (hi - lo) * (len(SPARKS) - 1) + 0.5)
            row.append(SPARKS[max(1, step)])
    return "".join(row), lo, hi


def timeline_chart(timeline: dict[str, Any]) -> list[str]:
    """The timeline drawn as text: a row of blocks per series (errors, requests, error rate,
    p95), each bucket a column (neighbouring buckets merged, at their highest, beyond
    :data:`CHART_MAX` columns; ``╌`` where points were left out), its lowest value on the
    left and highest on the right; under them the onset (▲) and resolution (△) marked,
    and the times the chart starts and ends."""
    points = timeline.get("points") or []
    bucket = int(timeline.get("bucket_ms") or 0)
    first, to = int(timeline.get("from_ms") or 0), int(timeline.get("to_ms") or 0)
    if not points or bucket <= 0 or to <= first:
        return []
    span = to - first
    columns = max(1, min(-(-span // bucket), CHART_MAX))
    rows = []
    for name, label in CHART_SERIES:
        covered, values = _column_values(points, name, first, span, columns)
        if all(v is None for v in values) or (name == "requests" and not any(values)):
            continue
        spark, lo, hi = _spark(covered, values)
        rows.append((label, timeline_value(name, lo), spark, timeline_value(name, hi)))
    if not rows:
        return []
    left = max(width(label) for label, *_ in rows) + 1 + max(width(lo) for _, lo, *_ in rows)
    lines = [f"{_pad(label, left - width(lo))}{lo} {spark} {hi}" for label, lo, spark, hi in rows]

    def column(ms: int | None) -> int | None:
        return None if ms is None or not first <= ms < to else (ms - first) * columns // span

    marks = [" "] * columns
    legend = []
    onset, resolved = timeline.get("onset_ms"), timeline.get("resolved_ms")
    at = column(resolved)
    if at is not None:
        marks[at] = RESOLVED_MARK
    if resolved is not None:
        legend.append(f"{RESOLVED_MARK} resolved {clock(resolved)}")
    at = column(onset)
    if at is not None:
        marks[at] = ONSET_MARK
    if onset is not None:
        legend.insert(0, f"{ONSET_MARK} onset {clock(onset)}")
    indent = " " * (left + 1)
    lines.append(indent + "".join(marks))
    start, end = clock(first), clock(to)
    if columns >= width(start) + width(end) + 1:
        lines.append(indent + start + " " * (columns - width(start) - width(end)) + end)
    else:
        lines.append(f"{indent}{start} to {end}")
    lines.append(indent + "   ".join(legend))
    return [line.rstrip() for line in lines]


def _text_timeline(report: dict[str, Any]) -> list[str]:
    view = _timeline(report)
    if view is None:
        return []
    timeline = report["timeline"]
    notes, summary = view
    bucket = int(timeline.get("bucket_ms") or 0)
    return [*_heading(f"Timeline{notes}"),
            f"{bucket_text(bucket)} buckets from {clock(timeline.get('from_ms'))} to "
            f"{clock(timeline.get('to_ms'))}", "",
            *timeline_chart(timeline), "",
            *[f"- {term(line)}" for line in summary]]


def _text_response(view: dict[str, Any]) -> list[str]:
    lines = [*_heading("Response"),
             *_fields([("Phase", str(view["phase"])),
                       *[(label, f"{term(by)} at {iso(at_ms)}")
                         for label, by, at_ms in view["who"]]])]
    if view["hypotheses"]:
        more = f" ({view['hypotheses_more']})" if view["hypotheses_more"] else ""
        lines += ["", f"Hypotheses{more}:",
                  *[f"- {term(h['status'])}: {term(h['title'])} (by {term(h['by'])} at "
                    f"{iso(h['at_ms'])}; proposed by {term(h['proposed_by'])})"
                    for h in view["hypotheses"]]]
    if view["notes"]:
        more = f" ({view['notes_more']})" if view["notes_more"] else ""
        lines += ["", f"Notes{more}:",
                  *[f"- {iso(n['at_ms'])} {term(n['by'])} ({term(n['kind'])}): "
                    f"{term(n['note'])}" for n in view["notes"]]]
    return lines


def _text_cause(report: dict[str, Any]) -> list[str]:
    cause = report["cause"]
    candidates = cause.get("candidates") or []
    if not candidates:
        return []
    decided = (cause.get("kind"), cause.get("rule_id"))
    rows: list[tuple[object, ...]] = [
        ("▸" if (c.get("kind"), c.get("rule_id")) == decided else "", c.get("kind"),
         c.get("confidence"), c.get("rule_id"), iso(c.get("anchor_ms")),
         ", ".join(map(str, c.get("inputs") or ())) or "-") for c in candidates]
    lines = [*_heading("Cause candidates"),
             *_table(("", "kind", "confidence", "rule", "anchor", "cites"), rows,
                     (1, 12, 10, 24, 24, 40))]
    if cause.get("tiebreak"):
        lines += ["", f"Tiebreak: {term(cause['tiebreak'])}"]
    return lines


def _text_signals(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    alerts = report.get("alerts") or []
    if alerts:
        lines += [*_heading("Alerts"), *_table(
            ("time", "severity", "state", "count", "title"),
            [(iso(a.get("time_ms")), a.get("severity"), a.get("state"),
              a.get("occurrences"), a.get("title")) for a in alerts], (24, 10, 12, 6, 60))]
        links = [(a, url) for a in alerts if (url := _safe_url(a.get("url")))]
        lines += [f"link  {_fit(term(a.get('title')), 40)}: {url}" for a, url in links]
    runtime = report.get("runtime") or []
    if runtime:
        def where(r: dict[str, Any]) -> str:
            return " ".join(str(x) for x in (r.get("pod"), r.get("container")) if x) or \
                str(r.get("service") or "-")

        def detail(r: dict[str, Any]) -> str:
            return ", ".join(x for x in (
                f"exit code {r['exit_code']}" if r.get("exit_code") is not None else "",
                f"{r['restart_count']} restarts" if r.get("restart_count") is not None
                else "") if x) or "-"

        lines += [*_heading("Runtime faults"), *_table(
            ("time", "severity", "fault", "where", "detail"),
            [(iso(r.get("time_ms")), r.get("severity"), r.get("subtype") or r.get("reason"),
              where(r), detail(r)) for r in runtime], (24, 10, 20, 30, 40))]
    deploys = report.get("deploys") or []
    if deploys:
        lines += [*_heading("Deploys"), *_table(
            ("time", "service", "version", "commit", "author"),
            [(iso(d.get("time_ms")), d.get("service") or "-", d.get("version") or "-",
              d.get("commit") or "-", d.get("author") or "-") for d in deploys],
            (24, 20, 16, 12, 20))]
        lines += [f"change  {_fit(term(d.get('service') or '-'), 20)} "
                  f"{_fit(term(d.get('version') or '-'), 16)}: {url}"
                  for d in deploys if (url := _safe_url(d.get("pr_url")))]
    return lines


def text(report: dict[str, Any]) -> str:
    """The report for a terminal: underlined headings, the incident's facts, the cause and
    its candidates, the timeline drawn in block characters with its figures, the response,
    the next checks, where it started, an aligned evidence table, the alerts, runtime faults
    and deploys, the two hashes. Untrusted text goes through :func:`term` (no escape
    sequence, control or bidirectional character, one line per item) and is never escaped
    otherwise; every line is passed through it again as it is written. A function of the
    report alone."""
    inc, cause = report["incident"], report["cause"]
    family, verdict, reason = _headline(report)
    w = inc["window"]
    counts = report.get("counts") or {}
    where = " ".join(term(x) for x in (inc.get("service"), inc.get("step")) if x)
    if inc.get("error_code"):
        where += f", error {term(inc['error_code'])}"
    if inc.get("downstream"):
        where += f", calling {term(inc['downstream'])}"
    status = f"{term(inc['status'])} · env {term(inc['env'])} · onset {iso(inc['onset_ms'])}"
    if inc.get("resolved_ms") is not None:
        status += f" · resolved {iso(inc['resolved_ms'])}"
    facts = [("Status", status), ("Where", where or "-"),
             ("Likely cause", f"{term(verdict)}: {term(reason)}"),
             ("Rule", f"{term(cause['rule_id'])} v{cause['rule_version']}"),
             ("Window", f"{w['count']} errors, baseline {w['baseline']}, lift "
                        f"{w['lift'] if w['lift'] is not None else 'n/a'}, peak {w['peak']}")]
    if counts:
        facts.append(("Signals", f"alerts {counts.get('alerts', 0)} "
                                 f"({counts.get('alert_occurrences', 0)} occurrences) · "
                                 f"runtime {counts.get('runtime', 0)} · deploys "
                                 f"{counts.get('deploys', 0)} · dependencies "
                                 f"{counts.get('dependencies', 0)}"))
    suspect = report.get("suspect_change")
    if suspect:
        commit = f" (commit {term(suspect['commit'])})" if suspect.get("commit") else ""
        author = f" by {term(suspect['author'])}" if suspect.get("author") else ""
        facts.append(("Suspect change", f"{term(suspect.get('service'))} "
                                        f"{term(suspect.get('version') or 'deploy')}"
                                        f"{commit}{author} at {iso(suspect.get('time_ms'))}"))
    view = _response(report)
    lines = [
        *_heading(f"Incident {inc['id']}: {family}", "=")[1:],
        *_fields(facts),
        *_text_cause(report),
        *_text_timeline(report),
        *(_text_response(view) if view is not None else []),
        *_heading("Next checks"),
        *[f"{n:>2}. {term(c)}" for n, c in enumerate(report["next_checks"], 1)],
        *_heading("Where it started, how far it spread"),
        *[f"- {term(line)}" for line in spread_lines(report)],
        *_heading("Evidence"),
        *_table(("time", "kind", "source", "summary"),
                [(iso(e["time_ms"]), e["kind"], e["source"], e["summary"])
                 for e in report["evidence"]], (24, 12, 14, TEXT_WIDTH)),
        *_text_signals(report),
        "",
        *_fields([("report", report["report_hash"]),
                  ("evidence", report["evidence_fingerprint"])]),
    ]
    return "".join(term(line).rstrip() + "\n" for line in lines)
