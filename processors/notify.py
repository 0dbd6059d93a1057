"""Notifications, the pure part: which lifecycle changes tell whom, in what bytes, under
which identity, and when to try again (ADR 0017).

Three channels, each turned on by its setting:

- ``slack``: a Slack incoming webhook, the report's Block Kit rendering under a line that
  says what changed, on ``opened``, ``updated``, ``acknowledged`` and ``resolved``;
- ``pagerduty``: PagerDuty Events API v2, ``trigger`` on ``opened``, ``acknowledge`` on
  ``acknowledged``, ``resolve`` on ``resolved``, ``dedup_key`` = the incident id, the
  rendering as custom details;
- ``webhook``: any HTTP endpoint, every lifecycle change with the report as JSON, signed
  with HMAC-SHA256 over the timestamp and the body.

A notification's identity is ``ntf_`` + 16 hex of sha256(channel | incident id | seq): the
same lifecycle change always makes the same notification, so a delivery repeated after a
crash carries the id the receiver already saw (and PagerDuty's ``dedup_key`` keeps one
incident whatever is sent twice). Nothing here reads a clock: the timestamp of a signed
webhook and the time of a retry are arguments.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal

import orjson

from tocsin.processors.render import iso, pagerduty_note, plain, slack, slack_blocks

Channel = Literal["slack", "pagerduty", "webhook"]
CHANNELS: Final = ("slack", "pagerduty", "webhook")
SLACK_KINDS: Final = frozenset({"opened", "updated", "acknowledged", "resolved"})
PAGERDUTY_ACTIONS: Final = {"opened": "trigger", "acknowledged": "acknowledge",
                            "resolved": "resolve"}
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SIGNATURE_HEADER = "X-Tocsin-Signature"
TIMESTAMP_HEADER = "X-Tocsin-Timestamp"
ID_HEADER = "X-Tocsin-Notification-Id"
SUMMARY_MAX = 1024  # PagerDuty's payload.summary limit
CUSTOM_NOTE_MAX = 8_000  # of the rendering sent as custom details


def notification_id(channel: str, incident_id: str, seq: int,
                    news_signature: str | None = None) -> str:
    """One per channel and lifecycle change; for news (``updated``, ADR 0018), which
    shares the seq of the change before it, one per channel and news."""
    material = f"{channel}|{incident_id}|{seq}"
    if news_signature is not None:
        material += f"|{news_signature}"
    return "ntf_" + hashlib.sha256(material.encode()).hexdigest()[:16]


def wanted(channel: str, kind: str) -> bool:
    """Whether a lifecycle change of this kind is told on this channel."""
    if channel == "slack":
        return kind in SLACK_KINDS
    if channel == "pagerduty":
        return kind in PAGERDUTY_ACTIONS
    return channel == "webhook"


def _what(event: dict[str, Any]) -> str:
    """One line saying what changed, for a person."""
    kind, family = event["kind"], event["family"]
    by = f" by {event['actor']}" if event.get("actor") else ""
    if kind == "opened":
        return f"Incident opened on {family}"
    if kind == "updated":
        what = [f"{n} {w}" for n, w in ((len(event.get("added") or ()), "added"),
                                        (len(event.get("removed") or ()), "removed")) if n]
        if event.get("news_cause"):
            what.append(f"cause {event['news_cause']}")
        return f"New evidence on {family}" + (f" ({', '.join(what)})" if what else "")
    return f"{kind.capitalize()}{by}: {family}"


def slack_message(event: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    """A Slack incoming-webhook message: what changed, then the report's blocks (or the
    lifecycle change alone while no report of it exists yet)."""
    line = {"type": "section", "text": {"type": "mrkdwn",
                                        "text": f"*{slack(_what(event))}*"[:3000]}}
    if report is None:
        return {"text": plain(_what(event))[:3000], "blocks": [line, {
            "type": "context", "elements": [{"type": "mrkdwn", "text": slack(
                f"{event['incident_id']} · seq {event['seq']} · {iso(event['at_ms'])}")}]}]}
    message = slack_blocks(report)
    return {"text": plain(f"{_what(event)}. {message['text']}")[:3000],
            "blocks": [line, *message["blocks"]]}


def pagerduty_event(event: dict[str, Any], report: dict[str, Any] | None,
                    routing_key: str, links: list[dict[str, str]] | None = None
                    ) -> dict[str, Any]:
    """A PagerDuty Events API v2 event (``event_action`` from :data:`PAGERDUTY_ACTIONS`)."""
    action = PAGERDUTY_ACTIONS[event["kind"]]
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action,
                            "dedup_key": event["incident_id"]}
    if action != "trigger":
        return body
    cause = report["cause"] if report is not None else None
    summary = f"{event['family']} spiked ({event['window_count']} errors in the window)"
    if cause is not None:
        summary += f"; likely {cause['kind']} ({cause['confidence']})"
    details: dict[str, Any] = {"incident_id": event["incident_id"], "seq": event["seq"],
                               "family": event["family"], "onset": iso(event["onset_ms"])}
    if report is not None:
        details.update(report_hash=report["report_hash"],
                       triage=pagerduty_note(report)[:CUSTOM_NOTE_MAX])
    body["payload"] = {
        "summary": plain(summary)[:SUMMARY_MAX], "source": f"tocsin:{event['service']}",
        "severity": "error", "timestamp": iso(event["at_ms"]),
        "component": event["service"], "group": event["env"], "class": event["error_code"],
        "custom_details": details}
    body["client"] = "Tocsin"
    if links:
        body["links"] = links
    return body


def webhook_body(notification: str, event: dict[str, Any], report: dict[str, Any] | None
                 ) -> bytes:
    """The generic webhook's JSON: the notification id, the lifecycle event, the report
    (null while none exists yet)."""
    return orjson.dumps({"notification_id": notification, "event": event, "report": report},
                        option=orjson.OPT_SORT_KEYS)


def signature(secret: str, timestamp_s: int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256, keyed by the secret, of ``<timestamp>.`` + the body:
    the timestamp header is signed too, so a captured delivery replayed later is told by
    its age."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp_s: int, body: bytes, signed: str, now_s: int,
           tolerance_s: int = 300) -> bool:
    """What a receiver checks: the signature, and a timestamp within the tolerance."""
    return abs(now_s - timestamp_s) <= tolerance_s and \
        hmac.compare_digest(signature(secret, timestamp_s, body), signed)


# ------------------------------------------------------------------------- retries

@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff from ``base_ms`` doubling to ``cap_ms``, at most ``attempts``
    tries; a ``Retry-After`` from the receiver is honoured (up to ``cap_ms``)."""

    base_ms: int = 1_000
    cap_ms: int = 300_000
    attempts: int = 8


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A ``Retry-After`` header as milliseconds from now: delta seconds or an HTTP date;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int(when.timestamp() * 1000) - now_ms)


Outcome = Literal["delivered", "retry", "failed"]


def outcome(status: int | None) -> Outcome:
    """What an answer means: 2xx delivered; no answer (None), 408, 425, 429 and 5xx are
    worth another try; any other 4xx will not get better by sending it again."""
    if status is not None and 200 <= status < 300:
        return "delivered"
    if status is None or status in (408, 425, 429) or status >= 500:
        return "retry"
    return "failed"


def next_try_ms(policy: RetryPolicy, attempt: int, now_ms: int,
                retry_after: str | None = None) -> int | None:
    """When to try again after failed attempt number ``attempt`` (1 = the first), or None
    when the attempts are spent."""
    if attempt >= policy.attempts:
        return None
    backoff: int = min(policy.cap_ms, policy.base_ms * (1 << (attempt - 1)))
    asked = retry_after_ms(retry_after, now_ms)
    if asked is not None:
        backoff = max(backoff, min(asked, policy.cap_ms))
    return now_ms + backoff
