"""The terminal rendering of a triage report (``tocsin report``'s default, ``--format text``).

Plain text, aligned, with the timeline drawn in block characters. Nothing is escaped: what a
terminal would act on is removed (:func:`term`): escape sequences whole (colours, cursor
moves, titles, OSC 8 hyperlinks), C0 and C1 controls, backspace, carriage returns and the
bidirectional overrides; line breaks become spaces, so each item stays on its line. The
other renderings are in :mod:`tocsin.processors.render`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from tocsin.processors.render import (
    _headline,
    _response,
    _safe_url,
    _timeline,
    bucket_text,
    clock,
    iso,
    spread_lines,
    timeline_value,
)

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
                  ("evidence", report["evidence_fingerprint"]),
                  *([("rules", report["incident"]["rules_hash"])]
                    if report["incident"].get("rules_hash") else [])]),
    ]
    return "".join(term(line).rstrip() + "\n" for line in lines)
