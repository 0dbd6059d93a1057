"""News instead of noise (ADR 0018): a new version of an open incident's report makes an
`updated` event only when it tells something new — a signal correlated or gone, the
cause changed, a new failing family — and the same news is not told again within the
cooldown. Pure, on event times."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tests.unit.report_fixtures import MIN, ONSET, SIGNALS, Sig
from tests.unit.test_triage import LIFECYCLE
from tocsin.processors.news import Basis, basis, cooled, news
from tocsin.processors.triage import Triage, TriageConfig

OPENED, RECOVERING, RESOLVED = LIFECYCLE
DEPLOY, DEPENDENCY, RUNTIME, ALERT = SIGNALS


def fold(items: list[tuple[str, Any]], cooldown_ms: int = 15 * MIN
         ) -> tuple[Triage, list[dict[str, Any]]]:
    triage = Triage(TriageConfig(news_cooldown_ms=cooldown_ms))
    updates: list[dict[str, Any]] = []
    for kind, item in items:
        if kind == "incident":
            triage.on_incident_event(item, item.get("downstream"))
        else:
            triage.on_signal(item)
        updates += triage.take_updates()
    return triage, updates


def test_the_opening_is_not_news_a_new_signal_is() -> None:
    _, updates = fold([("incident", OPENED), ("signal", ALERT)])
    assert len(updates) == 1
    news_event = updates[0]
    assert news_event["kind"] == "updated" and news_event["seq"] == OPENED["seq"]
    assert news_event["added"] == [f"alert:{ALERT.signal_id}"]
    assert news_event["removed"] == [] and news_event["news_signature"].startswith("news_")
    assert news_event["at_ms"] == ALERT.event_time_ms  # the version's event time


def test_a_signal_before_the_opening_is_in_the_first_version_not_news() -> None:
    _, updates = fold([("signal", ALERT), ("incident", OPENED)])
    assert updates == []


def test_the_cause_changing_is_news_and_says_from_what_to_what() -> None:
    # The runtime fault alone points at the runtime; the deploy that lands later (before
    # onset) and the dependency signal move it.
    _, updates = fold([("signal", RUNTIME), ("incident", OPENED), ("signal", DEPENDENCY)])
    assert len(updates) == 1
    assert updates[0]["news_cause"] is not None and " -> dependency/" in \
        updates[0]["news_cause"]


def test_a_re_evaluation_that_tells_nothing_new_is_not_news() -> None:
    again = replace(ALERT, event_time_ms=ALERT.event_time_ms + 1, occurrences=2)
    _, updates = fold([("incident", OPENED), ("signal", ALERT), ("signal", again)])
    assert len(updates) == 1  # the second occurrence changed the report, not the news


def test_a_resolved_incident_makes_no_news() -> None:
    late = Sig("sig_late", "alert", "late", ONSET + 10 * MIN)
    _, updates = fold([("incident", OPENED), ("incident", RESOLVED), ("signal", late)])
    assert updates == []


def test_the_same_news_is_told_again_only_after_the_cooldown() -> None:
    before = Basis(frozenset({"deploy:a"}), ("deploy", "r"), frozenset())
    after = Basis(frozenset({"deploy:a", "alert:b"}), ("deploy", "r"), frozenset())
    found = news(before, after)
    assert found is not None and found == news(before, after)  # stable signature
    told = {found["signature"]: 1_000}
    assert not cooled(told, found["signature"], 1_000 + 15 * MIN - 1)
    assert cooled(told, found["signature"], 1_000 + 15 * MIN)
    assert cooled(told, "news_other", 1_001)


def test_news_names_what_was_added_and_removed_and_new_families() -> None:
    before = Basis(frozenset({"alert:a", "deploy:d"}), ("deploy", "deploy_rule"),
                   frozenset({"checkout:pay:E"}))
    after = Basis(frozenset({"alert:a", "runtime:r"}), ("runtime", "runtime_rule"),
                  frozenset({"checkout:pay:E", "payment:charge:E"}))
    found = news(before, after)
    assert found is not None
    assert found["added"] == ["runtime:r", "family:payment:charge:E"]
    assert found["removed"] == ["deploy:d"]
    assert found["cause"] == {"from": "deploy/deploy_rule", "to": "runtime/runtime_rule"}
    assert news(after, after) is None


def test_basis_reads_only_signals_cause_and_families_of_a_report() -> None:
    triage, _ = fold([("incident", OPENED), *[("signal", s) for s in SIGNALS]])
    report = triage.report(OPENED["incident_id"])
    b = basis(report)
    assert b.lines == {f"{s.type}:{s.signal_id}" for s in SIGNALS}
    assert b.cause == (report["cause"]["kind"], report["cause"]["rule_id"])
    assert Basis.from_list(b.to_list()) == b
