"""The live page's feed (streams/web/live.py): numbering, resuming from Last-Event-ID, and
the reset a client gets when it cannot resume; no broker, no server."""

from __future__ import annotations

import asyncio

import orjson

from tocsin.streams.web.live import LiveFeed, frame


def event(seq: int, kind: str = "opened") -> dict[str, object]:
    return {"incident_id": "inc_1", "seq": seq, "kind": kind, "status": "active",
            "phase": "triggered", "family": "a:b:<c>", "timeline": {"points": []}}


def test_events_are_numbered_and_resumable_from_any_kept_id() -> None:
    feed = LiveFeed("77", kept=3)
    assert feed.position(None) == 0
    feed.written([event(1), event(2)])
    feed.reports([{"incident_id": "inc_1", "report_hash": "sha256:x", "status": "active",
                   "incident_seq": 2, "cause_kind": "app", "body": "{...}"}])
    assert [n for n, _ in feed.after(0)] == [1, 2, 3]
    assert feed.position("77-1") == 1 and [n for n, _ in feed.after(1)] == [2, 3]
    first = feed.after(2)[0][1].decode()
    assert first.startswith("id: 77-3\nevent: report\ndata: ") and first.endswith("\n\n")
    assert "body" not in first  # the report's bytes are read from the API, not pushed
    feed.written([event(3)])  # the oldest falls out of what is kept
    assert feed.position("77-0") is None and feed.position("77-1") == 1
    assert feed.position("77-4") == 4


def test_what_cannot_be_resumed_is_told_to_reset() -> None:
    feed = LiveFeed("77")
    feed.written([event(1)])
    for last in ("76-1", "77-9", "77-x", "garbage", "-1", "77-", "77-" + "9" * 8000,
                 "77-\u0661"):  # no int() of 8,000 digits; an Arabic-Indic one is no id
        assert feed.position(last) is None, last


def test_a_frame_is_one_line_of_json_whatever_the_text() -> None:
    data = frame("1-2", "incident", {"note": "line\nbreak\r\n\n<script>", "n": 1})
    head, _, body = data.decode().partition("data: ")
    assert head == "id: 1-2\nevent: incident\n"
    assert body.count("\n") == 2 and orjson.loads(body)["note"].startswith("line\nbreak")


def test_the_timeline_is_not_pushed_on_the_stream() -> None:
    feed = LiveFeed("1")
    feed.written([event(1)])
    assert b"timeline" not in feed.after(0)[0][1]


def test_a_waiting_stream_wakes_on_the_next_event() -> None:
    async def scenario() -> list[int]:
        feed = LiveFeed("1")
        waiter = asyncio.ensure_future(feed.wait(0, 30))
        await asyncio.sleep(0)
        assert not waiter.done()
        feed.written([event(1)])
        await asyncio.wait_for(waiter, 5)
        await feed.wait(0, 30)  # already past: at once
        return [n for n, _ in feed.after(0)]

    assert asyncio.run(scenario()) == [1]
