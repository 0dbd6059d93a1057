"""A terminal plot of an incident's timeline (``tocsin incident ID --plot``, ADR 0019).

Two stacked panels over the minutes from the onset: the family's errors per bucket with the
step's requests on a right-hand axis, then the step's p95 and p50 durations; a solid
vertical line at the onset and a dotted one at the resolution. Under them, the same figures
the rendered reports give (:func:`tocsin.processors.render.timeline_lines`).

Drawn with plotext as plain text: the colorless theme and a colorless matrix, so there is no
escape sequence in the output, and the size is the one asked for whatever the terminal, so
the same timeline always gives the same text. Where a series has no value (a bucket without
durations) or points were left out of a long incident's series, its line is broken rather
than drawn across the gap.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import plotext

from tocsin.processors.render import bucket_text, clock, timeline_lines, timeline_notes

MIN_MS = 60_000
MIN_WIDTH, MIN_HEIGHT = 40, 16
X_TICK_STEPS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)  # minutes

# plotext draws on one figure per process: one plot at a time.
_LOCK = threading.Lock()

Run = tuple[list[float], list[float]]


def _runs(points: list[dict[str, Any]], name: str, onset_ms: int, bucket_ms: int
          ) -> list[Run]:
    """The series' values as unbroken runs of (minutes from onset, value): a run ends at a
    point without a value and where points were left out."""
    runs: list[Run] = []
    xs: list[float] = []
    ys: list[float] = []
    last_t: int | None = None
    for p in points:
        value = p.get(name)
        gap = last_t is not None and p["t_ms"] - last_t > bucket_ms
        if (value is None or gap) and xs:
            runs.append((xs, ys))
            xs, ys = [], []
        last_t = p["t_ms"]
        if value is not None:
            xs.append((p["t_ms"] - onset_ms) / MIN_MS)
            ys.append(float(value))
    if xs:
        runs.append((xs, ys))
    return runs


def _label(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _y_ticks(high: float, whole: bool) -> tuple[float, list[float]]:
    """The top of a y axis starting at zero, a tenth above ``high`` at least, and its
    ticks: 1, 2, 2.5 or 5 times a power of ten apart, at most five steps of them; whole
    numbers apart for counts (``whole``)."""
    if not high > 0:
        return 1.0, [0.0, 1.0]
    high *= 1.1
    base = 10.0 ** math.floor(math.log10(high / 5))
    step = base * 10
    for factor in (1, 2, 2.5, 5):
        if high / (base * factor) <= 5 and (not whole or (base * factor).is_integer()):
            step = base * factor
            break
    step = max(step, 1.0) if whole else step
    top = math.ceil(high / step - 1e-9) * step
    return top, [round(i * step, 9) for i in range(round(top / step) + 1)]


def _x_ticks(low: float, high: float, width: int) -> tuple[list[float], list[str]]:
    """Ticks along the minutes from onset, a round number of minutes apart, labelled as
    ``-5``, ``0``, ``+10``."""
    most = max(2, width // 10)
    step: float = X_TICK_STEPS[-1]
    for candidate in X_TICK_STEPS:
        if (high - low) / candidate <= most:
            step = candidate
            break
    first = math.ceil(low / step - 1e-9)
    ticks = [i * step for i in range(first, math.floor(high / step + 1e-9) + 1)]
    return ticks, ["0" if t == 0 else f"{t:+g}" for t in ticks]


def _panel(plot: Any, series: list[tuple[str, str, str]], points: list[dict[str, Any]],
           timeline: dict[str, Any], xlim: tuple[float, float], width: int,
           marks: list[tuple[float, str]]) -> None:
    """One panel: each (series, marker, y side) as broken lines, a y axis from zero per
    side, the x ticks and the vertical markers."""
    onset_ms, bucket_ms = timeline["onset_ms"], timeline["bucket_ms"]
    for x, style in marks:  # first, so that the series are drawn over them
        plot.line(x, orientation="vertical", style=style)
    highs: dict[str, float] = {}
    for name, marker, side in series:
        runs = _runs(points, name, onset_ms, bucket_ms)
        highs[side] = max([highs.get(side, 0.0), *(y for _, ys in runs for y in ys)])
        for xs, ys in runs:
            signal = plot.signal(xs, ys, marker=marker, yside=side)
            plot.draw(signal.lines() if len(xs) > 1 else signal)
    for side, high in highs.items():
        counts = not any(name.endswith("_ms") for name, _, s in series if s == side)
        top, ticks = _y_ticks(high, whole=counts)
        ruler = plot.ruler("y", side)
        ruler.lim(0, top)
        ruler.ticks(ticks, [_label(t) for t in ticks])
    plot.ruler("x").lim(*xlim)
    plot.ruler("x").ticks(*_x_ticks(*xlim, width))
    plot.legend(active=False)


def _fit(keys: list[tuple[str, str]], width: int, sep: str = "   ") -> str:
    """The long forms of ``keys`` joined when they fit in a ``width`` wide plot, else the
    short ones (plotext leaves out a title that does not fit)."""
    for forms in ([long for long, _ in keys], [short for _, short in keys]):
        text = sep.join(f for f in forms if f)
        if len(text) <= width - 2:
            return text
    return text[:width - 2]


def _header(timeline: dict[str, Any]) -> str:
    resolved = timeline.get("resolved_ms")
    end = f", resolved {clock(resolved)}" if resolved is not None else ", not resolved"
    return (f"Timeline every {bucket_text(timeline['bucket_ms'])} from "
            f"{clock(timeline.get('from_ms'))} to {clock(timeline.get('to_ms'))} "
            f"(onset {clock(timeline['onset_ms'])}{end})")


def plot_timeline(timeline: dict[str, Any], width: int = 100, height: int = 24) -> str:
    """The timeline as plain text: two panels ``width`` columns wide and ``height`` rows
    high in all, then its figures and notes, one line each."""
    width, height = max(MIN_WIDTH, width), max(MIN_HEIGHT, height)
    points = list(timeline.get("points") or ())
    notes = timeline_notes(timeline)
    if not points:
        return "\n".join([_header(timeline), "no points in this timeline yet", *notes]) + "\n"
    onset_ms, bucket_ms = timeline["onset_ms"], timeline["bucket_ms"]
    low = (points[0]["t_ms"] - onset_ms) / MIN_MS
    high = (points[-1]["t_ms"] - onset_ms) / MIN_MS
    if high - low < bucket_ms / MIN_MS:  # a single point: one bucket either side
        low, high = low - bucket_ms / MIN_MS, high + bucket_ms / MIN_MS
    marks = [(0.0, "default")]
    if timeline.get("resolved_ms") is not None:
        marks.append(((timeline["resolved_ms"] - onset_ms) / MIN_MS, "dotted"))
    marks = [(x, style) for x, style in marks if low <= x <= high]

    bucket = bucket_text(bucket_ms)
    counts = [("errors", "hd", "left")]
    keys = [(f"▞ errors per {bucket} (left)", "▞ errors (left)")]
    if any(p.get("requests") for p in points):
        counts.append(("requests", "·", "right"))
        keys.append((f"· requests per {bucket} (right)", "· requests (right)"))
    if timeline.get("truncated"):
        keys.append((f"(truncated: {timeline.get('omitted', 0)} points left out)",
                     "(truncated)"))
    title = _fit(keys, width)
    latency = any(p.get("p95_ms") is not None or p.get("p50_ms") is not None
                  for p in points)
    resolved = any(style == "dotted" for _, style in marks)
    xlabel = _fit([("minutes from onset (│ onset" + (", ┊ resolved)" if resolved else ")"),
                    "min from onset; │ onset" + (" ┊ resolved" if resolved else ""))], width)

    with _LOCK:
        figure = plotext.figure
        try:
            plotext.terminal.limit(False, False)  # the size asked for, not the terminal's
            figure.clear()
            figure.theme("colorless")
            if latency:
                figure.subplots(2, 1)
            figure.plot_size(width, height)
            top = figure.subplot(1, 1) if latency else figure  # one plot: the figure itself
            top.title(title)
            _panel(top, counts, points, timeline, (low, high), width, marks)
            if latency:
                bottom = figure.subplot(2, 1)
                bottom.title("▞ p95 ms   · p50 ms")
                _panel(bottom, [("p95_ms", "hd", "left"), ("p50_ms", "·", "left")], points,
                       timeline, (low, high), width, marks)
                bottom.label(xlabel)
            else:
                top.label(xlabel)
            drawing = str(figure.build().string(colorless=True))
        finally:
            figure.clear()
            plotext.terminal.limit()
    lines = [line.rstrip() for line in drawing.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    summary = [_header(timeline), *timeline_lines(timeline)]
    if not latency:
        summary.append("no durations in this timeline: no latency panel")
    return "\n".join([*lines, "", *summary, *notes]) + "\n"
