"""processors/what_if.py: incident rows from lifecycle changes, the spike's start, and the
pairing of two replays' incidents (same id, else same family with overlapping spans)."""

from __future__ import annotations

from typing import Any

from tocsin.processors.what_if import diff, diff_json, incident_rows, spike_start_ms, totals

W = 600_000


def change(incident_id: str, seq: int, kind: str, at_ms: int, *, onset_ms: int = 1_000_000,
           family: str = "a:s:E", status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"incident_id": incident_id, "seq": seq, "kind": kind, "at_ms": at_ms,
            "onset_ms": onset_ms, "family": family, "env": "prod", "service": "a",
            "status": status, "phase": extra.pop("phase", "triggered"), "peak_count": 9,
            "error_count": 9, "baseline": extra.pop("baseline", 0.0), **extra}


def row(incident_id: str, onset_ms: int, resolved_ms: int | None, family: str = "a:s:E",
        report_hash: str = "sha256:x") -> dict[str, Any]:
    return {"id": incident_id, "family": family, "env": "prod", "onset_ms": onset_ms,
            "detected_ms": onset_ms, "time_to_detect_ms": 0, "status": "resolved",
            "phase": "resolved", "resolved_ms": resolved_ms, "peak_count": 5,
            "error_count": 5, "cause": "app", "rule": "app_step", "confidence": "medium",
            "report_hash": report_hash, "report_content_hash": report_hash, "pages": 1}


def timeline(errors: list[int], start: int = 900_000) -> dict[str, Any]:
    return {"bucket_ms": 30_000, "points": [{"t_ms": start + i * 30_000, "errors": e}
                                            for i, e in enumerate(errors)]}


def test_the_spike_starts_at_the_run_of_buckets_above_the_baseline_level() -> None:
    # baseline 20 a window of 20 buckets: 1 error a bucket is the level, above it counts
    opened = change("i", 1, "opened", 1_020_000, baseline=20.0,
                    timeline=timeline([1, 3, 0, 1, 4, 6]))
    assert spike_start_ms(opened, W) == 900_000 + 4 * 30_000
    clean = change("i", 1, "opened", 1_020_000, timeline=timeline([0, 0, 2, 5, 1]))
    assert spike_start_ms(clean, W) == 900_000 + 2 * 30_000
    assert spike_start_ms(change("i", 1, "opened", 5), W) == 5  # no timeline


def test_rows_read_the_last_change_the_opening_and_the_report() -> None:
    events = [change("i", 2, "resolved", 2_000_000, status="resolved", phase="resolved"),
              change("i", 1, "opened", 1_000_000, timeline=timeline([0, 2, 3, 4], 930_000)),
              change("i", 2, "updated", 1_500_000)]
    reports = {"i": {"report_hash": "sha256:r", "incident": {"id": "i"},
                     "cause": {"kind": "deploy", "rule_id": "service_deploy",
                               "confidence": "high"}}}
    [r] = incident_rows(events, reports, W)
    assert (r["status"], r["resolved_ms"], r["seq"]) == ("resolved", 2_000_000, 2)
    assert (r["detected_ms"], r["time_to_detect_ms"]) == (1_000_000, 40_000)
    assert (r["cause"], r["rule"], r["report_hash"], r["pages"]) == \
        ("deploy", "service_deploy", "sha256:r", 1)
    # The content hash leaves out the report's own hash and the rules hash (ADR 0022)
    ruled = {**reports["i"], "report_hash": "sha256:other",
             "incident": {"id": "i", "rules_hash": "sha256:rules"}}
    [again] = incident_rows(events, {"i": ruled}, W)
    assert again["report_content_hash"] == r["report_content_hash"] != again["report_hash"]


def test_identical_replays_have_no_difference() -> None:
    rows = [row("a", 10, 20), row("b", 30, None, family="b:s:E")]
    d = diff(rows, [dict(r) for r in reversed(rows)])
    assert d.empty and d.unchanged == 2


def test_a_later_opening_of_the_same_spike_is_a_change_not_a_removal() -> None:
    before = [row("a1", 100, 500), row("a2", 1_000, 1_500)]
    after = [row("a9", 160, 500, report_hash="sha256:y")]
    d = diff(before, after)
    assert [c["baseline"]["id"] for c in d.changed] == ["a1"]
    assert d.changed[0]["fields"] == ["onset_ms", "detected_ms", "report_content_hash"]
    assert [r["id"] for r in d.only_baseline] == ["a2"] and d.only_change == []


def test_families_never_pair_across_each_other_or_without_overlap() -> None:
    d = diff([row("a", 100, 200)], [row("b", 100, 200, family="other:s:E"),
                                    row("c", 300, 400)])
    assert [r["id"] for r in d.only_baseline] == ["a"]
    assert [r["id"] for r in d.only_change] == ["b", "c"]


def test_totals_count_pages_and_take_the_median_time_to_detect() -> None:
    rows = [{**row(f"i{t}", 0, 1), "time_to_detect_ms": t, "pages": p}
            for t, p in ((10, 1), (30, 1), (20, 0), (41, 1))]
    assert totals(rows) == {"incidents": 4, "pages": 3, "median_time_to_detect_ms": 25}
    assert totals(rows[:3])["median_time_to_detect_ms"] == 20
    assert totals([{**row("a", 0, 1), "time_to_detect_ms": 5}, {
        **row("b", 0, 1), "time_to_detect_ms": 6}])["median_time_to_detect_ms"] == 5.5
    assert totals([])["median_time_to_detect_ms"] is None
    j = diff_json(diff(rows, []), rows, [])
    assert j["totals"]["change"]["incidents"] == 0 and len(j["only_baseline"]) == 4


def test_a_step_rules_spike_starts_where_its_own_value_rose() -> None:
    points = [{"t_ms": 900_000 + i * 30_000, "errors": 0, "p95_ms": p, "error_rate": r}
              for i, (p, r) in enumerate([(20, 0.0), (22, 0.01), (700, 0.2), (800, 0.3),
                                          (900, 0.3), (None, None)])]
    timeline = {"bucket_ms": 30_000, "points": points}
    at = 900_000 + 5 * 30_000  # the boundary after the fifth bucket: it is not counted
    latency = change("i", 1, "opened", at, baseline=21.0, error_code="LATENCY",
                     window_count=850, timeline=timeline)
    assert spike_start_ms(latency, W) == 900_000 + 2 * 30_000
    rate = change("i", 1, "opened", at, error_code="ERROR_RATE", window_count=30,
                  timeline=timeline)
    assert spike_start_ms(rate, W) == 900_000 + 2 * 30_000
