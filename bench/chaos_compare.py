"""What a campaign run left behind (DuckDB tables, output topics) and how two runs compare.

See :mod:`bench.chaos` for what is compared and why each exclusion is legitimate.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
from aiokafka import ConsumerRecord

from tocsin.schemas.codec import SchemaError, decode_incident
from tocsin.schemas.signal_wire import decode_signal
from tocsin.streams.kafka.headers import DELIVERY_HEADER, progress_of, span_source

# Columns that are legitimately run-specific (see bench/chaos.py's docstring).
EXCLUDED_COLUMNS = {
    "triage_reports": ("written_seq", "provenance"),
    "dead_letters": ("dlq_partition", "dlq_offset"),
}
# Identity of a row in each table (for naming what differs).
KEYS = {
    "incidents": ("incident_id",),
    "incident_events": ("incident_id", "seq"),
    "family_windows": ("env", "family", "bucket_start_ms"),
    "step_windows": ("env", "service", "step", "bucket_start_ms"),
    "signals": ("signal_id",),
    "triage_reports": ("incident_id",),
    "evidence": ("incident_id", "report_hash", "kind", "id"),
    "dead_letters": ("source_topic", "source_partition", "source_offset", "sha256"),
    "positions": ("topic", "partition"),
    "tocsin_meta": ("key",),
}
SAMPLES = 3


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    note: str = ""

    def counter(self) -> Counter[tuple[Any, ...]]:
        return Counter(self.rows)

    def key_of(self, name: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        key = KEYS.get(name, tuple(self.columns))
        return tuple(row[self.columns.index(k)] for k in key if k in self.columns)


def dump_tables(db: Path, spans_topic: str) -> dict[str, Table]:
    """Every table of a projection, its rows as compared (the worker must be stopped)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "ORDER BY table_name").fetchall()]
        out: dict[str, Table] = {}
        for name in names:
            columns = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", [name]).fetchall()]
            kept = [c for c in columns if c not in EXCLUDED_COLUMNS.get(name, ())]
            select = ", ".join(f'"{c}"' for c in kept)
            if name == "dead_letters":
                # A letter's source offset is an identity only on the input topic the
                # producer alone writes: the events topic also carries the span intake's
                # events and progress marks, so offsets after them move with timing.
                select = select.replace(
                    '"source_offset"', f"CASE WHEN source_topic = '{spans_topic}' THEN "
                    "source_offset END AS source_offset")
            where, note = "", ""
            if name == "incident_updates":
                # ADR 0018: news is a diff between consecutive report versions, and how
                # many versions a report goes through depends on batching.
                out[name] = Table(kept, [], "not compared: news depends on batching")
                continue
            if name == "positions":
                # Offsets of the run's own output topics differ with every replay; only
                # the input topic read straight from the producer must end alike.
                where, note = f"WHERE topic = '{spans_topic}'", f"only {spans_topic}"
            elif name == "triage_reports":
                # ADR 0009: intermediate versions depend on batching; the latest must not.
                where = ("WHERE (incident_id, written_seq) IN (SELECT incident_id, "
                         "max(written_seq) FROM triage_reports GROUP BY incident_id)")
                note = "latest version per incident"
            elif name == "evidence":
                where = ("WHERE (incident_id, report_hash) IN (SELECT incident_id, "
                         "arg_max(report_hash, written_seq) FROM triage_reports "
                         "GROUP BY incident_id)")
                note = "of the latest version per incident"
            rows = con.execute(f"SELECT {select} FROM {name} {where}").fetchall()
            out[name] = Table(kept, sorted((_hashable(r) for r in rows), key=repr), note)
        return out
    finally:
        con.close()


def report_versions(db: Path) -> set[tuple[str, str]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {(a, b) for a, b in con.execute(
            "SELECT incident_id, report_hash FROM triage_reports").fetchall()}
    finally:
        con.close()


@dataclass
class Topics:
    """The logical content of one run's output topics."""

    incidents: list[tuple[tuple[str, int], bytes]] = field(default_factory=list)
    reports: list[tuple[str, str, int, int]] = field(default_factory=list)  # id, hash, p, o
    # (signal id, delivery): the delivery id an intake gave a request with an
    # Idempotency-Key (header tocsin.delivery), else where the record lies (a record
    # without one is its own delivery: the fold counts it as an occurrence)
    signals: list[tuple[str, str]] = field(default_factory=list)
    undecodable: Counter[str] = field(default_factory=Counter)
    input_digest: dict[str, str] = field(default_factory=dict)  # topic:partition -> sha
    span_events: dict[int, list[str]] = field(default_factory=dict)  # first occurrences
    span_event_repeats: int = 0

    def final_reports(self) -> dict[str, str]:
        """The latest version of each incident on the topic (key = incident id, so one
        partition, in offset order)."""
        latest: dict[str, tuple[int, int, str]] = {}
        for incident, digest, p, o in self.reports:
            if incident not in latest or (p, o) > latest[incident][:2]:
                latest[incident] = (p, o, digest)
        return {k: v[2] for k, v in latest.items()}


def read_topics(incidents: Iterable[ConsumerRecord[bytes, bytes]],
                reports: Iterable[ConsumerRecord[bytes, bytes]],
                signals: Iterable[ConsumerRecord[bytes, bytes]],
                events: Iterable[ConsumerRecord[bytes, bytes]],
                spans: Iterable[ConsumerRecord[bytes, bytes]]) -> Topics:
    t = Topics()
    for rec in incidents:
        try:
            value = decode_incident(rec.value or b"")
        except SchemaError:
            t.undecodable["incidents"] += 1
            continue
        if value.get("kind") == "updated":
            continue  # triage's news, identified by its signature (ADR 0018)
        identity = (str(value["incident_id"]), int(value["seq"]))
        t.incidents.append((identity, orjson.dumps(value, option=orjson.OPT_SORT_KEYS)))
    for rec in reports:
        try:
            report = orjson.loads(rec.value or b"")
            t.reports.append((report["incident"]["id"], report["report_hash"],
                              rec.partition, rec.offset))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            t.undecodable["reports"] += 1
    for rec in signals:
        try:
            signal_id = decode_signal(rec.value or b"").signal_id
        except SchemaError:
            t.undecodable["signals"] += 1
            continue
        delivery = next((bytes(v or b"").decode() for k, v in rec.headers or ()
                         if k == DELIVERY_HEADER), None)
        t.signals.append((signal_id, delivery or f"record {rec.partition}:{rec.offset}"))
    digests: dict[str, Any] = {}
    seen: set[str] = set()
    for rec in events:
        if not rec.value and progress_of(rec.headers) is not None:
            continue  # a span source's progress mark, written by the run itself
        source = span_source(rec.headers)
        if source is None:  # ours: the input log as produced
            digests.setdefault(f"{rec.topic}:{rec.partition}", hashlib.sha256()).update(
                (rec.value or b"") + b"\n")
            continue
        where = f"{source[0]}:{source[1][0]}:{source[1][1]}"
        if where in seen:
            t.span_event_repeats += 1
            continue
        seen.add(where)
        t.span_events.setdefault(rec.partition, []).append(where)
    for rec in spans:
        digests.setdefault(f"{rec.topic}:{rec.partition}", hashlib.sha256()).update(
            (rec.value or b"") + b"\n")
    t.input_digest = {k: v.hexdigest()[:16] for k, v in sorted(digests.items())}
    return t


def _dups(counter: Counter[Any]) -> int:
    return sum(c - 1 for c in counter.values() if c > 1)


def _sample(items: Iterable[Any]) -> list[Any]:
    return [repr(x)[:300] for x in sorted(items, key=repr)[:SAMPLES]]


@dataclass
class Comparison:
    lost: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    incidents: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, Any] = field(default_factory=dict)
    inputs_identical: bool = True
    span_events_order_identical: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def tables_identical(self) -> bool:
        return all(d["identical"] for d in self.tables.values())


def compare_tables(chaos: dict[str, Table], ref: dict[str, Table]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(set(chaos) | set(ref)):
        a, b = chaos.get(name), ref.get(name)
        if a is None or b is None:
            out[name] = {"identical": False, "why": f"table only in "
                         f"{'reference' if a is None else 'chaos'} run"}
            continue
        if a.columns != b.columns:
            out[name] = {"identical": False, "why": f"columns {a.columns} != {b.columns}"}
            continue
        ca, cb = a.counter(), b.counter()
        missing, extra = cb - ca, ca - cb
        entry: dict[str, Any] = {"identical": not missing and not extra, "rows": len(b.rows),
                                 "rows_chaos": len(a.rows), "missing": sum(missing.values()),
                                 "extra": sum(extra.values())}
        if b.note:
            entry["compared"] = b.note
        entry.update(only_in_reference_rows=0, only_in_chaos_rows=0, differing_rows=0)
        if missing or extra:
            keys_missing = {b.key_of(name, r) for r in missing}
            keys_extra = {a.key_of(name, r) for r in extra}
            entry.update(only_in_reference_rows=len(keys_missing - keys_extra),
                         only_in_chaos_rows=len(keys_extra - keys_missing),
                         differing_rows=len(keys_missing & keys_extra))
            entry["differing_keys"] = _sample(keys_missing & keys_extra)
            entry["only_in_reference"] = _sample(keys_missing - keys_extra)
            entry["only_in_chaos"] = _sample(keys_extra - keys_missing)
            differing = sorted(keys_missing & keys_extra, key=repr)[:1]
            for key in differing:
                rr = [r for r in missing if b.key_of(name, r) == key][:1]
                cr = [r for r in extra if a.key_of(name, r) == key][:1]
                if rr and cr:
                    entry["example"] = {c: {"reference": repr(x)[:200], "chaos": repr(y)[:200]}
                                        for c, x, y in zip(b.columns, rr[0], cr[0], strict=True)
                                        if x != y}
        out[name] = entry
    return out


def compare(chaos_tables: dict[str, Table], ref_tables: dict[str, Table],
            chaos: Topics, ref: Topics, chaos_versions: set[tuple[str, str]],
            ref_versions: set[tuple[str, str]], acked_ids: Sequence[str]) -> Comparison:
    c = Comparison()
    c.tables = compare_tables(chaos_tables, ref_tables)
    # Lost: rows whose identity only the reference has (a row with the same identity and
    # other values is a difference, reported per table, not a loss).
    c.lost["duckdb_rows"] = sum(d.get("only_in_reference_rows", 0) for d in c.tables.values())

    # Lifecycle events: identity (incident_id, seq); each exactly once, same content.
    ids_chaos = Counter(i for i, _ in chaos.incidents)
    ids_ref = Counter(i for i, _ in ref.incidents)
    content_chaos = {i: v for i, v in chaos.incidents}
    content_ref = {i: v for i, v in ref.incidents}
    lost = set(ids_ref) - set(ids_chaos)
    extra = set(ids_chaos) - set(ids_ref)
    differ = {i for i in set(ids_ref) & set(ids_chaos) if content_ref[i] != content_chaos[i]}
    variants = {i for i, _ in chaos.incidents if len({v for j, v in chaos.incidents
                                                      if j == i}) > 1}
    c.lost["incident_events"] = len(lost)
    c.duplicated["incident_events"] = _dups(ids_chaos)
    c.incidents = {"reference": len({i for i, _ in ids_ref}),
                   "incident_ids": len({i[0] for i in ids_ref}),
                   "lifecycle_events": len(ids_ref), "lifecycle_events_chaos": len(ids_chaos),
                   "identical": not lost and not extra and not differ and not variants
                   and not _dups(ids_chaos),
                   "only_in_reference": _sample(lost), "only_in_chaos": _sample(extra),
                   "content_differs": _sample(differ), "duplicates_reference": _dups(ids_ref)}

    # Reports: (incident_id, report_hash) at most once on the topic; the latest version
    # of every incident the same (intermediate versions depend on batching, ADR 0009).
    pairs_chaos = Counter((i, h) for i, h, _, _ in chaos.reports)
    pairs_ref = Counter((i, h) for i, h, _, _ in ref.reports)
    final_chaos, final_ref = chaos.final_reports(), ref.final_reports()
    lost_final = {(i, h) for i, h in final_ref.items() if (i, h) not in pairs_chaos}
    final_differs = {i for i in final_ref if final_chaos.get(i) != final_ref[i]}
    c.lost["final_reports"] = len(lost_final)
    c.duplicated["reports"] = _dups(pairs_chaos)
    c.reports = {"incidents_reported": len(final_ref), "versions_reference": len(pairs_ref),
                 "versions_chaos": len(pairs_chaos),
                 "final_identical": not final_differs and set(final_chaos) == set(final_ref),
                 "final_differs": _sample(final_differs),
                 "duplicates_reference": _dups(pairs_ref)}

    # The projection holds what its topics hold (each run on its own).
    gaps = {}
    for name, topics, versions in (("chaos", chaos, chaos_versions),
                                   ("reference", ref, ref_versions)):
        on_topic = {(i, h) for i, h, _, _ in topics.reports}
        gaps[name] = {"reports_on_topic_not_in_duckdb": _sample(on_topic - versions),
                      "reports_in_duckdb_not_on_topic": _sample(versions - on_topic),
                      "count": len(on_topic ^ versions)}
    c.reports["projection_gaps"] = gaps
    c.lost["reports_not_projected"] = len({(i, h) for i, h, _, _ in chaos.reports}
                                          - chaos_versions)

    # Signals: each id in one delivery on the topic (one request per distinct signal, a
    # deploy registered once); a request retried after an unanswered attempt may be
    # published again under the same delivery id, which the fold applies once (not a
    # duplicate: counted as redelivered). Every 202'd id in DuckDB once, folded exactly
    # as in the reference.
    deliveries_chaos = Counter(i for i, _ in set(chaos.signals))
    deliveries_ref = Counter(i for i, _ in set(ref.signals))
    sig_chaos, sig_ref = Counter(i for i, _ in chaos.signals), Counter(
        i for i, _ in ref.signals)
    c.duplicated["signals"] = sum(max(0, n - max(1, deliveries_ref.get(i, 0)))
                                  for i, n in deliveries_chaos.items())
    c.lost["signals"] = len(set(sig_ref) - set(sig_chaos))
    table_c, table_r = chaos_tables.get("signals"), ref_tables.get("signals")
    rows_c: dict[str, tuple[Any, ...]] = {}
    rows_r: dict[str, tuple[Any, ...]] = {}
    if table_c is not None and table_r is not None:
        rows_c = {r[0]: r for r in table_c.rows}
        rows_r = {r[0]: r for r in table_r.rows}
    occurrences = table_c.columns.index("occurrences") if table_c else -1
    acked = set(acked_ids)
    once = {i for i in acked if i in rows_c and deliveries_chaos[i] == 1
            and rows_c[i][occurrences] == (rows_r[i][occurrences] if i in rows_r else 1)}
    inflated = {i for i in acked if i in rows_c and i in rows_r
                and rows_c[i][occurrences] != rows_r[i][occurrences]}
    c.lost["signals_202_not_in_duckdb"] = len(acked - set(rows_c))
    c.signals = {"signals_202": len(acked), "present_once": len(once),
                 "missing_in_duckdb": _sample(acked - set(rows_c)),
                 "more_than_one_delivery": _sample(i for i in acked
                                                   if deliveries_chaos[i] > 1),
                 "redelivered": sum(n - deliveries_chaos[i] for i, n in sig_chaos.items()),
                 "occurrences_differ": _sample(inflated),
                 "on_topic_chaos": len(chaos.signals), "on_topic_reference": len(ref.signals),
                 "duplicates_reference": _dups(sig_ref)}

    c.inputs_identical = chaos.input_digest == ref.input_digest
    if not c.inputs_identical:
        c.notes.append(f"input logs differ: {chaos.input_digest} != {ref.input_digest}")
    c.span_events_order_identical = chaos.span_events == ref.span_events
    if not c.span_events_order_identical:
        c.notes.append("the span intake released translated events in another order than "
                       "in the reference run")
    for name, t in (("chaos", chaos), ("reference", ref)):
        if t.undecodable:
            c.notes.append(f"{name}: undecodable output records {dict(t.undecodable)}")
    return c
