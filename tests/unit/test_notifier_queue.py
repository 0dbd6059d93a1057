"""The notifier's queue without a broker or a receiver: which owed notification goes
next (per channel and incident in sequence order), and that a row being recorded, whatever
its state, never stops the choice."""

from __future__ import annotations

from typing import Any

from tocsin.sinks.duckdb_sink import DuckDBSink
from tocsin.streams.stages.notify import Notifier
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import NotifySettings, Settings


def row(channel: str, incident: str, seq: int, next_try: int | None, **extra: Any
        ) -> dict[str, Any]:
    return {"notification_id": f"{channel}-{incident}-{seq}", "channel": channel,
            "incident_id": incident, "seq": seq, "next_try_ms": next_try, "created_ms": 0,
            **extra}


def notifier() -> Notifier:
    settings = Settings(notify=NotifySettings(webhook_url="http://127.0.0.1:9/x"))
    return Notifier(settings, "127.0.0.1:9", DuckDBSink(":memory:"), Metrics(),
                    clock=lambda: 1_000)


def test_one_at_a_time_per_channel_and_incident_in_sequence_order() -> None:
    n = notifier()
    for r in (row("pagerduty", "inc_a", 2, 0), row("pagerduty", "inc_a", 1, 500),
              row("slack", "inc_a", 1, 0), row("slack", "inc_b", 1, 5_000)):
        n._owed[r["notification_id"]] = r
    due, later = n._due(1_000)
    assert [r["notification_id"] for r in due] == ["slack-inc_a-1", "pagerduty-inc_a-1"]
    assert later == 5_000
    # The acknowledgement (seq 2) waits while the trigger (seq 1) is being tried.
    n._flying.add("pagerduty-inc_a-1")
    due, _ = n._due(1_000)
    assert [r["notification_id"] for r in due] == ["slack-inc_a-1"]


def test_a_row_being_recorded_after_its_last_try_does_not_stop_the_choice() -> None:
    """A delivered or failed row has no next try; while its outcome is written it is still
    owed and in flight. Sorting it with the others once killed the dispatcher."""
    n = notifier()
    done = row("pagerduty", "inc_a", 1, None, status="failed")
    waiting = row("webhook", "inc_a", 1, 1_200)
    n._owed = {done["notification_id"]: done, waiting["notification_id"]: waiting}
    n._flying.add(done["notification_id"])
    due, later = n._due(1_000)
    assert due == [] and later == 1_200


def test_a_notification_waiting_for_its_report_looks_again_when_the_projection_writes(
        ) -> None:
    n = notifier()
    r = row("webhook", "inc_a", 1, 31_000, report_pending=True)
    n._owed[r["notification_id"]] = r
    assert n._due(1_000) == ([], 31_000)
    assert n._due(1_000, news=True)[0] == [r]
