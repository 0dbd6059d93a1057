"""The fault campaign at a small size: SIGKILLs of worker processes at seeded instants,
with restarts, while wide events, OTLP spans and webhooks flow; then DuckDB and the output
topics must equal an uninterrupted run's, nothing lost, nothing twice.

``python -m bench.chaos`` starts its own two embedded brokers (one per run), so this test
does not use the shared broker fixture. Its own waits are on facts (consumer groups and
DuckDB positions at every topic's end); the subprocess timeout is only a backstop above
the campaign's own time bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Seed 6's three kills are all triggered by an effect (bench/chaos_workload.py kill_plan):
# the span-intake detection worker right after it registers deploys, the other detection
# worker right after a lifecycle event or dead letter, the projection right after it
# publishes report versions — the windows between an effect and its checkpoint or DuckDB
# transaction, where exactly-once has to hold.
SMALL = ["--seed", "6", "--steps", "24", "--events", "12000", "--signals", "36",
         "--kills", "3", "--step-seconds", "0.5", "--max-seconds", "115"]


def test_three_sigkills_lose_and_duplicate_nothing() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.chaos", "--json", *SMALL], cwd=ROOT,
                         capture_output=True, text=True, timeout=170)
    assert out.stdout.strip(), f"no result line; stderr:\n{out.stderr[-4000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    differing = {name: t.get("differing_keys") or t.get("only_in_reference")
                 or t.get("only_in_chaos") or t.get("why")
                 for name, t in (result.get("tables") or {}).items() if not t["identical"]}
    headline = (f"lost {result.get('lost_detail')}, duplicated "
                f"{result.get('duplicated_detail')}, tables differing {differing}, "
                f"error {result.get('error')}\n")
    why = headline + json.dumps({k: result.get(k) for k in (
        "error", "lost_detail", "duplicated_detail", "tables", "incidents_detail",
        "reports_detail", "signals_detail", "notes", "kill_log", "unexpected_exits",
        "workdir")}, indent=1, default=str)[:6000]
    assert result["error"] is None, why
    assert result["kills"] == 3 and result["restarts"] >= 3, why
    assert result["lost"] == 0, why
    assert result["duplicated"] == 0, why
    assert result["tables_identical"], why
    assert result["incidents_detail"]["identical"], why
    assert result["reports_detail"]["final_identical"], why
    assert result["signals_202"] == result["signals_expected"], why
    assert result["signals_present_once"] == result["signals_202"], why
    assert result["inputs_identical"], why
    assert result["ok"] and out.returncode == 0, why
