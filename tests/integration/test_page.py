"""The live incident page in a real headless browser: Playwright driving Debian's Chromium
(``/usr/bin/chromium``; ``make test`` installs the package when it is missing) against a
real worker on the embedded broker, with API tokens configured.

A spike appears on an open board without a reload, a hostile alert title and a hostile
note stay text, an acknowledgement clicked on the page lands in DuckDB, and the stream
resumes or resets as ``Last-Event-ID`` says. The screenshot in the README is made here.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.harness import T0_MS, Names, WorkerProc, event, produce_events, steady

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "page-test-token"
SHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "incident-page.png"
HOSTILE = '<img src=x onerror="window.__pwned=1">**bold** <script>window.__pwned=2</script>'
SERVICES = ("checkout", "cart", "search")


def failing(start_ms: int, seconds: int) -> list[dict[str, Any]]:
    log = []
    for s in range(seconds):
        t = start_ms + s * 1000
        log.append(event(t, "checkout", "payment.charge", error="PMT_502", duration_ms=950.0,
                         request_id=f"req-{s}"))
        log.append(event(t + 1, "cart", "GET /", duration_ms=4.0))
    return log


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    names = Names.fresh("page")
    produce_events(broker, names.events, steady(T0_MS, 2400, SERVICES), partitions=2)
    db = tmp_path_factory.mktemp("page") / "page.duckdb"
    env = {**names.side_topics(), "TOCSIN_API_TOKENS": json.dumps({"ops": TOKEN})}
    proc = WorkerProc(broker, names, db, extra_env=env).start()
    proc.wait_ready(90)
    proc.wait_settled(90)
    proc.names = names  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        yield chromium
        chromium.close()


def open_page(browser: Browser, worker: WorkerProc, path: str = "/") -> Page:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.on("pageerror", lambda e: pytest.fail(f"the page failed: {e}"))
    page.goto(f"http://127.0.0.1:{worker.http_port}{path}")
    # The token is asked once and kept for the tab.
    page.wait_for_selector("body[data-token=needed]")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("body[data-live=on]")
    return page


def post_signal(worker: WorkerProc, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{worker.http_port}/v1/signals/alertmanager",
        data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status in (200, 202)


def hostile_alert(at_ms: int) -> dict[str, Any]:
    starts = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "version": "4", "status": "firing", "receiver": "tocsin", "groupKey": "{}:{}",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing", "fingerprint": "0badc0de0badc0de",
            "labels": {"alertname": "CheckoutErrors", "service": "checkout",
                       "severity": "critical"},
            "annotations": {"summary": HOSTILE, "description": HOSTILE},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "javascript:window.__pwned=3",
        }],
    }


def test_a_spike_appears_on_the_open_board_and_hostile_text_stays_text(
        worker: WorkerProc, browser: Browser) -> None:
    page = open_page(browser, worker)
    page.wait_for_selector("#empty")
    page.evaluate("window.__loaded_once = true")
    onset = T0_MS + 2400 * 1000
    post_signal(worker, hostile_alert(onset + 20_000))
    # Playwright's sync API keeps an event loop running on this thread: produce on another.
    with ThreadPoolExecutor(1) as other:
        other.submit(produce_events, worker.bootstrap,
                     worker.names.events,  # type: ignore[attr-defined]
                     failing(onset, 120), partitions=2).result()
    # (locators, not element handles: the live board redraws its rows as changes come)
    row = page.locator("tr[data-incident]")
    expect(row).to_contain_text("checkout:payment.charge:PMT_502", timeout=90_000)
    expect(row).to_contain_text("active")
    assert page.evaluate("window.__loaded_once") is True, "the page was reloaded"

    # The incident: the hostile alert title is in the evidence, as text.
    row.locator("a").click()
    page.wait_for_selector("#evidence")
    # (expect, not wait_for_function: the page's policy refuses evaluating strings)
    expect(page.locator("#evidence")).to_contain_text("onerror", timeout=60_000)
    evidence = page.inner_text("#evidence")
    assert HOSTILE.split(" ")[0] in evidence and "<script>" in evidence
    assert page.query_selector_all("#evidence img, #evidence script, #evidence strong") == []
    assert page.query_selector("#evidence a[href^='javascript']") is None
    assert page.evaluate("window.__pwned") is None


def test_an_acknowledgement_clicked_on_the_page_lands_in_duckdb(
        worker: WorkerProc, browser: Browser) -> None:
    incident = worker.wait_rows("SELECT incident_id FROM incidents", 90)[0]["incident_id"]
    page = open_page(browser, worker, f"/incidents/{incident}")
    page.wait_for_selector("#actions-ready, #acknowledge")
    page.fill("#by", "pat <b>on call</b>")
    page.fill("#note", HOSTILE)
    page.click("#acknowledge")
    expect(page.locator("#phase")).to_contain_text("acknowledged", timeout=60_000)
    rows = worker.wait_rows("SELECT acknowledged_by, phase FROM incidents WHERE incident_id = "
                            f"'{incident}' AND phase = 'acknowledged'", 60)
    assert rows[0]["acknowledged_by"] == "pat <b>on call</b>"
    response = page.inner_text("#response")
    assert "<script>" in response and "pat <b>on call</b>" in response
    assert page.query_selector_all("#response b, #response img, #response script") == []
    assert page.evaluate("window.__pwned") is None

    # The chart and the report, then the copy button gives the Markdown report.
    page.wait_for_selector("#timeline svg.chart path.series", state="attached")
    page.click("#copy")
    expect(page.locator("#action-status")).to_contain_text("copied", timeout=30_000)
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("# Incident") and incident.replace("_", "\\_") in copied
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOT), full_page=True)


def test_the_page_is_served_with_a_strict_policy_and_no_external_assets(
        worker: WorkerProc) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/", timeout=30) as resp:
        html = resp.read().decode()
        policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "http://" not in html and "https://" not in html and "<script>" not in html
    static = Path(__file__).resolve().parents[2] / "streams" / "web" / "static"
    for asset in static.iterdir():
        text = asset.read_text()
        assert "https://" not in text.replace("http://www.w3.org/2000/svg", ""), asset.name
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, asset.name


def test_a_failing_request_is_explained_by_its_request_id(worker: WorkerProc) -> None:
    """What ``tocsin mcp``'s explain_request reads, for a wide event with no spans."""
    incident = worker.wait_rows("SELECT incident_id FROM incidents", 90)[0]["incident_id"]
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}/v1/requests/req-7",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        found = json.loads(resp.read())
    assert (found["matched"], found["family"]) == ("request_id",
                                                   "checkout:payment.charge:PMT_502")
    assert found["failing_step"]["step"] == "payment.charge"
    assert found["incident"]["incident_id"] == incident


def stream_lines(worker: WorkerProc, last_event_id: str | None, want: int) -> list[str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    req = urllib.request.Request(f"http://127.0.0.1:{worker.http_port}/v1/stream",
                                 headers=headers)
    lines: list[str] = []
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        while len([x for x in lines if x.startswith("event:")]) < want:
            lines.append(resp.readline().decode().rstrip("\n"))
    return lines


def test_the_stream_resumes_with_last_event_id_or_says_reset(worker: WorkerProc) -> None:
    hello = stream_lines(worker, None, 1)
    assert "event: hello" in hello
    current = next(x for x in hello if x.startswith("id: "))[4:]
    epoch = current.split("-")[0]
    # Everything since the first event of this process: lifecycle changes and reports.
    replay = stream_lines(worker, f"{epoch}-0", 3)
    kinds = [x for x in replay if x.startswith("event:")]
    assert {"event: incident", "event: report"} & set(kinds), replay
    # Another process's id: the client must read the state again.
    assert "event: reset" in stream_lines(worker, "1-5", 1)
    # Without a token: 401, like every read.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/v1/stream", timeout=30)
    assert refused.value.code == 401
    refused.value.close()
