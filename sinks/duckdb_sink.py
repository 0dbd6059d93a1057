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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import duckdb

from tocsin.sinks.duckdb_schema import (
    ACTION_COLUMNS,
    DDL,
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    EVIDENCE_COLUMNS,
    FAMILY_WINDOW_COLUMNS,
    MIGRATIONS,
    NOTIFICATION_COLUMNS,
    REBUILD_INCIDENTS,
    SCHEMA_VERSION,
    SEQUENCED_REPORT_COLUMNS,
    SIGNAL_COLUMNS,
    STEP_WINDOW_COLUMNS,
    TIMELINE_COLUMNS,
    TIMELINE_SUMMARY_COLUMNS,
    UPDATE_COLUMNS,
    VIEWS,
    column_arrays,
    insert_sql,
    timeline_rows,
)

# DuckDB's own automatic checkpoint (its default threshold) is replaced by ours, which
# waits while a copy of the file is being taken (see copy_checkpoint).
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024



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
        with self._transaction() as con:
            if rows:
                _insert(con, "notifications", NOTIFICATION_COLUMNS, rows, "OR IGNORE")
            _write_positions(con, positions)

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
        with self._transaction() as con:
            if incident_events:
                _insert(con, "incident_events", EVENT_COLUMNS, incident_events, "OR IGNORE")
                touched = sorted({str(e["incident_id"]) for e in incident_events})
                con.execute(REBUILD_INCIDENTS, [touched])
                actions = [e for e in incident_events if e.get("action_id")]
                if actions:
                    _insert(con, "incident_actions", ACTION_COLUMNS, actions, "OR IGNORE")
                _write_timelines(con, incident_events)
            if incident_updates:
                _insert(con, "incident_updates", UPDATE_COLUMNS, incident_updates,
                        "OR IGNORE")
            if family_windows:
                _insert(con, "family_windows", FAMILY_WINDOW_COLUMNS,
                        _last_by(family_windows, ("env", "family", "bucket_start_ms")),
                        "OR REPLACE")
            if step_windows:
                _insert(con, "step_windows", STEP_WINDOW_COLUMNS,
                        _last_by(step_windows, ("env", "service", "step", "bucket_start_ms")),
                        "OR REPLACE")
            if signals:
                _insert(con, "signals", SIGNAL_COLUMNS, _last_by(signals, ("signal_id",)),
                        "OR REPLACE")
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
                _insert(con, "triage_reports", SEQUENCED_REPORT_COLUMNS, ordered, "OR IGNORE")
            if evidence:
                _insert(con, "evidence", EVIDENCE_COLUMNS, evidence, "OR IGNORE")
            if dead_letters:
                _insert(con, "dead_letters", DEAD_LETTER_COLUMNS, dead_letters, "OR IGNORE")
            for topic, partition, stale, high in log_epochs:
                # A log that restarted below the stored position: a new epoch of that
                # partition, its history kept (ADR 0014).
                con.execute(
                    'INSERT INTO log_epochs SELECT $1, $2, coalesce(max(epoch), 0) + 1, '
                    '$3, $4 FROM log_epochs WHERE topic = $1 AND "partition" = $2',
                    [topic, partition, stale, high])
            if positions:
                _write_positions(con, positions)

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The writer's connection inside one transaction, under the lock: committed when
        the block ends, rolled back if it raises; a committed batch is a new generation."""
        with self._lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
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


def _insert(con: duckdb.DuckDBPyConnection, table: str,
            columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]],
            verb: str) -> None:
    """Rows into a table as column arrays (``INSERT <verb> ... SELECT unnest(...)``)."""
    con.execute(insert_sql(table, columns, verb), column_arrays(rows, columns))


def _write_timelines(con: duckdb.DuckDBPyConnection,
                     events: Sequence[Mapping[str, Any]]) -> None:
    """Each incident's latest timeline replaces the one held (ADR 0019): the newest by
    seq, whatever order a replay delivers them in."""
    latest: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.get("timeline") is not None:
            held = latest.get(e["incident_id"])
            if held is None or held["seq"] < e["seq"]:
                latest[e["incident_id"]] = e
    if not latest:
        return
    ids = sorted(latest)
    held_seq = dict(con.execute(
        "SELECT incident_id, seq FROM incident_timeline_summary "
        "WHERE incident_id IN (SELECT unnest($1::VARCHAR[]))", [ids]).fetchall())
    newer = [i for i in ids if held_seq.get(i, -1) < latest[i]["seq"]]
    if not newer:
        return
    con.execute("DELETE FROM incident_timeline WHERE incident_id IN "
                "(SELECT unnest($1::VARCHAR[]))", [newer])
    heads, points = [], []
    for incident_id in newer:
        head, rows = timeline_rows(latest[incident_id])
        heads.append(head)
        points.extend(rows)
    _insert(con, "incident_timeline_summary", TIMELINE_SUMMARY_COLUMNS, heads, "OR REPLACE")
    if points:
        _insert(con, "incident_timeline", TIMELINE_COLUMNS, points, "OR REPLACE")


def _write_positions(con: duckdb.DuckDBPyConnection,
                     positions: Mapping[tuple[str, int], int]) -> None:
    """Upsert consumed positions (inside the caller's transaction)."""
    items = sorted(positions.items())
    if items:
        con.execute(
            'INSERT OR REPLACE INTO positions SELECT unnest($1::VARCHAR[]), '
            'unnest($2::INTEGER[]), unnest($3::BIGINT[])',
            [[t for (t, _), _ in items], [p for (_, p), _ in items], [o for _, o in items]])


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
        _insert(con, "signals", SIGNAL_COLUMNS, _last_by(rows, ("signal_id",)), "OR REPLACE")
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
