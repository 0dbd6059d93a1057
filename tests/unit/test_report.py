"""triage.v1: canonical bytes, the two hashes, golden files, next checks from evidence."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tests.unit.report_fixtures import MIN, ONSET, SIGNALS, STATE, Sig, report
from tocsin.processors.report import canonical_json, verify

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_golden_report_hashes() -> None:
    """A change in a hash is a visible diff in review: update the golden file on purpose
    (python -m tests.unit.test_report) and say why."""
    golden = json.loads((GOLDEN / "report_demo.json").read_text())
    r = report()
    assert r["report_hash"] == golden["report_hash"]
    assert r["evidence_fingerprint"] == golden["evidence_fingerprint"]
    assert canonical_json(r) == canonical_json(golden)


def test_same_evidence_same_hash_whatever_the_order_or_time_of_rendering() -> None:
    first = report()
    assert report(list(reversed(SIGNALS)))["report_hash"] == first["report_hash"]
    later = report(as_of_ms=ONSET + 60 * MIN)
    assert later["generated_at_ms"] != first["generated_at_ms"]
    assert later["report_hash"] == first["report_hash"]
    assert verify(first) and verify(later)


def test_new_evidence_changes_fingerprint_and_hash() -> None:
    first = report()
    more = report([*SIGNALS, Sig("sig_alert2", "alert", "p99 latency", ONSET + MIN)])
    assert more["evidence_fingerprint"] != first["evidence_fingerprint"]
    assert more["report_hash"] != first["report_hash"]


def test_material_change_without_new_evidence_changes_only_the_hash() -> None:
    first = report()
    resolved = report(state=replace(STATE, status="resolved", seq=3,
                                    resolved_ms=ONSET + 12 * MIN))
    assert resolved["evidence_fingerprint"] == first["evidence_fingerprint"]
    assert resolved["report_hash"] != first["report_hash"]


def test_tampering_is_detected() -> None:
    r = report()
    r["next_checks"] = ["nothing to see"]
    assert not verify(r)


def test_cause_and_next_checks_name_the_evidence() -> None:
    r = report()
    cause = r["cause"]
    # The deploy (6 min before) is weighed against the failing downstream the step names
    # (anchored at onset), which wins; the strongest dependency rule, the dependency
    # signal (2 min before), is cited.
    assert (cause["kind"], cause["confidence"], cause["rule_id"]) == \
        ("dependency", "high", "dependency_signal")
    assert cause["inputs"] == ["sig_dep"]
    assert "closer to onset" in cause["tiebreak"]
    assert any("payment" in c and "PMT_502" in c for c in r["next_checks"])
    # Without a downstream, the deploy decides (it comes before the runtime fault).
    no_downstream = replace(STATE, facts=replace(STATE.facts, downstream=None))
    deploy_first = report([replace(SIGNALS[0], event_time_ms=ONSET - 30_000), *SIGNALS[1:]],
                          state=no_downstream)
    assert deploy_first["cause"]["kind"] == "deploy"
    assert deploy_first["suspect_change"]["version"] == "1.5.0"
    assert any("1.5.0" in c and "8f2c1e0" in c for c in deploy_first["next_checks"])


def test_a_deploy_after_onset_is_evidence_and_a_next_check_not_the_cause() -> None:
    later = replace(SIGNALS[0], event_time_ms=ONSET + 2 * MIN + 30_000)
    r = report([later], state=replace(STATE, facts=replace(STATE.facts, downstream=None)))
    assert (r["cause"]["kind"], r["cause"]["rule_id"]) == ("app", "app_step")
    assert r["cause"]["later_deploys"] == ["sig_deploy"]
    assert r["suspect_change"] is None
    assert [d["id"] for d in r["deploys"]] == ["sig_deploy"]
    assert any(e["id"] == "sig_deploy" for e in r["evidence"])
    assert r["next_checks"][-1] == (
        "checkout 1.5.0 (commit 8f2c1e0) by dana landed 2 min 30 s after onset, so it did "
        "not start checkout:payment.charge:PMT_502: check whether it changed the failure "
        "(a fix, a rollback or a new fault).")


def test_runtime_next_check_names_the_pod() -> None:
    r = report([s for s in SIGNALS if s.type == "runtime"],
               state=replace(STATE, facts=replace(STATE.facts, downstream=None)))
    assert r["cause"]["kind"] == "runtime"
    assert any("checkout-7d9f" in c and "exit code 137" in c for c in r["next_checks"])


def test_evidence_is_capped_and_ordered() -> None:
    alerts = [Sig(f"a{n:02d}", "alert", f"alert {n}", ONSET + n * 1000) for n in range(20)]
    runtime = [Sig(f"r{n}", "runtime", "fault", ONSET - MIN + n, severity=sev)
               for n, sev in enumerate(["info", "critical", "warning", "critical"])]
    r = report([*alerts, *runtime])
    assert len(r["alerts"]) == 8
    assert [a["id"] for a in r["alerts"]] == [f"a{n:02d}" for n in range(8)]
    assert [x["id"] for x in r["runtime"]] == ["r1", "r3", "r2", "r0"]


def main() -> None:  # pragma: no cover - regenerates the golden file on purpose
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "report_demo.json").write_text(
        json.dumps(report(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
