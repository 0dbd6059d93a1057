"""The rules file's per-step rules in the detector (ADR 0022, processors/step_detection.py):
an error rate or a latency quantile over a step's window opens `service:step:ERROR_RATE`
or `service:step:LATENCY` at a bucket boundary, through the lifecycle every family has,
stamped with the rules' hash; a restore mid-incident changes nothing; steps without a rule
cost nothing new."""

from __future__ import annotations

from typing import Any

from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.feed import feed
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.rules import RuleSet, load_rules

T0 = 1_793_610_000_000
MIN = 60_000
CFG = DetectorConfig()

RULES = """version = 1

[[override]]              # the error-count spike rule stays out of these tests
service = "api"
min_count = 100000

[[error_rate]]
service = "api"
step = "POST /pay"
threshold = 0.1
min_requests = 20
window = "5m"

[[latency]]
service = "api"
step = "GET /cart"
threshold_ms = 500
min_requests = 20
window = "5m"
"""


def rules(text: str = RULES) -> RuleSet:
    return load_rules(text, "rules.toml", base=CFG)


def traffic(minutes: int, *, fail_from: int = -1, fail_to: int = -1, slow_from: int = -1,
            slow_to: int = -1, fast_ms: float = 20.0, slow_ms: float = 900.0
            ) -> list[dict[str, Any]]:
    """Two requests a second on each of two steps of `api`. POST /pay fails one request in
    four between minutes fail_from and fail_to (else one in a hundred); GET /cart takes
    slow_ms between slow_from and slow_to (else fast_ms)."""
    out = []
    for k in range(minutes * 120):
        t = T0 + k * 500
        minute = k // 120
        failing = fail_from <= minute < fail_to
        fails = k % 4 == 0 if failing else k % 100 == 0
        pay = {"event_time_ms": t, "service": "api", "env": "prod", "step": "POST /pay",
               "status": "error" if fails else "ok", "duration_ms": 30.0}
        if fails:
            pay["error_code"] = "PAY_500"
        slow = slow_from <= minute < slow_to
        cart = {"event_time_ms": t + 1, "service": "api", "env": "prod", "step": "GET /cart",
                "status": "ok", "duration_ms": slow_ms if slow else fast_ms + (k % 7)}
        out += [pay, cart]
    return out


def run(det: PartitionDetector, events: list[dict[str, Any]]) -> list[IncidentEvent]:
    out: list[IncidentEvent] = []
    for e in events:
        out += feed(det, e)[1]
    return out


def test_an_error_rate_over_its_threshold_opens_its_own_family_and_resolves() -> None:
    det = PartitionDetector(CFG, rules())
    changes = run(det, traffic(60, fail_from=30, fail_to=36))
    mine = [c for c in changes if c.family == "api:POST /pay:ERROR_RATE"]
    assert [c.kind for c in mine][:3] == ["opened", "recovering", "resolved"]
    opened = mine[0]
    assert opened.rule == "error_rate.v1" and opened.rules_hash == rules().hash
    assert opened.error_code == "ERROR_RATE" and opened.step == "POST /pay"
    # Opened at a bucket boundary within the first minutes of the failures: the 5-minute
    # window's rate reaches 10 % once about 40 % of it is failing at 25 %.
    assert opened.at_ms % CFG.bucket_ms == 0
    assert T0 + 30 * MIN < opened.at_ms <= T0 + 33 * MIN
    assert opened.window_count >= 20 and opened.lift is not None and opened.lift > 5
    assert not [c for c in changes if c.family.endswith(":PAY_500")]  # count rule held off
    assert not [c for c in changes if c.family.endswith(":LATENCY")]  # cart stayed fast


def test_a_latency_quantile_over_its_threshold_opens_and_reads_in_ms() -> None:
    det = PartitionDetector(CFG, rules())
    changes = run(det, traffic(60, slow_from=30, slow_to=40))
    mine = [c for c in changes if c.family == "api:GET /cart:LATENCY"]
    assert [c.kind for c in mine][:3] == ["opened", "recovering", "resolved"]
    opened = mine[0]
    assert opened.rule == "latency.v1"
    assert 500 < opened.window_count < 1000  # the p95 in ms, within the histogram's bin
    assert opened.baseline < 40  # the usual p95: 20-26 ms
    assert T0 + 30 * MIN < opened.at_ms <= T0 + 31 * MIN
    assert mine[1].at_ms > T0 + 40 * MIN  # it recovers once the slow minutes leave


def test_a_latency_lift_over_its_baseline_needs_the_prior_windows() -> None:
    lifted = RULES.replace("threshold_ms = 500", "lift = 3.0")
    det = PartitionDetector(CFG, rules(lifted))
    changes = run(det, traffic(60, slow_from=30, slow_to=36, slow_ms=100.0))
    mine = [c for c in changes if c.family == "api:GET /cart:LATENCY"]
    assert mine and mine[0].kind == "opened" and mine[0].lift is not None
    assert mine[0].lift > 3.0
    # The same slowness from the start has no baseline to be lifted over: nothing opens
    det = PartitionDetector(CFG, rules(lifted))
    assert not [c for c in run(det, traffic(20, slow_from=0, slow_to=20, slow_ms=100.0))
                if c.family.endswith(":LATENCY")]


def test_a_restore_mid_incident_gives_the_same_changes() -> None:
    events = traffic(60, fail_from=30, fail_to=36, slow_from=30, slow_to=40)
    whole = run(PartitionDetector(CFG, rules()), events)
    cut = len(events) * 7 // 12  # during the incidents
    det = PartitionDetector(CFG, rules())
    first = run(det, events[:cut])
    again = PartitionDetector.restore(CFG, det.snapshot(), rules())
    assert first + run(again, events[cut:]) == whole
    assert {c.family for c in whole} >= {"api:POST /pay:ERROR_RATE", "api:GET /cart:LATENCY"}


def test_without_step_rules_nothing_new_is_tracked() -> None:
    det = PartitionDetector(CFG, rules("version = 1\n"))
    run(det, traffic(10, fail_from=2, fail_to=4))
    assert det.ruled_steps == {} and det.ruled_services == {}
    det = PartitionDetector(CFG, rules())
    run(det, traffic(10))
    assert sorted(det.ruled_services["api"]) == [("prod", "api", "GET /cart"),
                                                  ("prod", "api", "POST /pay")]


def test_a_ruled_step_keeps_its_cells_for_the_baseline_windows() -> None:
    det = PartitionDetector(CFG, rules())
    run(det, traffic(40))
    det.evict_idle()
    kept = det.steps[("prod", "api", "GET /cart")]
    width = 5 * MIN // CFG.bucket_ms
    assert len(kept) >= width * (CFG.baseline_windows + 1) - 1
    assert len(det.steps[("prod", "api", "GET /cart")]) > CFG.buckets_per_window


def test_the_window_cache_changes_nothing() -> None:
    events = traffic(60, fail_from=30, fail_to=36, slow_from=30, slow_to=40)
    cached = run(PartitionDetector(CFG, rules()), events)
    det = PartitionDetector(CFG, rules())
    uncached: list[IncidentEvent] = []
    for e in events:
        uncached += feed(det, e)[1]
        det.window_memo.clear()
    assert cached == uncached and cached


def test_a_baseline_window_with_too_few_durations_is_no_baseline() -> None:
    """A step's first seconds are a handful of requests: their quantile is no baseline for
    a lift (on the bench's steady workload one opened incidents at minute 10.5)."""
    lifted = RULES.replace("threshold_ms = 500", "lift = 1.2").replace(
        "min_requests = 20\nwindow", "min_requests = 400\nwindow")
    events = traffic(20, fast_ms=20.0)
    for e in events[:120]:  # the first 30 s of cart: 5 ms (a warm cache)
        if e["step"] == "GET /cart":
            e["duration_ms"] = 5.0
    changes = run(PartitionDetector(CFG, rules(lifted)), events)
    assert not [c for c in changes if c.family.endswith(":LATENCY")]
