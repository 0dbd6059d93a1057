"""The projection's DuckDB schema: tables, the columns each write fills, the columns added
since a table first shipped, views, and the statement that rebuilds an incident's row from
its lifecycle events (ADR 0004, ADR 0016, ADR 0017, ADR 0018)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# 2: signal_deliveries; signals.latest_occurrences (the projection folds signals itself).
# 4: incident_timeline and incident_timeline_summary (ADR 0019).
SCHEMA_VERSION = 5

DDL = """
CREATE TABLE IF NOT EXISTS tocsin_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS positions (
    topic VARCHAR, "partition" INTEGER, next_offset BIGINT,
    PRIMARY KEY (topic, "partition"));
CREATE TABLE IF NOT EXISTS log_epochs (
    topic VARCHAR, "partition" INTEGER, epoch INTEGER, stale_position BIGINT,
    high_watermark BIGINT, PRIMARY KEY (topic, "partition", epoch));
CREATE TABLE IF NOT EXISTS incident_events (
    incident_id VARCHAR, seq INTEGER, kind VARCHAR, status VARCHAR,
    env VARCHAR, service VARCHAR, step VARCHAR, error_code VARCHAR, family VARCHAR,
    onset_ms BIGINT, at_ms BIGINT, window_count INTEGER, baseline DOUBLE, lift DOUBLE,
    peak_count INTEGER, error_count INTEGER, last_error_ms BIGINT, rule VARCHAR,
    downstream VARCHAR, sample_trace_ids VARCHAR[], phase VARCHAR, action_id VARCHAR,
    actor VARCHAR, note VARCHAR, title VARCHAR, hypothesis_status VARCHAR,
    PRIMARY KEY (incident_id, seq));
CREATE TABLE IF NOT EXISTS incidents (
    incident_id VARCHAR PRIMARY KEY, env VARCHAR, service VARCHAR, step VARCHAR,
    error_code VARCHAR, family VARCHAR, status VARCHAR, seq INTEGER,
    onset TIMESTAMPTZ, onset_ms BIGINT, updated_ms BIGINT, resolved_ms BIGINT,
    opened_window_count INTEGER, opened_baseline DOUBLE, opened_lift DOUBLE,
    window_count INTEGER, peak_count INTEGER, error_count INTEGER, last_error_ms BIGINT,
    downstream VARCHAR, phase VARCHAR, acknowledged_by VARCHAR, acknowledged_ms BIGINT,
    mitigated_by VARCHAR, mitigated_ms BIGINT, resolved_by VARCHAR, mtta_ms BIGINT,
    mttr_ms BIGINT);
CREATE TABLE IF NOT EXISTS incident_actions (
    incident_id VARCHAR, seq INTEGER, action_id VARCHAR, kind VARCHAR, actor VARCHAR,
    at_ms BIGINT, note VARCHAR, title VARCHAR, hypothesis_status VARCHAR, phase VARCHAR,
    status VARCHAR, env VARCHAR, service VARCHAR, family VARCHAR,
    PRIMARY KEY (incident_id, seq));
CREATE TABLE IF NOT EXISTS family_windows (
    env VARCHAR, family VARCHAR, service VARCHAR, step VARCHAR, error_code VARCHAR,
    bucket_start_ms BIGINT, bucket_ms INTEGER, errors INTEGER,
    PRIMARY KEY (env, family, bucket_start_ms));
CREATE TABLE IF NOT EXISTS step_windows (
    env VARCHAR, service VARCHAR, step VARCHAR, bucket_start_ms BIGINT, bucket_ms INTEGER,
    requests INTEGER, errors INTEGER,
    PRIMARY KEY (env, service, step, bucket_start_ms));
CREATE TABLE IF NOT EXISTS signals (
    signal_id VARCHAR PRIMARY KEY, dedup_key VARCHAR, type VARCHAR, state VARCHAR,
    source VARCHAR, service VARCHAR, env VARCHAR, severity VARCHAR, title VARCHAR,
    reason VARCHAR, description VARCHAR, event_time_ms BIGINT, starts_at_ms BIGINT,
    ends_at_ms BIGINT, fingerprint VARCHAR, provider_url VARCHAR, labels VARCHAR,
    annotations VARCHAR, incident_id VARCHAR, trace_id VARCHAR, error_code VARCHAR,
    downstream VARCHAR, runtime_subtype VARCHAR, pod VARCHAR, container VARCHAR,
    node VARCHAR, exit_code INTEGER, restart_count INTEGER, version VARCHAR,
    "commit" VARCHAR, pr_url VARCHAR, author VARCHAR, occurrences INTEGER,
    first_seen_ms BIGINT, last_seen_ms BIGINT);
CREATE TABLE IF NOT EXISTS triage_reports (
    incident_id VARCHAR, report_hash VARCHAR, evidence_fingerprint VARCHAR,
    generated_at_ms BIGINT, status VARCHAR, incident_seq INTEGER, cause_kind VARCHAR,
    cause_confidence VARCHAR, cause_rule VARCHAR, body VARCHAR, provenance VARCHAR,
    written_seq BIGINT,
    PRIMARY KEY (incident_id, report_hash));
CREATE TABLE IF NOT EXISTS evidence (
    incident_id VARCHAR, report_hash VARCHAR, kind VARCHAR, id VARCHAR, source VARCHAR,
    summary VARCHAR, time_ms BIGINT,
    PRIMARY KEY (incident_id, report_hash, kind, id));
CREATE SEQUENCE IF NOT EXISTS report_order;
CREATE TABLE IF NOT EXISTS signal_deliveries (
    delivery VARCHAR, signal_id VARCHAR, PRIMARY KEY (delivery, signal_id));
CREATE TABLE IF NOT EXISTS incident_updates (
    incident_id VARCHAR, seq INTEGER, news_signature VARCHAR, at_ms BIGINT,
    added VARCHAR[], removed VARCHAR[], news_cause VARCHAR, report_hash VARCHAR,
    status VARCHAR, phase VARCHAR, env VARCHAR, service VARCHAR, family VARCHAR,
    PRIMARY KEY (incident_id, seq, news_signature));
CREATE TABLE IF NOT EXISTS notifications (
    notification_id VARCHAR PRIMARY KEY, channel VARCHAR, incident_id VARCHAR,
    seq INTEGER, kind VARCHAR, status VARCHAR, attempts INTEGER, last_status INTEGER,
    last_error VARCHAR, created_ms BIGINT, next_try_ms BIGINT, delivered_ms BIGINT,
    report_hash VARCHAR, event VARCHAR);
CREATE TABLE IF NOT EXISTS incident_timeline (
    incident_id VARCHAR, t_ms BIGINT, errors BIGINT, requests BIGINT, error_rate DOUBLE,
    p50_ms DOUBLE, p95_ms DOUBLE, seq INTEGER,
    PRIMARY KEY (incident_id, t_ms));
CREATE TABLE IF NOT EXISTS incident_timeline_summary (
    incident_id VARCHAR PRIMARY KEY, seq INTEGER, bucket_ms BIGINT, from_ms BIGINT,
    to_ms BIGINT, onset_ms BIGINT, resolved_ms BIGINT, complete BOOLEAN,
    truncated BOOLEAN, omitted BIGINT, points INTEGER,
    peak_errors DOUBLE, peak_errors_ms BIGINT, peak_error_rate DOUBLE,
    peak_error_rate_ms BIGINT, error_rate_start DOUBLE, error_rate_end DOUBLE,
    peak_p95_ms DOUBLE, peak_p95_at_ms BIGINT, p95_start_ms DOUBLE, p95_end_ms DOUBLE,
    summary VARCHAR);
CREATE TABLE IF NOT EXISTS dead_letters (
    source_topic VARCHAR, source_partition INTEGER, source_offset BIGINT,
    reason VARCHAR, size_bytes INTEGER, dlq_partition INTEGER, dlq_offset BIGINT,
    PRIMARY KEY (source_topic, source_partition, source_offset));
"""

# Columns added after a table first shipped: files written by an older Tocsin gain them.
MIGRATIONS = (
    ("incident_events", "downstream", "VARCHAR"),
    ("incidents", "downstream", "VARCHAR"),
    ("incident_events", "sample_trace_ids", "VARCHAR[]"),
    ("dead_letters", "kept_bytes", "BIGINT"),
    ("dead_letters", "sha256", "VARCHAR"),
    ("dead_letters", "truncated", "BOOLEAN"),
    ("dead_letters", "field", "VARCHAR"),
    # The latest occurrence's own count (``occurrences`` is the folded total): what the
    # fold compares when it picks the latest occurrence, so a row folds on exactly.
    ("signals", "latest_occurrences", "INTEGER"),
    # Operator actions (ADR 0016)
    ("incident_events", "phase", "VARCHAR"),
    ("incident_events", "action_id", "VARCHAR"),
    ("incident_events", "actor", "VARCHAR"),
    ("incident_events", "note", "VARCHAR"),
    ("incident_events", "title", "VARCHAR"),
    ("incident_events", "hypothesis_status", "VARCHAR"),
    ("incidents", "phase", "VARCHAR"),
    ("incidents", "acknowledged_by", "VARCHAR"),
    ("incidents", "acknowledged_ms", "BIGINT"),
    ("incidents", "mitigated_by", "VARCHAR"),
    ("incidents", "mitigated_ms", "BIGINT"),
    ("incidents", "resolved_by", "VARCHAR"),
    ("incidents", "mtta_ms", "BIGINT"),
    ("incidents", "mttr_ms", "BIGINT"),
    # The rules file a change was decided under (ADR 0022); null: built-in settings
    ("incident_events", "rules_hash", "VARCHAR"),
)

# How each service's on-call responds (ADR 0016): over incidents, so always current.
VIEWS = """
CREATE OR REPLACE VIEW service_response AS
SELECT env, service, count(*) AS incidents,
       count(*) FILTER (WHERE status = 'resolved') AS resolved,
       count(acknowledged_ms) AS acknowledged,
       count(*) FILTER (WHERE resolved_by IS NOT NULL) AS resolved_by_people,
       median(mtta_ms) AS median_mtta_ms, avg(mtta_ms) AS mean_mtta_ms,
       max(mtta_ms) AS max_mtta_ms,
       median(mttr_ms) AS median_mttr_ms, avg(mttr_ms) AS mean_mttr_ms,
       max(mttr_ms) AS max_mttr_ms
FROM incidents GROUP BY env, service;
"""

TIMELINE_COLUMNS = (
    ("incident_id", "VARCHAR"), ("t_ms", "BIGINT"), ("errors", "BIGINT"),
    ("requests", "BIGINT"), ("error_rate", "DOUBLE"), ("p50_ms", "DOUBLE"),
    ("p95_ms", "DOUBLE"), ("seq", "INTEGER"),
)
TIMELINE_SUMMARY_COLUMNS = (
    ("incident_id", "VARCHAR"), ("seq", "INTEGER"), ("bucket_ms", "BIGINT"),
    ("from_ms", "BIGINT"), ("to_ms", "BIGINT"), ("onset_ms", "BIGINT"),
    ("resolved_ms", "BIGINT"), ("complete", "BOOLEAN"), ("truncated", "BOOLEAN"),
    ("omitted", "BIGINT"), ("points", "INTEGER"), ("peak_errors", "DOUBLE"),
    ("peak_errors_ms", "BIGINT"), ("peak_error_rate", "DOUBLE"),
    ("peak_error_rate_ms", "BIGINT"), ("error_rate_start", "DOUBLE"),
    ("error_rate_end", "DOUBLE"), ("peak_p95_ms", "DOUBLE"), ("peak_p95_at_ms", "BIGINT"),
    ("p95_start_ms", "DOUBLE"), ("p95_end_ms", "DOUBLE"), ("summary", "VARCHAR"),
)


def timeline_rows(event: Mapping[str, Any]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary row and the point rows of the timeline an incident event carries."""
    timeline = event["timeline"]
    summary = timeline["summary"]
    errors, rate, p95 = summary["errors"], summary["error_rate"], summary["p95_ms"]
    ids = {"incident_id": event["incident_id"], "seq": event["seq"]}
    head = {
        **ids, **{k: timeline[k] for k in ("bucket_ms", "from_ms", "to_ms", "onset_ms",
                                           "resolved_ms", "complete", "truncated",
                                           "omitted")},
        "points": len(timeline["points"]),
        "peak_errors": errors["max"], "peak_errors_ms": errors["max_at_ms"],
        "peak_error_rate": rate["max"], "peak_error_rate_ms": rate["max_at_ms"],
        "error_rate_start": rate["start"], "error_rate_end": rate["end"],
        "peak_p95_ms": p95["max"], "peak_p95_at_ms": p95["max_at_ms"],
        "p95_start_ms": p95["start"], "p95_end_ms": p95["end"],
        "summary": json.dumps(summary, sort_keys=True),
    }
    return head, [{**ids, **point} for point in timeline["points"]]


EVENT_COLUMNS = (
    ("incident_id", "VARCHAR"), ("seq", "INTEGER"), ("kind", "VARCHAR"),
    ("status", "VARCHAR"), ("env", "VARCHAR"), ("service", "VARCHAR"), ("step", "VARCHAR"),
    ("error_code", "VARCHAR"), ("family", "VARCHAR"), ("onset_ms", "BIGINT"),
    ("at_ms", "BIGINT"), ("window_count", "INTEGER"), ("baseline", "DOUBLE"),
    ("lift", "DOUBLE"), ("peak_count", "INTEGER"), ("error_count", "INTEGER"),
    ("last_error_ms", "BIGINT"), ("rule", "VARCHAR"), ("downstream", "VARCHAR"),
    ("sample_trace_ids", "VARCHAR[]"), ("phase", "VARCHAR"), ("action_id", "VARCHAR"),
    ("actor", "VARCHAR"), ("note", "VARCHAR"), ("title", "VARCHAR"),
    ("hypothesis_status", "VARCHAR"), ("rules_hash", "VARCHAR"),
)
UPDATE_COLUMNS = (
    ("incident_id", "VARCHAR"), ("seq", "INTEGER"), ("news_signature", "VARCHAR"),
    ("at_ms", "BIGINT"), ("added", "VARCHAR[]"), ("removed", "VARCHAR[]"),
    ("news_cause", "VARCHAR"), ("report_hash", "VARCHAR"), ("status", "VARCHAR"),
    ("phase", "VARCHAR"), ("env", "VARCHAR"), ("service", "VARCHAR"), ("family", "VARCHAR"),
)
NOTIFICATION_COLUMNS = (
    ("notification_id", "VARCHAR"), ("channel", "VARCHAR"), ("incident_id", "VARCHAR"),
    ("seq", "INTEGER"), ("kind", "VARCHAR"), ("status", "VARCHAR"), ("attempts", "INTEGER"),
    ("last_status", "INTEGER"), ("last_error", "VARCHAR"), ("created_ms", "BIGINT"),
    ("next_try_ms", "BIGINT"), ("delivered_ms", "BIGINT"), ("report_hash", "VARCHAR"),
    ("event", "VARCHAR"),  # the lifecycle event told, as JSON
)
ACTION_COLUMNS = (
    ("incident_id", "VARCHAR"), ("seq", "INTEGER"), ("action_id", "VARCHAR"),
    ("kind", "VARCHAR"), ("actor", "VARCHAR"), ("at_ms", "BIGINT"), ("note", "VARCHAR"),
    ("title", "VARCHAR"), ("hypothesis_status", "VARCHAR"), ("phase", "VARCHAR"),
    ("status", "VARCHAR"), ("env", "VARCHAR"), ("service", "VARCHAR"), ("family", "VARCHAR"),
)
FAMILY_WINDOW_COLUMNS = (
    ("env", "VARCHAR"), ("family", "VARCHAR"), ("service", "VARCHAR"), ("step", "VARCHAR"),
    ("error_code", "VARCHAR"), ("bucket_start_ms", "BIGINT"), ("bucket_ms", "INTEGER"),
    ("errors", "INTEGER"),
)
STEP_WINDOW_COLUMNS = (
    ("env", "VARCHAR"), ("service", "VARCHAR"), ("step", "VARCHAR"),
    ("bucket_start_ms", "BIGINT"), ("bucket_ms", "INTEGER"), ("requests", "INTEGER"),
    ("errors", "INTEGER"),
)
SIGNAL_COLUMNS = tuple((name, kind) for name, kind in (
    ("signal_id", "VARCHAR"), ("dedup_key", "VARCHAR"), ("type", "VARCHAR"),
    ("state", "VARCHAR"), ("source", "VARCHAR"), ("service", "VARCHAR"), ("env", "VARCHAR"),
    ("severity", "VARCHAR"), ("title", "VARCHAR"), ("reason", "VARCHAR"),
    ("description", "VARCHAR"), ("event_time_ms", "BIGINT"), ("starts_at_ms", "BIGINT"),
    ("ends_at_ms", "BIGINT"), ("fingerprint", "VARCHAR"), ("provider_url", "VARCHAR"),
    ("labels", "VARCHAR"), ("annotations", "VARCHAR"), ("incident_id", "VARCHAR"),
    ("trace_id", "VARCHAR"), ("error_code", "VARCHAR"), ("downstream", "VARCHAR"),
    ("runtime_subtype", "VARCHAR"), ("pod", "VARCHAR"), ("container", "VARCHAR"),
    ("node", "VARCHAR"), ("exit_code", "INTEGER"), ("restart_count", "INTEGER"),
    ("version", "VARCHAR"), ("commit", "VARCHAR"), ("pr_url", "VARCHAR"),
    ("author", "VARCHAR"), ("occurrences", "INTEGER"), ("first_seen_ms", "BIGINT"),
    ("last_seen_ms", "BIGINT"), ("latest_occurrences", "INTEGER"),
))
REPORT_COLUMNS = (
    ("incident_id", "VARCHAR"), ("report_hash", "VARCHAR"),
    ("evidence_fingerprint", "VARCHAR"), ("generated_at_ms", "BIGINT"), ("status", "VARCHAR"),
    ("incident_seq", "INTEGER"), ("cause_kind", "VARCHAR"), ("cause_confidence", "VARCHAR"),
    ("cause_rule", "VARCHAR"), ("body", "VARCHAR"), ("provenance", "VARCHAR"),
)
SEQUENCED_REPORT_COLUMNS = (*REPORT_COLUMNS, ("written_seq", "BIGINT"))
EVIDENCE_COLUMNS = (
    ("incident_id", "VARCHAR"), ("report_hash", "VARCHAR"), ("kind", "VARCHAR"),
    ("id", "VARCHAR"), ("source", "VARCHAR"), ("summary", "VARCHAR"), ("time_ms", "BIGINT"),
)
DEAD_LETTER_COLUMNS = (
    ("source_topic", "VARCHAR"), ("source_partition", "INTEGER"), ("source_offset", "BIGINT"),
    ("reason", "VARCHAR"), ("size_bytes", "BIGINT"), ("dlq_partition", "INTEGER"),
    ("dlq_offset", "BIGINT"), ("kept_bytes", "BIGINT"), ("sha256", "VARCHAR"),
    ("truncated", "BOOLEAN"), ("field", "VARCHAR"),
)

REBUILD_INCIDENTS = """
INSERT OR REPLACE INTO incidents
SELECT e.incident_id, e.env, e.service, e.step, e.error_code, e.family, last.status, last.seq,
       make_timestamptz(e.onset_ms * 1000), e.onset_ms, last.at_ms,
       CASE WHEN last.status = 'resolved' THEN last.at_ms END,
       e.window_count, e.baseline, e.lift,
       last.window_count, last.peak_count, last.error_count, last.last_error_ms,
       e.downstream, coalesce(last.phase, 'triggered'),
       last.acknowledged_by, last.acknowledged_ms, last.mitigated_by, last.mitigated_ms,
       CASE WHEN last.status = 'resolved' AND last.closing_kind = 'resolved'
            THEN last.closing_actor END,
       -- (greatest skips nulls: no response is no MTTA, not 0)
       CASE WHEN last.acknowledged_ms IS NOT NULL
            THEN greatest(last.acknowledged_ms - e.onset_ms, 0) END,
       CASE WHEN last.status = 'resolved' AND last.closed_ms IS NOT NULL
            THEN greatest(last.closed_ms - e.onset_ms, 0) END
FROM incident_events e
JOIN (SELECT incident_id, arg_max(status, seq) AS status, max(seq) AS seq,
             arg_max(at_ms, seq) AS at_ms, arg_max(window_count, seq) AS window_count,
             arg_max(peak_count, seq) AS peak_count, arg_max(error_count, seq) AS error_count,
             arg_max(last_error_ms, seq) AS last_error_ms, arg_max(phase, seq) AS phase,
             -- the first response: acknowledge, investigate, mitigate or resolve by a person
             arg_min(actor, seq) FILTER (WHERE action_id IS NOT NULL AND kind IN
                 ('acknowledged', 'investigating', 'mitigated', 'resolved'))
                 AS acknowledged_by,
             arg_min(at_ms, seq) FILTER (WHERE action_id IS NOT NULL AND kind IN
                 ('acknowledged', 'investigating', 'mitigated', 'resolved'))
                 AS acknowledged_ms,
             arg_max(actor, seq) FILTER (WHERE kind = 'mitigated') AS mitigated_by,
             arg_max(at_ms, seq) FILTER (WHERE kind = 'mitigated') AS mitigated_ms,
             -- the last resolve or reopen: who resolved it, when it resolved
             arg_max(kind, seq) FILTER (WHERE kind IN ('resolved', 'reopened'))
                 AS closing_kind,
             -- (arg_max skips a null argument: the machine's resolve has no actor)
             nullif(arg_max(coalesce(actor, ''), seq)
                    FILTER (WHERE kind IN ('resolved', 'reopened')), '') AS closing_actor,
             arg_max(at_ms, seq) FILTER (WHERE kind = 'resolved') AS closed_ms
      FROM incident_events WHERE incident_id IN (SELECT unnest($1::VARCHAR[]))
      GROUP BY incident_id) last USING (incident_id)
WHERE e.seq = 1
"""


def insert_sql(table: str, columns: Sequence[tuple[str, str]], verb: str) -> str:
    selects = ", ".join(
        f'unnest(${n}::{kind}[]) AS "{name}"' for n, (name, kind) in enumerate(columns, 1)
    )
    names = ", ".join(f'"{name}"' for name, _ in columns)
    return f"INSERT {verb} INTO {table} ({names}) SELECT {selects}"


def column_arrays(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
             ) -> list[list[Any]]:
    return [[row.get(name) for row in rows] for name, _ in columns]
