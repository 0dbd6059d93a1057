"""DuckDB projection of the output topics: idempotent, batched, positions in the same
transaction (ADR 0004).

Every write is an upsert keyed by the record's identity — ``(incident_id, seq)`` for
lifecycle events, ``(env, family, bucket)`` for window counts, ``(topic, partition,
offset)`` for dead letters, ``(incident_id, report_hash)`` for report versions — and the
consumed positions are written in the same transaction, so a replay or a restart never
duplicates or loses a row. Signals are folded inside that transaction: the held rows of
the batch's signal ids are read back, the batch is folded onto them and the result
upserted, and ``signal_deliveries`` remembers every (delivery, signal id) applied, so a
retried delivery counts once however far apart the two arrive (:class:`SignalFold`).
Rows go in as column arrays (``INSERT ... SELECT unnest(...)``): ``executemany`` is two
orders of magnitude slower.

This connection runs only Tocsin's own statements. Analysts' SQL never reaches it: the
query surface reads copies of the file published by :meth:`DuckDBSink.copy_checkpoint`
(ADR 0006, ``tocsin.streams.query``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import duckdb

# 2: signal_deliveries; signals.latest_occurrences (the projection folds signals itself).
SCHEMA_VERSION = 3
# DuckDB's own automatic checkpoint (its default threshold) is replaced by ours, which
# waits while a copy of the file is being taken (see copy_checkpoint).
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024

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

EVENT_COLUMNS = (
    ("incident_id", "VARCHAR"), ("seq", "INTEGER"), ("kind", "VARCHAR"),
    ("status", "VARCHAR"), ("env", "VARCHAR"), ("service", "VARCHAR"), ("step", "VARCHAR"),
    ("error_code", "VARCHAR"), ("family", "VARCHAR"), ("onset_ms", "BIGINT"),
    ("at_ms", "BIGINT"), ("window_count", "INTEGER"), ("baseline", "DOUBLE"),
    ("lift", "DOUBLE"), ("peak_count", "INTEGER"), ("error_count", "INTEGER"),
    ("last_error_ms", "BIGINT"), ("rule", "VARCHAR"), ("downstream", "VARCHAR"),
    ("sample_trace_ids", "VARCHAR[]"), ("phase", "VARCHAR"), ("action_id", "VARCHAR"),
    ("actor", "VARCHAR"), ("note", "VARCHAR"), ("title", "VARCHAR"),
    ("hypothesis_status", "VARCHAR"),
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


class SignalFold(Protocol):
    """Signal occurrences to fold onto the rows already held, inside the write transaction.

    The sink reads the ``signals`` rows of :meth:`signal_ids` and which of
    :meth:`deliveries` were applied before, calls :meth:`fold` with them, upserts the rows
    it returns and records the deliveries it applied — all in the batch's transaction."""

    def signal_ids(self) -> Sequence[str]: ...

    def deliveries(self) -> Sequence[tuple[str, str]]: ...

    def fold(self, held: Mapping[str, Mapping[str, Any]], seen: set[tuple[str, str]]
             ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """(signal rows to upsert, (delivery, signal id) pairs now applied)."""
        ...


def _insert_sql(table: str, columns: Sequence[tuple[str, str]], verb: str) -> str:
    selects = ", ".join(
        f'unnest(${n}::{kind}[]) AS "{name}"' for n, (name, kind) in enumerate(columns, 1)
    )
    names = ", ".join(f'"{name}"' for name, _ in columns)
    return f"INSERT {verb} INTO {table} ({names}) SELECT {selects}"


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]
             ) -> list[list[Any]]:
    return [[row.get(name) for row in rows] for name, _ in columns]


class DuckDBSink:
    """The one writer of a DuckDB file. Readers read copies (:meth:`copy_checkpoint`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path)
        self._lock = threading.Lock()
        self.con.execute(DDL)
        for table, column, kind in MIGRATIONS:
            self.con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        self.con.execute(VIEWS)
        # Defence in depth: no file reads or writes beyond the database itself, and
        # nobody may turn that back on. Checkpoints are ours (see _after_commit).
        self.con.execute("SET checkpoint_threshold = '1TB'")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")
        self.con.execute(
            "INSERT OR REPLACE INTO tocsin_meta VALUES ('schema_version', ?)",
            [str(SCHEMA_VERSION)],
        )
        self._generation = 0  # committed write batches: a copy of generation g is current
        self._copies = 0  # copies of the file being taken: no checkpoint meanwhile
        self._copies_done = threading.Condition(self._lock)
        self.checkpoint_s = 0.0  # the writer held for the last copy's checkpoint

    @property
    def generation(self) -> int:
        """How many batches were committed; a snapshot of this generation is current."""
        return self._generation

    def positions(self) -> dict[tuple[str, int], int]:
        with self._lock:
            rows = self.con.execute(
                'SELECT topic, "partition", next_offset FROM positions').fetchall()
        return {(t, p): o for t, p, o in rows}

    def signal_rows(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The ``signals`` rows of these ids, by id (those held)."""
        with self._lock:
            return _held_signals(self.con, sorted(set(ids)))

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """The ``incidents`` row of one incident, as of the last commit (a key lookup on
        the writer's connection, under its lock: no snapshot lag)."""
        with self._lock:
            cur = self.con.execute("SELECT * FROM incidents WHERE incident_id = ?",
                                   [incident_id])
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
        return dict(zip(names, row, strict=True)) if row is not None else None

    def actions(self, incident_id: str) -> list[dict[str, Any]]:
        """The ``incident_actions`` rows of one incident, in sequence order."""
        with self._lock:
            cur = self.con.execute("SELECT * FROM incident_actions WHERE incident_id = ? "
                                   "ORDER BY seq", [incident_id])
            rows = cur.fetchall()
            names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def action(self, action_id: str) -> dict[str, Any] | None:
        """The ``incident_actions`` row of one applied action, if it was applied."""
        with self._lock:
            cur = self.con.execute("SELECT * FROM incident_actions WHERE action_id = ?",
                                   [action_id])
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
        return dict(zip(names, row, strict=True)) if row is not None else None

    # ------------------------------------------------------------ notifications (ADR 0017)

    def notifications_found(self, rows: Sequence[Mapping[str, Any]],
                            positions: Mapping[tuple[str, int], int]) -> None:
        """New notifications (pending) and the notifier's read positions, in one
        transaction: what was read is what is owed. A notification already held keeps its
        row (a lifecycle change read again after a crash owes nothing new)."""
        with self._lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                if rows:
                    con.execute(_insert_sql("notifications", NOTIFICATION_COLUMNS,
                                            "OR IGNORE"),
                                _columns(rows, NOTIFICATION_COLUMNS))
                items = sorted(positions.items())
                if items:
                    con.execute(
                        'INSERT OR REPLACE INTO positions SELECT unnest($1::VARCHAR[]), '
                        'unnest($2::INTEGER[]), unnest($3::BIGINT[])',
                        [[t for (t, _), _ in items], [p for (_, p), _ in items],
                         [o for _, o in items]])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self._generation += 1
            self._after_commit()

    def notification_tried(self, row: Mapping[str, Any]) -> None:
        """One attempt's outcome: status, attempts, last status and error, next try."""
        with self._lock:
            self.con.execute(
                "UPDATE notifications SET status = $2, attempts = $3, last_status = $4, "
                "last_error = $5, next_try_ms = $6, delivered_ms = $7, report_hash = $8 "
                "WHERE notification_id = $1",
                [row["notification_id"], row["status"], row["attempts"], row["last_status"],
                 row["last_error"], row["next_try_ms"], row["delivered_ms"],
                 row["report_hash"]])
            self._generation += 1
            self._after_commit()

    def pending_notifications(self) -> list[dict[str, Any]]:
        """Notifications owed, oldest first (a restart takes them up again)."""
        with self._lock:
            cur = self.con.execute("SELECT * FROM notifications WHERE status = 'pending' "
                                   "ORDER BY created_ms, incident_id, seq, channel")
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def report_for(self, incident_id: str, seq: int) -> str | None:
        """The latest report version of an incident that knows its change ``seq``."""
        with self._lock:
            row = self.con.execute(
                "SELECT body FROM triage_reports WHERE incident_id = $1 AND "
                "incident_seq >= $2 ORDER BY written_seq DESC LIMIT 1",
                [incident_id, seq]).fetchone()
        return str(row[0]) if row is not None else None

    def report_keys(self) -> set[tuple[str, str]]:
        """(incident_id, report_hash) of every report version held."""
        with self._lock:
            rows = self.con.execute(
                "SELECT incident_id, report_hash FROM triage_reports").fetchall()
        return {(i, h) for i, h in rows}

    def write(
        self,
        *,
        incident_events: Sequence[Mapping[str, Any]] = (),
        incident_updates: Sequence[Mapping[str, Any]] = (),
        family_windows: Sequence[Mapping[str, Any]] = (),
        step_windows: Sequence[Mapping[str, Any]] = (),
        dead_letters: Sequence[Mapping[str, Any]] = (),
        signals: Sequence[Mapping[str, Any]] = (),
        signal_fold: SignalFold | None = None,
        reports: Sequence[Mapping[str, Any]] = (),
        evidence: Sequence[Mapping[str, Any]] = (),
        positions: Mapping[tuple[str, int], int] | None = None,
        log_epochs: Sequence[tuple[str, int, int, int]] = (),
    ) -> None:
        """Apply one batch and its input positions atomically. ``signals`` are rows
        upserted as given; ``signal_fold`` folds occurrences onto the held rows."""
        with self._lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                if incident_events:
                    con.execute(_insert_sql("incident_events", EVENT_COLUMNS, "OR IGNORE"),
                                _columns(incident_events, EVENT_COLUMNS))
                    touched = sorted({str(e["incident_id"]) for e in incident_events})
                    con.execute(REBUILD_INCIDENTS, [touched])
                    actions = [e for e in incident_events if e.get("action_id")]
                    if actions:
                        con.execute(_insert_sql("incident_actions", ACTION_COLUMNS,
                                                "OR IGNORE"),
                                    _columns(actions, ACTION_COLUMNS))
                if incident_updates:
                    con.execute(_insert_sql("incident_updates", UPDATE_COLUMNS, "OR IGNORE"),
                                _columns(incident_updates, UPDATE_COLUMNS))
                if family_windows:
                    con.execute(
                        _insert_sql("family_windows", FAMILY_WINDOW_COLUMNS, "OR REPLACE"),
                        _columns(_last_by(family_windows, ("env", "family", "bucket_start_ms")),
                                 FAMILY_WINDOW_COLUMNS))
                if step_windows:
                    con.execute(
                        _insert_sql("step_windows", STEP_WINDOW_COLUMNS, "OR REPLACE"),
                        _columns(_last_by(step_windows,
                                          ("env", "service", "step", "bucket_start_ms")),
                                 STEP_WINDOW_COLUMNS))
                if signals:
                    con.execute(_insert_sql("signals", SIGNAL_COLUMNS, "OR REPLACE"),
                                _columns(_last_by(signals, ("signal_id",)), SIGNAL_COLUMNS))
                if signal_fold is not None:
                    _fold_signals(con, signal_fold)
                if reports:
                    # written_seq numbers the versions in the order they were read (one
                    # incident's versions are in topic order), never in a scan's order.
                    base = con.execute("SELECT coalesce(max(written_seq), 0) "
                                       "FROM triage_reports").fetchone()
                    first = int(base[0] if base else 0) + 1
                    ordered = [{**row, "written_seq": first + i}
                               for i, row in enumerate(reports)]
                    con.execute(_insert_sql("triage_reports", SEQUENCED_REPORT_COLUMNS,
                                            "OR IGNORE"),
                                _columns(ordered, SEQUENCED_REPORT_COLUMNS))
                if evidence:
                    con.execute(_insert_sql("evidence", EVIDENCE_COLUMNS, "OR IGNORE"),
                                _columns(evidence, EVIDENCE_COLUMNS))
                if dead_letters:
                    con.execute(_insert_sql("dead_letters", DEAD_LETTER_COLUMNS, "OR IGNORE"),
                                _columns(dead_letters, DEAD_LETTER_COLUMNS))
                for topic, partition, stale, high in log_epochs:
                    # A log that restarted below the stored position: a new epoch of that
                    # partition, its history kept (ADR 0014).
                    con.execute(
                        'INSERT INTO log_epochs SELECT $1, $2, coalesce(max(epoch), 0) + 1, '
                        '$3, $4 FROM log_epochs WHERE topic = $1 AND "partition" = $2',
                        [topic, partition, stale, high])
                if positions:
                    items = sorted(positions.items())
                    con.execute(
                        'INSERT OR REPLACE INTO positions SELECT unnest($1::VARCHAR[]), '
                        'unnest($2::INTEGER[]), unnest($3::BIGINT[])',
                        [[t for (t, _), _ in items], [p for (_, p), _ in items],
                         [o for _, o in items]])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self._generation += 1
            self._after_commit()

    def _after_commit(self) -> None:
        """DuckDB's automatic checkpoint, held off while a copy of the file is taken (a
        checkpoint is the only thing that rewrites blocks the copied checkpoint uses)."""
        if self._copies or self.path == ":memory:":
            return
        try:
            wal = os.path.getsize(f"{self.path}.wal")
        except OSError:
            return
        if wal > WAL_CHECKPOINT_BYTES:
            self.con.execute("CHECKPOINT")

    def copy_checkpoint(self, dest: str | Path) -> int:
        """Write a consistent copy of the database to ``dest``; return its generation.

        The writer is held only for a CHECKPOINT (it writes what the WAL holds: 3-9 ms
        idle, up to a few hundred under the bench's load); the copy runs without the
        lock. Between checkpoints DuckDB writes new data to the WAL and to blocks the
        last checkpoint does not use, so the file as of that checkpoint stays intact as
        long as no other checkpoint runs, and none does while ``_copies`` is non-zero (our
        automatic checkpoint waits for it, and DuckDB's own is off: ``checkpoint_threshold``
        is 1 TB)."""
        if self.path == ":memory:":
            raise ValueError("an in-memory database has no file to copy")
        with self._lock:
            started = time.perf_counter()
            self.con.execute("CHECKPOINT")
            self.checkpoint_s = time.perf_counter() - started
            generation = self._generation
            self._copies += 1
        try:
            shutil.copyfile(self.path, dest)
        finally:
            with self._lock:
                self._copies -= 1
                self._copies_done.notify_all()
        return generation

    def close(self) -> None:
        with self._lock:
            while self._copies:  # a copy in flight must not see the closing checkpoint
                self._copies_done.wait()
            self.con.close()


def _held_signals(con: duckdb.DuckDBPyConnection, ids: Sequence[str]
                  ) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    names = [name for name, _ in SIGNAL_COLUMNS]
    cols = ", ".join(f'"{n}"' for n in names)
    rows = con.execute(f"SELECT {cols} FROM signals "
                       "WHERE signal_id IN (SELECT unnest($1::VARCHAR[]))", [list(ids)]
                       ).fetchall()
    return {row[0]: dict(zip(names, row, strict=True)) for row in rows}


def _fold_signals(con: duckdb.DuckDBPyConnection, batch: SignalFold) -> None:
    """Fold a batch of signal occurrences onto the held rows (inside the transaction)."""
    held = _held_signals(con, sorted(set(batch.signal_ids())))
    pairs = sorted(set(batch.deliveries()))
    seen: set[tuple[str, str]] = set()
    if pairs:
        seen = {(d, i) for d, i in con.execute(
            "SELECT d.delivery, d.signal_id FROM signal_deliveries d JOIN ("
            "SELECT unnest($1::VARCHAR[]) AS delivery, unnest($2::VARCHAR[]) AS signal_id"
            ") q USING (delivery, signal_id)",
            [[d for d, _ in pairs], [i for _, i in pairs]]).fetchall()}
    rows, applied = batch.fold(held, seen)
    if rows:
        con.execute(_insert_sql("signals", SIGNAL_COLUMNS, "OR REPLACE"),
                    _columns(_last_by(rows, ("signal_id",)), SIGNAL_COLUMNS))
    if applied:
        con.execute("INSERT OR IGNORE INTO signal_deliveries "
                    "SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[])",
                    [[d for d, _ in applied], [i for _, i in applied]])


def _last_by(rows: Iterable[Mapping[str, Any]], key: tuple[str, ...]
             ) -> list[Mapping[str, Any]]:
    """Keep the last row per key: a batch may carry several versions of one bucket."""
    last: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for row in rows:
        last[tuple(row[k] for k in key)] = row
    return list(last.values())
