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
    rules = report["incident"].get("rules_hash")
    lines += ["", f"`{report['report_hash']}` · evidence `{report['evidence_fingerprint']}`"
              + (f" · rules `{md(rules)}`" if rules else ""), ""]
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
