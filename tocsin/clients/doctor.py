"""``tocsin doctor``: is this Tocsin healthy, and if not, what to do about it.

One line per check, ``ok|warn|fail  <name>  <detail>  [fix: ...]``; exit 0 only when no
check fails (1 otherwise, 2 for bad arguments). ``--json`` prints the same checks as one
object. The checks:

- ``broker``: it answers (aiokafka bootstrap), its cluster id and brokers (Metadata), and
  the Kafka APIs it offers (ApiVersions) against those Tocsin uses. The Kafka protocol
  carries no product version: the API ranges are the version facts a broker gives.
- ``topics``: every topic of the settings (``TOCSIN_TOPICS__*``) exists, with its
  partitions. Read from the whole cluster's metadata: naming a topic in a metadata request
  would make a broker that auto-creates topics (Tansu does) create it.
- ``lag:<stage>``: records between each consumer group's committed offsets and the
  partitions' ends (high watermarks from a fetch: Tansu's ListOffsets can answer the base
  offset of the last batch). The stages (``<app>-detect``, ``-spans``, ``-traces``,
  ``-triage``) keep their positions in their checkpoints and commit offsets after each
  one, so the committed lag is an upper bound that includes up to a checkpoint interval.
  The projection and the notifier keep theirs in DuckDB (``positions``), read as they are.
- ``worker``: ``/readyz`` (every part of its role up) and ``/healthz`` (role, partitions).
- ``duckdb``: the schema version in ``tocsin_meta``, through the worker's ``/v1/query``
  when a worker holds the file, else from the file opened read-only.
- ``notifications``: notifications ``failed`` in the last 24 hours (and ones pending for
  over an hour).
- ``dead-letters``: dead letters written in the last hour, from the dead-letter topic's
  record timestamps (the ``dead_letters`` table has no time column): a binary search over
  offsets, O(log n) single-record fetches per partition.
- ``report-hash``: a pinned report is sealed and rendered twice in every format; the hash
  must be the pinned one and every rendering identical (ADR 0010).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from tocsin.clients.gate import (
    CannotTell,
    check_worker_url,
    err,
    http_json,
    refusal,
    settings_or_usage,
)

Status = Literal["ok", "warn", "fail"]
HOUR_MS = 3_600_000
NOTIFY_WINDOW_MS = 24 * HOUR_MS  # failed notifications this recent fail the check
PENDING_STALE_MS = HOUR_MS  # a notification pending this long is stuck
DEFAULT_MAX_LAG = 10_000

# (stage, the topic setting its consumer group reads): groups are ``<app_id>-<stage>``.
STAGE_GROUPS: tuple[tuple[str, str], ...] = (
    ("detect", "events"), ("spans", "spans"), ("traces", "spans_by_trace"),
    ("triage", "summaries"))
NOTIFY_PREFIX = "notify|"  # the notifier's rows in `positions` (streams/stages/notify.py)

# Kafka API keys Tocsin's clients use (aiokafka producer, consumer groups, admin).
REQUIRED_APIS: dict[int, str] = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
    9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
    13: "LeaveGroup", 14: "SyncGroup", 18: "ApiVersions", 19: "CreateTopics",
}
SHOWN_APIS = (0, 1, 3, 18)


# ---------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def exit_code(checks: Sequence[Check]) -> int:
    """0 only when no check fails."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def format_line(check: Check, width: int = 0) -> str:
    line = f"{check.status:<4}  {check.name:<{width}}  {check.detail}"
    return line + (f"  fix: {check.fix}" if check.fix else "")


def format_report(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    return "\n".join(format_line(c, width) for c in checks)


def as_json(checks: Sequence[Check]) -> dict[str, Any]:
    return {"ok": exit_code(checks) == 0,
            "counts": {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")},
            "checks": [asdict(c) for c in checks]}


# ---------------------------------------------------------------------- lag math


def partition_lag(end: int, committed: int | None, start: int = 0) -> int:
    """Records from the committed offset (the log's start when none, or one below it) to
    the partition's end; 0 when the committed offset is at or past the end."""
    at = start if committed is None or committed < start else committed
    return max(0, end - at)


@dataclass(frozen=True)
class Lag:
    behind: int
    partitions: int
    uncommitted: list[str]  # partitions holding records with no position
    past_end: list[str]  # a position beyond the end: the log restarted (ADR 0014)
    worst: tuple[str, int] | None  # the partition most behind, and by how much


def lag_of(ends: Mapping[str, Mapping[int, int]],
           positions: Mapping[tuple[str, int], int | None],
           starts: Mapping[str, Mapping[int, int]] | None = None) -> Lag:
    """The lag of positions (by (topic, partition)) against the partitions' ends (by
    topic, then partition). Partitions are named ``p`` for one topic, ``topic[p]`` for
    several."""
    starts = starts or {}
    one = len(ends) == 1
    per: dict[str, int] = {}
    uncommitted: list[str] = []
    past_end: list[str] = []
    for topic, parts in sorted(ends.items()):
        for p, end in sorted(parts.items()):
            label = str(p) if one else f"{topic}[{p}]"
            start = starts.get(topic, {}).get(p, 0)
            at = positions.get((topic, p))
            per[label] = partition_lag(end, at, start)
            if at is None and end > start:
                uncommitted.append(label)
            elif at is not None and at > end:
                past_end.append(label)
    worst = max(per.items(), key=lambda kv: kv[1]) if per else None
    return Lag(sum(per.values()), len(per), uncommitted, past_end,
               worst if worst and worst[1] else None)


def lag_check(name: str, what: str, lag: Lag, max_lag: int, how: str) -> Check:
    """``what``: the topic(s); ``how``: where the positions come from."""
    facts = {"of": what, "behind": lag.behind, "partitions": lag.partitions,
             "uncommitted": lag.uncommitted, "past_end": lag.past_end, "max_lag": max_lag}
    detail = f"{lag.behind} behind on {what} ({lag.partitions} partitions; {how})"
    if lag.worst:
        detail += f"; most on partition {lag.worst[0]} ({lag.worst[1]})"
    if lag.uncommitted:
        detail += (f"; no position for partitions {', '.join(lag.uncommitted)} "
                   "(counted from the log's start)")
    if lag.past_end:
        return Check(name, "warn", detail + f"; positions past the end on partitions "
                     f"{', '.join(lag.past_end)}: the log restarted", "the stage reads a "
                     "restarted log as a new epoch (ADR 0014); if it recurs, make the broker "
                     "keep its topics (--broker-storage)", facts)
    if lag.behind > max_lag:
        return Check(name, "warn", detail + f", over {max_lag}",
                     "add workers (partitions are shared through the group) or find what "
                     "slows the stage: /healthz, /metrics; raise --max-lag if expected",
                     facts)
    return Check(name, "ok", detail, None, facts)


def _ranges(parts: Sequence[int]) -> str:
    out: list[str] = []
    for p in sorted(parts):
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ", ".join(out)


# ---------------------------------------------------------------------- dead letters


Probe = Callable[[int], Awaitable[tuple[int, int] | None]]
"""offset -> (offset, timestamp ms) of the first record at or after it, None past the end."""


async def first_since(probe: Probe, start: int, end: int, cutoff_ms: int) -> int:
    """The offset of the first record stamped at or after ``cutoff_ms`` in [start, end)
    (``end`` when none), assuming time stamps do not go back along the partition (the
    dead-letter senders stamp at send time): a binary search, O(log n) probes."""
    if end <= start:
        return end
    first = await probe(start)
    if first is None:
        return end
    if first[1] >= cutoff_ms:
        return first[0]
    last = await probe(end - 1)
    if last is None or last[1] < cutoff_ms:
        return end
    # The first record at or after lo is older than the cutoff, the one at or after hi
    # (found at hi_offset) is not.
    lo, hi, hi_offset = start, end - 1, last[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await probe(mid)
        if found is not None and found[1] >= cutoff_ms:
            hi, hi_offset = mid, found[0]
        else:
            lo = mid
    return hi_offset


@dataclass
class DeadLetterFacts:
    in_hour: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    newest_ms: int | None = None
    newest_reason: str | None = None
    newest_source: str | None = None


def dead_letter_check(topic: str, facts: DeadLetterFacts | None, error: str | None,
                      total_rows: int | None) -> Check:
    stored = f"; {total_rows} in DuckDB in all" if total_rows is not None else ""
    if facts is None:
        return Check("dead-letters", "warn", f"not checked: {error or 'no broker'}{stored}",
                     "make the broker reachable, then run doctor again")
    data = {"topic": topic, "last_hour": facts.in_hour,
            "per_partition": {str(p): n for p, n in sorted(facts.per_partition.items())},
            "newest_reason": facts.newest_reason, "stored": total_rows}
    if not facts.in_hour:
        return Check("dead-letters", "ok", f"none in the last hour on {topic}{stored}",
                     None, data)
    newest = ""
    if facts.newest_reason:
        source = f" from {facts.newest_source}" if facts.newest_source else ""
        newest = f"; newest{source}: {_clip(facts.newest_reason, 160)}"
    return Check("dead-letters", "warn",
                 f"{facts.in_hour} in the last hour on {topic}{newest}{stored}",
                 "see what producers send: SELECT source_topic, reason, count(*) FROM "
                 "dead_letters GROUP BY ALL; fix the producer (or its TOCSIN_EVENT_MAPPING)",
                 data)


def _clip(text: str, most: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[:most - 1] + "…"


# ---------------------------------------------------------------------- other checks


def broker_check(bootstrap: str | None, facts: BrokerFacts | None) -> Check:
    if bootstrap is None:
        return Check("broker", "fail", "no broker address known",
                     "pass --broker HOST:PORT or set TOCSIN_BROKER (`tocsin run` prints "
                     "the embedded broker's address; a running worker's is found with "
                     "--db)")
    if facts is None or facts.error is not None:
        why = facts.error if facts is not None else "not asked"
        return Check("broker", "fail", f"no answer from {bootstrap}: {why}",
                     "start the broker (or `tocsin run`, which embeds one) or point "
                     "--broker / TOCSIN_BROKER at the right address", {"bootstrap": bootstrap})
    apis = facts.api_versions
    shown = ", ".join(f"{REQUIRED_APIS[k]} v{apis[k][1]}" for k in SHOWN_APIS if k in apis)
    data = {"bootstrap": bootstrap, "cluster_id": facts.cluster_id,
            "brokers": facts.brokers, "controller": facts.controller,
            "api_versions": {REQUIRED_APIS.get(k, str(k)): list(v)
                             for k, v in sorted(apis.items())}}
    detail = (f"{bootstrap}: cluster {facts.cluster_id or '?'}, {facts.brokers} "
              f"broker{'s' if facts.brokers != 1 else ''}, Kafka APIs {shown or '?'}")
    missing = [name for key, name in REQUIRED_APIS.items() if key not in apis]
    if apis and missing:
        return Check("broker", "fail", detail + f"; missing {', '.join(missing)}",
                     "use a Kafka-compatible broker that offers these APIs (Apache Kafka "
                     "≥ 2.x, Tansu)", data)
    return Check("broker", "ok", detail, None, data)


def topics_check(expected: Mapping[str, str], facts: BrokerFacts | None, partitions: int
                 ) -> Check:
    """``expected``: setting -> topic name."""
    if facts is None or facts.error is not None:
        return Check("topics", "warn", "not checked: the broker did not answer",
                     "make the broker reachable, then run doctor again")
    found = {setting: facts.topics.get(topic) for setting, topic in expected.items()}
    data = {"partitions": {topic: facts.topics.get(topic) for topic in expected.values()}}
    missing = [expected[s] for s, n in found.items() if n is None]
    broken = [f"{expected[s]}: {facts.topic_errors[expected[s]]}" for s in found
              if expected[s] in facts.topic_errors]
    counts: dict[int, list[str]] = {}
    for setting, n in found.items():
        if n is not None:
            counts.setdefault(n, []).append(expected[setting])
    shape = "; ".join(f"{len(names)} with {n} partition{'s' if n != 1 else ''}"
                      for n, names in sorted(counts.items()))
    if missing:
        return Check("topics", "fail", f"missing {', '.join(missing)}"
                     + (f" ({shape} present)" if shape else ""),
                     f"start the worker (`tocsin run` creates them, {partitions} partitions: "
                     "TOCSIN_PARTITIONS), or check TOCSIN_APP_ID / TOCSIN_TOPICS__* are the "
                     "worker's", data)
    if broken:
        return Check("topics", "fail", "; ".join(broken),
                     "see the broker's log: partitions without a leader are not readable",
                     data)
    if len(counts) > 1:
        shape = ", ".join(f"{expected[s]} {n}" for s, n in found.items())
    return Check("topics", "ok", f"{len(expected)} present ({shape})", None, data)


def worker_check(base: str | None, why_none: str | None, ready: tuple[int, Any] | None,
                 health: Any, error: str | None) -> Check:
    if base is None:
        return Check("worker", "fail", why_none or "no worker",
                     "start one (`tocsin run --db FILE`) or pass --worker URL")
    if error is not None:
        return Check("worker", "fail", error,
                     "start the worker (`tocsin run`), or pass the --worker URL it serves "
                     "(--http-port, TOCSIN_HTTP_PORT)", {"url": base})
    health = health if isinstance(health, dict) else {}
    parts: dict[str, bool] = dict(health.get("parts") or
                                  (ready[1].get("parts") if ready and
                                   isinstance(ready[1], dict) else {}) or {})
    role = health.get("role", "?")
    data = {"url": base, "role": role, "status": health.get("status"), "parts": parts,
            "partitions": health.get("partitions"),
            "projection_caught_up": health.get("projection_caught_up")}
    up = [p for p, ok in parts.items() if ok]
    down = [p for p, ok in parts.items() if not ok]
    detail = f"{base}: role {role}"
    if health.get("partitions"):
        detail += f", detection holds partitions {_ranges(health['partitions'])}"
    if ready is not None and ready[0] == 200:
        caught = "" if role == "detect" else (
            ", projection caught up" if health.get("projection_caught_up")
            else ", projection catching up")
        return Check("worker", "ok", f"ready at {detail}; up: {', '.join(up)}{caught}",
                     None, data)
    status = health.get("status") or "not ready"
    fix = ("wait for it to start and run doctor again" if status == "starting" else
           "read the worker's log (the parts down say where); a broker away longer than "
           "TOCSIN_BROKER_OUTAGE_EXIT_MS makes it exit for its supervisor to restart it")
    code = ready[0] if ready is not None else "?"
    return Check("worker", "fail", f"not ready ({status}, /readyz {code}) at {detail}; "
                 f"down: {', '.join(down) or '?'}", fix, data)


def schema_check(found: str | None, expected: int, where: str, error: str | None,
                 missing: bool = False) -> Check:
    """``missing``: there is no database at all (a failure; other errors only stop the
    check)."""
    data = {"where": where, "schema_version": found, "expected": expected}
    if error is not None:
        return Check("duckdb", "fail" if missing else "warn",
                     error if missing else f"not checked: {error}",
                     "run `tocsin run --db FILE` (it creates and migrates the file), or "
                     "pass the right --db / --worker", data)
    if found is None:
        return Check("duckdb", "warn", f"{where}: no schema version in tocsin_meta",
                     "start a worker on the file: it writes the schema and its version",
                     data)
    try:
        version = int(found)
    except ValueError:
        return Check("duckdb", "fail", f"{where}: schema version {found!r} is not a number",
                     "this file was not written by Tocsin: point --db at the worker's", data)
    if version == expected:
        return Check("duckdb", "ok", f"{where}: schema version {version}", None, data)
    if version < expected:
        return Check("duckdb", "warn", f"{where}: schema version {version}, this tocsin "
                     f"writes {expected}", "restart the worker with this tocsin: it migrates "
                     "the file at start", data)
    return Check("duckdb", "warn", f"{where}: schema version {version}, newer than this "
                 f"tocsin's {expected}", "upgrade this tocsin (the CLI is older than the "
                 "worker that wrote the file)", data)


def notifications_check(rows: Sequence[Mapping[str, Any]] | None, now_ms: int,
                        error: str | None) -> Check:
    """``rows``: (channel, status, n, recent, newest_ms, last_error, last_status, oldest_ms)
    per channel and status, where ``recent`` counts those created in the window."""
    if rows is None:
        return Check("notifications", "warn", f"not checked: {error or 'no database'}",
                     "start the worker that keeps the DuckDB projection, or pass --db")
    by: dict[str, int] = {}
    for r in rows:
        by[r["status"]] = by.get(r["status"], 0) + int(r["n"])
    failed = [r for r in rows if r["status"] == "failed" and int(r["recent"] or 0)]
    older = sum(int(r["n"]) - int(r["recent"] or 0) for r in rows if r["status"] == "failed")
    stuck = [r for r in rows if r["status"] == "pending" and r.get("oldest_ms") is not None
             and now_ms - int(r["oldest_ms"]) > PENDING_STALE_MS]
    data = {"by_status": by, "failed_recent": {r["channel"]: int(r["recent"]) for r in failed},
            "failed_older": older}
    told = ", ".join(f"{n} {s}" for s, n in sorted(by.items())) or "none yet"
    if failed:
        parts = []
        for r in failed:
            why = f"{r['last_status']}" if r.get("last_status") is not None else \
                _clip(str(r.get("last_error") or "no answer"), 120)
            parts.append(f"{r['channel']} {int(r['recent'])} (last: {why})")
        return Check("notifications", "fail",
                     f"failed in the last 24 h: {'; '.join(parts)} ({told})",
                     "check the channel's URL, key and reachability (TOCSIN_NOTIFY__*); "
                     "SELECT channel, last_status, last_error FROM notifications WHERE "
                     "status = 'failed'", data)
    if stuck:
        channels = ", ".join(sorted({r["channel"] for r in stuck}))
        return Check("notifications", "warn",
                     f"pending for over an hour on {channels} ({told})",
                     "the receiver keeps failing or hanging: check it and "
                     "TOCSIN_NOTIFY__TIMEOUT_MS / __ATTEMPTS", data)
    extra = f"; {older} failed before the last 24 h" if older else ""
    return Check("notifications", "ok", f"no failure in the last 24 h ({told}){extra}",
                 None, data)


# ---------------------------------------------------------------------- report self-test

# A small sealed-to-be report (triage.v1, from tests/golden/report_demo.json), and the
# hash this build must give it. A change of the canonical form or of the hash rule changes
# every report's hash: that is a new report version (ADR 0010), not a silent drift.
PINNED_REPORT: dict[str, Any] = {
    "alerts": [{"id": "sig_alert", "occurrences": 3, "service": "checkout",
                "severity": "warning", "source": "alertmanager", "state": "firing",
                "time_ms": 1793612433000, "title": "CheckoutErrorRate high",
                "url": "http://prometheus:9090/graph?g0.expr=rate"}],
    "cause": {"candidates": [{"anchor_ms": 1793612283000, "confidence": "high",
                              "inputs": ["sig_dep"], "kind": "dependency",
                              "rule_id": "dependency_signal"}],
              "confidence": "high", "inputs": ["sig_dep"], "kind": "dependency",
              "later_deploys": [],
              "reason": "dependency signal on payment, the downstream payment.charge calls",
              "rule_id": "dependency_signal", "rule_version": 3,
              "thresholds": {"dependency_window_ms": 900000, "deploy_window_ms": 900000,
                             "runtime_after_ms": 60000, "runtime_before_ms": 300000,
                             "trace_min": 3, "trace_share_pct": 50},
              "tiebreak": "cited: dependency_signal, the strongest dependency rule matched"},
    "counts": {"alert_occurrences": 3, "alerts": 1, "dependencies": 1, "deploys": 0,
               "runtime": 0},
    "deploys": [],
    "evidence": [
        {"id": "inc_dd40b8528905eadf", "kind": "incident", "source": "tocsin",
         "summary": "checkout:payment.charge:PMT_502 spiked", "time_ms": 1793612403000},
        {"id": "sig_dep", "kind": "dependency", "source": "native",
         "summary": "payment gateway 502s", "time_ms": 1793612283000},
        {"id": "sig_alert", "kind": "alert", "source": "alertmanager",
         "summary": "CheckoutErrorRate high", "time_ms": 1793612433000}],
    "evidence_fingerprint": "",
    "generated_at_ms": 1793612703000,
    "incident": {"downstream": "payment", "env": "prod", "error_code": "PMT_502",
                 "family": "checkout:payment.charge:PMT_502", "id": "inc_dd40b8528905eadf",
                 "last_error_ms": 1793612403000, "onset_ms": 1793612403000,
                 "resolved_ms": None, "seq": 1, "service": "checkout", "status": "active",
                 "step": "payment.charge",
                 "window": {"baseline": 0.0, "count": 5, "errors": 5, "lift": None,
                            "peak": 5}},
    "next_checks": ["Check payment: checkout payment.charge fails with PMT_502 calling it "
                    "(5 errors since onset).",
                    "Dependency signal from native: payment gateway 502s"],
    "report_hash": "",
    "runtime": [],
    "schema": "triage.v1",
    "snapshots": {
        "blast": {"affected_requests": 5, "affected_services": ["checkout"],
                  "capture": "partial", "sample_traces": [],
                  "note": "from the detection path's counts; traces enrich it later"},
        "propagation": {"capture": "partial", "origin": {"service": "payment",
                                                         "step": None},
                        "path": ["checkout", "payment"], "sample_trace": None}},
    "suspect_change": None,
}
PINNED_HASH = "sha256:56bf62ea4ecfc144a316367da69e5be18f8a7428899da39cbc8149346028497b"


def report_selftest() -> Check:
    """Seal the pinned report twice (once from its canonical bytes), check the hash is
    the pinned one and verifies, and render it twice in every format the API serves."""
    from tocsin.processors.report import canonical_json, seal, verify
    from tocsin.streams.web.reports import RENDERINGS, render_report

    fix = ("this build hashes or renders reports differently from the one that pinned "
           "them: reinstall tocsin (pip install --force-reinstall tocsin); a deliberate "
           "change of the canonical form is a new report version (ADR 0010)")
    try:
        first = seal(dict(PINNED_REPORT))
        second = seal(json.loads(canonical_json(PINNED_REPORT)))
        digest = str(first["report_hash"])
        data = {"report_hash": digest, "pinned": PINNED_HASH}
        if first != second:
            return Check("report-hash", "fail", "sealing the same report twice gave two "
                         "answers", fix, data)
        if digest != PINNED_HASH:
            return Check("report-hash", "fail", f"pinned report hashes to {digest}, "
                         f"expected {PINNED_HASH}", fix, data)
        if not verify(first):
            return Check("report-hash", "fail", "a sealed report does not verify", fix, data)
        body = canonical_json(first).decode()
        if canonical_json(json.loads(body)).decode() != body:
            return Check("report-hash", "fail", "canonical bytes do not round-trip", fix,
                         data)
        for fmt in RENDERINGS:
            once, twice = render_report(body, fmt)[0], render_report(body, fmt)[0]
            if once != twice:
                return Check("report-hash", "fail", f"{fmt} rendering differs between two "
                             "runs", fix, data)
            if fmt in ("md", "pagerduty") and digest.encode() not in once:
                return Check("report-hash", "fail", f"{fmt} rendering does not carry the "
                             "hash", fix, data)
    except Exception as exc:  # noqa: BLE001 - a broken install is this check's finding
        return Check("report-hash", "fail", f"self-test raised {type(exc).__name__}: {exc}",
                     fix)
    return Check("report-hash", "ok", f"pinned report sealed and rendered twice "
                 f"({', '.join(RENDERINGS)}): {digest[:19]}…", None, data)


# ---------------------------------------------------------------------- broker facts


@dataclass
class BrokerFacts:
    error: str | None = None
    cluster_id: str | None = None
    brokers: int = 0
    controller: int | None = None
    api_versions: dict[int, tuple[int, int]] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)  # every topic: partitions
    topic_errors: dict[str, str] = field(default_factory=dict)
    ends: dict[str, dict[int, int]] = field(default_factory=dict)  # high watermarks
    starts: dict[str, dict[int, int]] = field(default_factory=dict)
    ends_error: str | None = None
    committed: dict[str, dict[int, int | None]] = field(default_factory=dict)  # by group
    committed_errors: dict[str, str] = field(default_factory=dict)
    dead_letters: DeadLetterFacts | None = None
    dead_letters_error: str | None = None


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if "Unable to bootstrap" in text:
        return "nothing accepts Kafka connections there"
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2:]
    return f"{name}: {text}" if text else name




async def broker_facts(bootstrap: str, topics: Mapping[str, str], app_id: str,
                       now_ms: int, timeout_s: float) -> BrokerFacts:
    """Everything the broker tells: cluster, API versions, topics, ends, the stages'
    committed offsets, the dead letters of the last hour. Each step under what is left
    of ``timeout_s``; a step that fails leaves its facts empty and says why."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.conn import create_conn
    from aiokafka.protocol.admin import ApiVersionRequest

    facts = BrokerFacts()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def left() -> float:
        return max(0.1, deadline - loop.time())

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(min(timeout_s, 10) * 1000))
    try:
        try:
            async with asyncio.timeout(left()):
                await admin.start()
                cluster = await admin.describe_cluster()
                described = await admin.describe_topics()  # every topic: creates none
        except Exception as exc:  # noqa: BLE001 - unreachable is this check's finding
            facts.error = _why(exc)
            return facts
        facts.cluster_id = cluster.get("cluster_id")
        facts.brokers = len(cluster.get("brokers") or ())
        facts.controller = cluster.get("controller_id")
        for t in described:
            facts.topics[t["topic"]] = len(t.get("partitions") or ())
            bad = [p["partition"] for p in t.get("partitions") or () if p.get("error_code")]
            if t.get("error_code") or bad:
                facts.topic_errors[t["topic"]] = (
                    f"error {t.get('error_code')}" if t.get("error_code")
                    else f"partitions {_ranges(bad)} in error")
        host, _, port = bootstrap.rpartition(":")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(left(), 5)):
                conn = await create_conn(host, int(port), request_timeout_ms=5000)
                try:
                    answer = await conn.send(ApiVersionRequest())
                    facts.api_versions = {int(k): (int(lo), int(hi))
                                          for k, lo, hi in answer.api_versions}
                finally:
                    conn.close()
        present = {t: facts.topics[t] for t in topics.values() if facts.topics.get(t)}
        try:
            async with asyncio.timeout(left()):
                facts.starts, facts.ends = await _high_watermarks(bootstrap, present)
        except Exception as exc:  # noqa: BLE001 - reported in the lag checks
            facts.ends_error = _why(exc)
        for stage, setting in STAGE_GROUPS:
            group, topic = f"{app_id}-{stage}", topics[setting]
            if topic not in present:
                continue
            tps = [TopicPartition(topic, p) for p in range(present[topic])]
            try:
                async with asyncio.timeout(left()):
                    offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            except Exception as exc:  # noqa: BLE001 - reported in that stage's check
                facts.committed_errors[group] = _why(exc)
                continue
            facts.committed[group] = {
                tp.partition: (o.offset if (o := offsets.get(tp)) is not None
                               and o.offset >= 0 else None) for tp in tps}
        dlq = topics["dlq"]
        if dlq in present:
            try:
                async with asyncio.timeout(left()):
                    facts.dead_letters = await _dead_letters(
                        bootstrap, dlq, facts.starts.get(dlq, {}), facts.ends.get(dlq, {}),
                        now_ms - HOUR_MS)
            except Exception as exc:  # noqa: BLE001 - reported in the dead-letter check
                facts.dead_letters_error = _why(exc)
        else:
            facts.dead_letters_error = f"no topic {dlq}"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return facts


async def _high_watermarks(bootstrap: str, topics: Mapping[str, int]
                           ) -> tuple[dict[str, dict[int, int]], dict[str, dict[int, int]]]:
    """(log starts, high watermarks) of every partition of ``topics`` (existing ones:
    name -> partitions). The ends come from one fetch at ListOffsets' answer, whose
    response carries the partition's high watermark: only the last batch is read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tocsin.streams.kafka.io import stop_quietly

    tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    if not tps:
        return {}, {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="latest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=64 * 1024)
    await consumer.start()
    try:
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        listed = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(int(listed[tp]) - 1, int(starts[tp])))
        while any(consumer.highwater(tp) is None for tp in tps):
            await consumer.getmany(timeout_ms=100, max_records=1)
        out_starts: dict[str, dict[int, int]] = {}
        out_ends: dict[str, dict[int, int]] = {}
        for tp in tps:
            out_starts.setdefault(tp.topic, {})[tp.partition] = int(starts[tp])
            out_ends.setdefault(tp.topic, {})[tp.partition] = int(consumer.highwater(tp) or 0)
        return out_starts, out_ends
    finally:
        await stop_quietly(consumer)


async def _dead_letters(bootstrap: str, topic: str, starts: Mapping[int, int],
                        ends: Mapping[int, int], cutoff_ms: int) -> DeadLetterFacts:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

    from tocsin.streams.kafka.io import stop_quietly

    facts = DeadLetterFacts()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=64 * 1024)
    await consumer.start()
    newest: ConsumerRecord[bytes, bytes] | None = None
    try:
        for partition, end in sorted(ends.items()):
            start = starts.get(partition, 0)
            if end <= start:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            seen: dict[int, ConsumerRecord[bytes, bytes]] = {}

            async def probe(offset: int, tp: TopicPartition = tp, end: int = end,
                            seen: dict[int, Any] = seen) -> tuple[int, int] | None:
                if offset >= end:
                    return None
                consumer.seek(tp, offset)
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
                    for rec in batch.get(tp, ()):
                        if rec.offset >= offset:
                            seen[rec.offset] = rec
                            return rec.offset, rec.timestamp
                    high = consumer.highwater(tp)
                    if high is not None and await consumer.position(tp) >= high:
                        return None

            first = await first_since(probe, start, end, cutoff_ms)
            if first < end:
                facts.per_partition[partition] = end - first
                if end - 1 not in seen:
                    await probe(end - 1)  # the newest letter, for its reason
                last = seen.get(max(seen)) if seen else None
                if last is not None and (newest is None or last.timestamp > newest.timestamp):
                    newest = last
        facts.in_hour = sum(facts.per_partition.values())
        if newest is not None:
            headers = dict(newest.headers or ())
            facts.newest_ms = newest.timestamp
            facts.newest_reason = headers.get("tocsin.dlq.reason", b"").decode(
                errors="replace") or None
            facts.newest_source = headers.get("tocsin.dlq.source_topic", b"").decode(
                errors="replace") or None
        return facts
    finally:
        await stop_quietly(consumer)


# ---------------------------------------------------------------------- the database


class DbError(RuntimeError):
    """A query could not run; the message says why."""


class WorkerDb:
    """Queries through a worker's ``/v1/query`` (it holds the file)."""

    def __init__(self, base: str, timeout_s: float) -> None:
        self.base = base
        self.timeout_s = timeout_s
        self.where = f"the database of {base}"

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            status, body = http_json(f"{self.base}/v1/query",
                                     {"sql": sql, "params": list(params)}, self.timeout_s)
        except CannotTell as exc:
            raise DbError(str(exc)) from exc
        if status != 200 or not isinstance(body, dict):
            raise DbError(refusal(status, body))
        return [dict(zip(body["columns"], r, strict=True)) for r in body["rows"]]


class FileDb:
    """Queries on the file, read-only, in a query process of our own (ADR 0006): only
    when no worker holds it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from tocsin.clients.query import _limits
        from tocsin.streams.query import run_file_query

        answer = run_file_query(self.path, sql, params, limits=_limits())
        if answer.status == 503:
            raise DbError(f"{self.path} is held by a running worker that serves no HTTP "
                          "port: pass --worker URL")
        if answer.status != 200:
            raise DbError(str(answer.error))
        body = json.loads(answer.body)
        return [dict(zip(body["columns"], r, strict=True)) for r in body["rows"]]


NOTIFICATIONS_SQL = """
SELECT channel, status, count(*) AS n, count(*) FILTER (WHERE created_ms >= $1) AS recent,
       max(created_ms) AS newest_ms, min(created_ms) AS oldest_ms,
       arg_max(last_error, created_ms) AS last_error,
       arg_max(last_status, created_ms) AS last_status
FROM notifications GROUP BY channel, status ORDER BY channel, status
"""


# ---------------------------------------------------------------------- the run


@dataclass
class Target:
    """What doctor looks at: from the options, the environment and a running worker's
    announcement beside the database."""

    settings: Any
    db: str
    worker: str | None
    worker_missing: str | None  # why there is no worker URL
    broker: str | None
    max_lag: int
    timeout_s: float


def resolve(settings: Any, worker: str | None, broker: str | None, db: str | None,
            max_lag: int, timeout_s: float) -> Target:
    from tocsin.streams.worker.announce import alive, worker_file

    db_path = db or settings.db
    announced: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(worker_file(db_path).read_text())
        if isinstance(info, dict) and alive(int(info.get("pid", 0))):
            announced = info
    missing = None
    if worker is None:
        if announced.get("http_port"):
            worker = f"http://127.0.0.1:{int(announced['http_port'])}"
        else:
            missing = (f"no running worker holds {db_path}" if not announced else
                       f"the worker that holds {db_path} serves no HTTP port")
    return Target(settings, db_path, worker, missing,
                  broker or settings.broker or announced.get("broker"), max_lag, timeout_s)


def diagnose(target: Target, now_ms: int | None = None) -> list[Check]:
    """Every check, in order."""
    from tocsin.sinks.duckdb_schema import SCHEMA_VERSION
    from tocsin.testing import PROJECTED_TOPICS

    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    s = target.settings
    topics: dict[str, str] = dict(s.topics.model_dump())
    checks: list[Check] = []

    facts: BrokerFacts | None = None
    if target.broker is not None:
        from tocsin.streams.kafka.io import quiet_kafka_logs
        with quiet_kafka_logs():
            facts = asyncio.run(broker_facts(target.broker, topics, s.app_id, now_ms,
                                             target.timeout_s))
    checks.append(broker_check(target.broker, facts))
    checks.append(topics_check(topics, facts, s.partitions))

    # The worker
    ready: tuple[int, Any] | None = None
    health: Any = None
    worker_error = None
    if target.worker is not None:
        try:
            ready = http_json(f"{target.worker}/readyz", timeout_s=target.timeout_s)
            status, health = http_json(f"{target.worker}/healthz", timeout_s=target.timeout_s)
            if status != 200:
                worker_error = f"{target.worker}/healthz: {refusal(status, health)}"
        except CannotTell as exc:
            worker_error = str(exc)
    checks.append(worker_check(target.worker, target.worker_missing, ready, health,
                               worker_error))
    role = health.get("role") if isinstance(health, dict) else None

    # The database: through the worker that holds it, else the file read-only
    db: WorkerDb | FileDb | None = None
    db_error: str | None = None
    no_db = False
    if target.worker is not None and worker_error is None:
        if role == "detect":
            db_error = (f"the worker at {target.worker} runs role detect and keeps no "
                        "DuckDB projection")
        else:
            db = WorkerDb(target.worker, max(target.timeout_s, 10.0))
    elif target.worker_missing is not None and "serves no HTTP" in target.worker_missing:
        db_error = f"{target.db} is held by a worker that serves no HTTP port"
    elif Path(target.db).exists():
        db = FileDb(target.db)
    else:
        db_error, no_db = f"no database at {target.db}", True

    def rows(sql: str, params: Sequence[Any] = ()) -> tuple[list[dict[str, Any]] | None,
                                                            str | None]:
        if db is None:
            return None, db_error
        try:
            return db.rows(sql, params), None
        except DbError as exc:
            return None, str(exc)

    # Lag: the stages' committed offsets, then the projection's and notifier's positions
    how = "committed after each checkpoint; the checkpoint holds the truth"
    broker_ok = facts is not None and facts.error is None
    for stage, setting in STAGE_GROUPS:
        group, topic = f"{s.app_id}-{stage}", topics[setting]
        name = f"lag:{stage}"
        if facts is None or facts.error is not None:
            checks.append(Check(name, "warn", f"group {group}: not checked (no broker)",
                                "make the broker reachable, then run doctor again"))
        elif topic not in facts.ends:
            why = facts.ends_error or f"no topic {topic}"
            checks.append(Check(name, "warn", f"group {group}: not measurable ({why})",
                                "see the topics check"))
        elif group in facts.committed_errors:
            checks.append(Check(name, "warn", f"group {group}: committed offsets unknown "
                                f"({facts.committed_errors[group]})",
                                "check the broker's group coordinator"))
        else:
            committed = {(topic, p): o for p, o in facts.committed.get(group, {}).items()}
            lag = lag_of({topic: facts.ends[topic]}, committed, facts.starts)
            checks.append(lag_check(name, topic, lag, target.max_lag,
                                    f"group {group}, {how}"))
    positions, pos_error = rows('SELECT topic, "partition", next_offset FROM positions')
    for name, prefix, wanted in (
            ("lag:projection", "", [topics[f] for f in PROJECTED_TOPICS]),
            ("lag:notifier", NOTIFY_PREFIX, [topics["incidents"]])):
        if positions is None:
            if name == "lag:projection":
                checks.append(Check(name, "warn", f"not measurable: {pos_error}",
                                    "see the worker and duckdb checks"))
            continue
        held = {(str(r["topic"]), int(r["partition"])): int(r["next_offset"])
                for r in positions}
        if prefix and not any(t.startswith(prefix) for t, _ in held):
            continue  # no notifier keeps this database
        if not broker_ok or facts is None or any(t not in facts.ends for t in wanted):
            checks.append(Check(name, "warn", "not measurable: the broker's ends are "
                                "unknown", "see the broker and topics checks"))
            continue
        mine = {(t[len(prefix):], p): o for (t, p), o in held.items() if t.startswith(prefix)}
        lag = lag_of({t: facts.ends[t] for t in wanted}, mine, facts.starts)
        what = ", ".join(wanted)
        checks.append(lag_check(name, what, lag, target.max_lag,
                                "positions in DuckDB, written with the rows"))

    # Schema version, notifications, dead letters
    where = db.where if db is not None else target.db
    meta, meta_error = rows("SELECT value FROM tocsin_meta WHERE key = $1",
                            ["schema_version"])
    checks.append(schema_check(str(meta[0]["value"]) if meta else None, SCHEMA_VERSION,
                               where, meta_error, no_db))
    notes, notes_error = rows(NOTIFICATIONS_SQL, [now_ms - NOTIFY_WINDOW_MS])
    checks.append(notifications_check(notes, now_ms, notes_error))
    stored, _ = rows("SELECT count(*) AS n FROM dead_letters")
    dead = facts.dead_letters if facts is not None else None
    dead_error = ("the broker did not answer" if facts.error else facts.dead_letters_error) \
        if facts is not None else "no broker address"
    checks.append(dead_letter_check(topics["dlq"], dead, dead_error,
                                    int(stored[0]["n"]) if stored else None))
    checks.append(report_selftest())
    return checks


# ---------------------------------------------------------------------- the command


def check_broker(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"must be HOST:PORT, got {value!r}")
    return value


@click.command(name="doctor", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--worker", metavar="URL", callback=check_worker_url,
              help="The worker's HTTP base URL (default: the running worker that holds "
                   "--db).")
@click.option("--broker", metavar="HOST:PORT", callback=check_broker,
              help="Kafka bootstrap (default: TOCSIN_BROKER, else the running worker's).")
@click.option("--db", type=click.Path(dir_okay=False), default=None,
              help="DuckDB file (default: the worker's setting).")
@click.option("--json", "as_json_", is_flag=True, help="Print one JSON object.")
@click.option("--max-lag", type=click.IntRange(0), default=DEFAULT_MAX_LAG,
              show_default=True, help="Records a stage may be behind before a warning.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.5, 300), default=10.0,
              show_default=True, help="Seconds for the broker's answers, and each request.")
def doctor_command(worker: str | None, broker: str | None, db: str | None, as_json_: bool,
                   max_lag: int, timeout_s: float) -> None:
    """Check the broker, topics, lag, worker, database, notifications, dead letters and
    the report hash; one line per check, exit 0 only when none fails.

    Topic names and the app id come from the TOCSIN_* environment, as the worker's do.
    """
    target = resolve(settings_or_usage(), worker, broker, db, max_lag, timeout_s)
    checks = diagnose(target)
    if as_json_:
        click.echo(json.dumps(as_json(checks), sort_keys=True, default=str))
    else:
        click.echo(format_report(checks))
        counts = as_json(checks)["counts"]
        err.print(f"doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    sys.exit(exit_code(checks))


if __name__ == "__main__":  # pragma: no cover - `python -m tocsin.clients.doctor ...`
    doctor_command()
