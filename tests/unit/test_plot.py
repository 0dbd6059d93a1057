"""The terminal plot of an incident's timeline, and ``tocsin incident ID --plot`` against a
real (tiny, local) HTTP server standing in for the worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from tests.unit.report_fixtures import report
from tests.unit.test_render_timeline import T0, B, make_timeline
from tocsin.cli import main
from tocsin.clients.plot import plot_timeline
from tocsin.processors.render import timeline_lines
from tocsin.processors.timeline import Timeline, TimelineConfig


def drawing(out: str) -> list[str]:
    """The plot's own lines (before the blank line and the figures)."""
    return out.split("\n\n")[0].split("\n")


def test_the_plot_has_two_panels_markers_and_the_figures() -> None:
    t = make_timeline()
    out = plot_timeline(t, width=100, height=24)
    lines = drawing(out)
    assert len(lines) == 24
    assert all(len(line) <= 100 for line in lines)
    assert "errors per 30 s" in out and "requests per 30 s" in out
    assert "p95 ms" in out and "p50 ms" in out
    assert "minutes from onset" in out
    ticks = [line for line in lines if "+5" in line and "0" in line]
    assert ticks, "the x axis counts minutes from the onset"
    assert any("-4" in line or "-5" in line for line in ticks)
    assert sum("┊" in line for line in lines) > 5  # the resolution's dotted line
    # Under it, the same figures as the reports.
    tail = out.rstrip("\n").split("\n")
    assert tail[-len(timeline_lines(t)):] == timeline_lines(t)
    assert "Timeline every 30 s from 09:35:00Z to 09:57:30Z (onset 09:40:00Z, resolved " \
           "09:47:30Z)" in tail


def test_the_plot_is_plain_text() -> None:
    out = plot_timeline(make_timeline())
    assert "\x1b" not in out
    assert all(ch == "\n" or ch >= " " for ch in out)


def test_the_same_timeline_gives_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    t = make_timeline(resolve=False, complete=False, after=4)
    first = plot_timeline(t, width=80, height=20)
    plot_timeline(make_timeline(latency=False), width=140, height=30)  # nothing carries over
    monkeypatch.setenv("COLUMNS", "45")  # nor does the terminal's size
    monkeypatch.setenv("LINES", "10")
    assert plot_timeline(t, width=80, height=20) == first
    assert len(drawing(first)) == 20
    assert all(len(line) <= 80 for line in drawing(first))


def test_a_truncated_timeline_says_so() -> None:
    t = make_timeline(during=40, after=4, config=TimelineConfig(max_points=20))
    assert t["truncated"]
    out = plot_timeline(t)
    assert f"(truncated: {t['omitted']} points left out of the series)" in out
    assert f"(truncated: {t['omitted']} points left out)" in drawing(out)[0]


def test_an_open_timeline_says_it_is_not_complete() -> None:
    out = plot_timeline(make_timeline(resolve=False, complete=False, after=4))
    assert "not resolved" in out
    assert out.rstrip("\n").split("\n")[-1] == "(until 09:49:30Z, not complete)"


def test_no_points() -> None:
    t = Timeline.start(T0, TimelineConfig(), B).view()
    out = plot_timeline(t)
    assert "no points in this timeline yet" in out
    assert "(until" in out and "\x1b" not in out


def test_no_durations_leave_out_the_latency_panel() -> None:
    out = plot_timeline(make_timeline(latency=False), width=90, height=16)
    assert "p95 ms" not in drawing(out)[0] and len(drawing(out)) == 16
    assert "no durations in this timeline: no latency panel" in out
    assert "errors per 30 s" in out


def test_errors_alone() -> None:
    out = plot_timeline(make_timeline(steps=False))
    assert "requests per" not in out and "p95" not in out
    assert "errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 after" in out


def test_a_single_point() -> None:
    t = Timeline.start(T0, TimelineConfig(before_ms=0), B)
    t.advance(t.first)
    t.put_errors(t.first, 3)
    view = t.view()
    assert len(view["points"]) == 1
    out = plot_timeline(view, width=60, height=16)
    assert len(drawing(out)) == 16 and "\x1b" not in out
    assert "errors per 30 s steady at 3" in out


def test_small_sizes_are_raised_to_a_readable_minimum() -> None:
    lines = drawing(plot_timeline(make_timeline(), width=10, height=3))
    assert len(lines) == 16 and max(len(line) for line in lines) <= 40
    # The titles and the axis label are shortened to fit rather than left out.
    assert lines[0].strip() == "▞ errors (left)   · requests (right)"
    assert lines[-1].strip() == "min from onset; │ onset ┊ resolved"


def test_the_keys_fit_the_narrowest_terminal_plot() -> None:
    t = make_timeline(during=40, after=4, config=TimelineConfig(max_points=20))
    lines = drawing(plot_timeline(t, width=60, height=24))
    assert lines[0].strip() == "▞ errors (left)   · requests (right)   (truncated)"
    assert lines[-1].strip() == "minutes from onset (│ onset, ┊ resolved)"


# ---------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(("args", "says"), [
    (["acknowledge", "--by", "ana"], "takes no action"),
    (["note", "hello", "--by", "ana"], "takes no action"),
    (["--json"], "choose one"),
])
def test_plot_with_an_action_is_a_usage_error(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["incident", "inc_1", *args, "--plot",
                                       "--worker", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "Usage:" in result.output and "--plot" in result.output and says in result.output
    assert "Traceback" not in result.output


class Worker:
    """A stand-in worker: the reports it holds by incident id, and the requests it got."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                worker.requests.append((self.path, self.headers.get("Authorization")))
                prefix, suffix = "/v1/incidents/", "/report"
                found = None
                if self.path.startswith(prefix) and self.path.endswith(suffix):
                    found = worker.reports.get(unquote(self.path[len(prefix):-len(suffix)]))
                body = json.dumps(found if found is not None else {
                    "error": f"no report for {self.path}"}).encode()
                self.send_response(200 if found is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    thread = threading.Thread(target=w.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield w
    finally:
        w.server.shutdown()
        w.server.server_close()
        thread.join(timeout=10)


def incident(worker: Worker, *args: str) -> Any:
    return CliRunner().invoke(main, ["incident", *args, "--worker", worker.url])


def test_plot_fetches_the_latest_report_and_draws_its_timeline(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOCSIN_API_TOKEN", "t0ken")
    monkeypatch.setenv("COLUMNS", "120")
    timeline = make_timeline()
    worker.reports["inc 1/x"] = {**report(), "timeline": timeline}
    result = incident(worker, "inc 1/x", "--plot")
    assert result.exit_code == 0, result.output
    assert worker.requests == [("/v1/incidents/inc%201%2Fx/report", "Bearer t0ken")]
    assert result.stdout == plot_timeline(timeline, width=120)
    assert "errors per 30 s 1 before, peak 40 at 09:40:00Z, 0 after" in result.stdout
    assert "\x1b" not in result.stdout


def test_plot_width_follows_the_terminal_within_bounds(
        worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = make_timeline()
    worker.reports["inc_1"] = {**report(), "timeline": timeline}
    for columns, width in (("30", 60), ("300", 160)):
        monkeypatch.setenv("COLUMNS", columns)
        result = incident(worker, "inc_1", "--plot")
        assert result.exit_code == 0, result.output
        assert result.stdout == plot_timeline(timeline, width=width)


def test_a_report_without_a_timeline_is_a_clear_message(worker: Worker) -> None:
    worker.reports["inc_1"] = report()
    result = incident(worker, "inc_1", "--plot")
    assert result.exit_code == 1
    assert "has no timeline" in result.stderr and result.stdout == ""


def test_no_report_is_the_workers_error(worker: Worker) -> None:
    result = incident(worker, "inc_missing", "--plot")
    assert result.exit_code == 1
    assert "error: no report for /v1/incidents/inc_missing/report" in result.stderr
