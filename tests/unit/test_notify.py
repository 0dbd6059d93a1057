"""Notifications, the pure part: identities, the channels' bodies against the providers'
documented examples, the webhook signature, and the retry schedule on a fake clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.report_fixtures import report as fixture_report
from tocsin.processors.notify import (
    RetryPolicy,
    next_try_ms,
    notification_id,
    outcome,
    pagerduty_event,
    retry_after_ms,
    signature,
    slack_message,
    verify,
    wanted,
    webhook_body,
)
from tocsin.processors.render import slack_blocks

PAGERDUTY = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "pagerduty"
EVENT = {"incident_id": "inc_dd40b8528905eadf", "seq": 1, "kind": "opened",
         "status": "active", "phase": "triggered", "env": "prod", "service": "checkout",
         "step": "payment.charge", "error_code": "PMT_502",
         "family": "checkout:payment.charge:PMT_502", "onset_ms": 1_793_612_403_000,
         "at_ms": 1_793_612_403_000, "window_count": 5, "actor": None}


def demo_report() -> dict[str, Any]:
    return dict(fixture_report())


def example(name: str) -> dict[str, Any]:
    return dict(json.loads((PAGERDUTY / name).read_text()))


def test_a_notification_is_one_per_channel_and_lifecycle_change() -> None:
    ids = {notification_id(c, "inc_a", s) for c in ("slack", "pagerduty", "webhook")
           for s in (1, 2)}
    assert len(ids) == 6 and all(i.startswith("ntf_") and len(i) == 20 for i in ids)
    assert notification_id("slack", "inc_a", 1) == notification_id("slack", "inc_a", 1)


@pytest.mark.parametrize(("channel", "kinds"), [
    ("slack", {"opened", "updated", "acknowledged", "resolved"}),
    ("pagerduty", {"opened", "acknowledged", "resolved"}),
    ("webhook", {"opened", "recovering", "reopened", "resolved", "acknowledged",
                 "investigating", "mitigated", "annotated", "hypothesis", "updated"})])
def test_which_changes_each_channel_is_told(channel: str, kinds: set[str]) -> None:
    every = {"opened", "recovering", "reopened", "resolved", "acknowledged",
             "investigating", "mitigated", "annotated", "hypothesis", "updated"}
    assert {k for k in every if wanted(channel, k)} == kinds


def test_pagerduty_events_have_the_documented_shape() -> None:
    trigger = pagerduty_event(EVENT, demo_report(), "key123",
                              [{"href": "http://tocsin.local/i", "text": "report"}])
    documented = example("events-v2-trigger-docs-example.json")
    assert set(trigger) <= set(documented) | {"links"}
    assert set(trigger["payload"]) == set(documented["payload"])
    assert (trigger["event_action"], trigger["dedup_key"], trigger["routing_key"]) == \
        ("trigger", EVENT["incident_id"], "key123")
    assert trigger["payload"]["severity"] in ("critical", "error", "warning", "info")
    assert len(trigger["payload"]["summary"]) <= 1024
    assert "dependency" in trigger["payload"]["summary"]
    assert trigger["payload"]["custom_details"]["report_hash"] == \
        demo_report()["report_hash"]
    for kind, name in (("acknowledged", "events-v2-acknowledge-docs-example.json"),
                       ("resolved", "events-v2-resolve-docs-example.json")):
        sent = pagerduty_event({**EVENT, "kind": kind, "seq": 2}, demo_report(), "k")
        assert set(sent) == set(example(name))
        assert sent["event_action"] == example(name)["event_action"]
        assert sent["dedup_key"] == EVENT["incident_id"]


def test_slack_says_what_changed_and_keeps_people_s_text_as_text() -> None:
    hostile = {**EVENT, "kind": "acknowledged", "actor": "<!channel> @here *bold*"}
    message = slack_message(hostile, demo_report())
    first = message["blocks"][0]["text"]["text"]
    assert first.startswith("*Acknowledged by ")
    assert "<!channel>" not in first and "&lt;!channel&gt;" in first
    assert "@\u200dhere" in first
    assert message["blocks"][1:] == slack_blocks(demo_report())["blocks"]
    alone = slack_message(EVENT, None)
    assert alone["text"].startswith("Incident opened on checkout:payment.charge:PMT_502")
    assert len(alone["blocks"]) == 2


def test_the_webhook_signature_covers_timestamp_and_body() -> None:
    body = webhook_body("ntf_1", EVENT, None)
    assert json.loads(body) == {"notification_id": "ntf_1", "event": EVENT, "report": None}
    signed = signature("s3cret", 1_700_000_000, body)
    assert signed.startswith("sha256=") and len(signed) == 7 + 64
    assert verify("s3cret", 1_700_000_000, body, signed, now_s=1_700_000_100)
    assert not verify("other", 1_700_000_000, body, signed, now_s=1_700_000_100)
    assert not verify("s3cret", 1_700_000_000, body + b" ", signed, now_s=1_700_000_100)
    assert not verify("s3cret", 1_700_000_001, body, signed, now_s=1_700_000_100)
    # the same delivery replayed an hour later: the signature holds, its age does not
    assert not verify("s3cret", 1_700_000_000, body, signed, now_s=1_700_003_600)


@pytest.mark.parametrize(("status", "expected"), [
    (200, "delivered"), (202, "delivered"), (204, "delivered"), (None, "retry"),
    (408, "retry"), (425, "retry"), (429, "retry"), (500, "retry"), (503, "retry"),
    (400, "failed"), (401, "failed"), (403, "failed"), (404, "failed"), (410, "failed"),
    (301, "failed")])
def test_what_an_answer_means(status: int | None, expected: str) -> None:
    assert outcome(status) == expected


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = 1_700_000_000_000
    assert retry_after_ms("7", now) == 7_000
    assert retry_after_ms("Tue, 14 Nov 2023 22:13:50 GMT", now) == 30_000
    assert retry_after_ms("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0  # in the past
    for bad in (None, "", "soon", "-3", "Tue, 99 Nov"):
        assert retry_after_ms(bad, now) is None


def test_backoff_doubles_to_its_cap_honours_retry_after_and_gives_up() -> None:
    policy = RetryPolicy(base_ms=1_000, cap_ms=10_000, attempts=6)
    now = 5_000
    assert [next_try_ms(policy, a, now) for a in range(1, 7)] == [
        6_000, 7_000, 9_000, 13_000, 15_000, None]
    assert next_try_ms(policy, 1, now, "4") == now + 4_000  # longer than the backoff
    assert next_try_ms(policy, 3, now, "1") == now + 4_000  # shorter: the backoff holds
    assert next_try_ms(policy, 1, now, "3600") == now + 10_000  # capped
