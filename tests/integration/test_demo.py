"""``tocsin demo`` as a newcomer runs it, both scenarios: each starts its own embedded
broker and worker. The incident ids and report hashes are pinned (tests/golden/demo.json):
the same scenario gives the same bytes on any machine and in any fetch interleaving. A
deliberate change of a rule or of the report updates the pins, and says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "demo.json")
                    .read_text())


def replay(directory: Path, *args: str) -> dict[str, Any]:
    """`tocsin replay DIR --json` of a demo's export (the default topic names)."""
    done = subprocess.run([sys.executable, "-P", "-m", "tocsin", "replay", str(directory),
                           "--json", *args], capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return dict(json.loads(done.stdout))


def demo(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-P", "-m", "tocsin", "demo", "--json", *args],
                          capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return dict(json.loads(done.stdout))


def test_the_wide_event_demo_opens_resolves_and_reports_dependency(tmp_path: Path) -> None:
    result = demo("--export", str(tmp_path / "log"))
    assert result["family"] == "checkout:payment.charge:PMT_502"
    # The on-call acknowledges through the actions API, 90 s after onset (a fixed time,
    # so the report with its response section keeps its pinned hash).
    assert result["lifecycle"] == ["opened", "acknowledged", "recovering", "resolved",
                                   "timeline"]
    assert (result["acknowledged_by"], result["mtta_ms"]) == ("demo-oncall", 90_000)
    # The timeline (ADR 0019): from 5 min before onset to 10 min after resolution, the
    # burst's 2-in-3 failures and their 1.2 s gateway waits standing out of a calm step.
    timeline = result["timeline"]
    assert timeline["complete"] and not timeline["truncated"]
    assert timeline["from_ms"] == (result["onset_ms"] - 300_000) // 30_000 * 30_000
    assert timeline["points"] == (timeline["to_ms"] - timeline["from_ms"]) // 30_000
    rate, p95 = timeline["error_rate"], timeline["p95_ms"]
    assert rate["start"] == 0.0 and rate["max"] == 0.666667 and rate["end"] == 0.0
    assert p95["start"] < 50 and p95["max"] > 1200 and p95["end"] < 50
    # A local webhook receiver was told every change, signed (ADR 0017).
    told = result["notifications"]
    assert [t["kind"] for t in told if t["kind"] != "updated"] == result["lifecycle"]
    assert all(t["signature_valid"] is True for t in told)
    assert len({t["notification_id"] for t in told}) == len(told)
    assert (result["cause"], result["cause_rule"]) == ("dependency", "dependency_signal")
    assert {k: result[k] for k in GOLDEN["events"]} == GOLDEN["events"]
    # Its recorded input, replayed offline (issue 13): the same incident, cause and hash.
    replayed = replay(tmp_path / "log")
    assert [(r["id"], r["report_hash"], r["rule"], r["status"])
            for r in replayed["incidents"]] == [
        (GOLDEN["events"]["incident_id"], GOLDEN["events"]["report_hash"],
         "dependency_signal", "resolved")]


def test_the_trace_demo_names_payment_as_origin_from_spans_alone(tmp_path: Path) -> None:
    result = demo("--traces", "--export", str(tmp_path / "log"))
    assert result["family"] == "checkout:POST /api/checkout:HTTP_502"
    assert result["incidents"] == [
        "checkout:POST /api/checkout:HTTP_502", "frontend:GET /cart/checkout:HTTP_502",
        "payment:POST /api/charge:shop.payment.PaymentDeclinedError"]
    assert result["lifecycle"] == ["opened", "recovering", "resolved", "timeline"]
    assert result["timeline"]["complete"] and result["timeline"]["error_rate"]["max"] > 0.5
    # News (a failing family joining, ADR 0018) may come between, as batching has it.
    assert [t["kind"] for t in result["notifications"]
            if t["kind"] != "updated"] == result["lifecycle"]
    assert result["origin"] == {"service": "payment", "step": "POST /api/charge"}
    assert result["path"] == ["frontend", "checkout", "payment"]
    assert (result["cause"], result["cause_rule"]) == ("dependency", "trace_downstream")
    # 180 requests in the burst, two of every three declined; users user-{i % 4}
    assert (result["affected_requests"], result["distinct_users"]) == (120, 4)
    assert result["propagation_capture"] == "ok"
    assert {k: result[k] for k in GOLDEN["traces"]} == GOLDEN["traces"]
    # Replayed offline from the spans and translated events it recorded (issue 13).
    replayed = replay(tmp_path / "log")
    assert sorted(r["family"] for r in replayed["incidents"]) == result["incidents"]
    assert {(r["id"], r["report_hash"]) for r in replayed["incidents"]} >= {
        (GOLDEN["traces"]["incident_id"], GOLDEN["traces"]["report_hash"])}
    assert replayed["counts"]["traces_closed"] > 0
