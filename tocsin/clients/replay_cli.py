"""``tocsin replay`` and ``tocsin what-if``: a recorded log through the worker's rules,
offline, and the difference a rule change would have made (ADR 0023)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import duckdb
import orjson
from aiokafka import TopicPartition
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tocsin.clients.replay import (
    Counts,
    Outputs,
    RecordedLog,
    Replay,
    ReplayError,
)
from tocsin.processors.report import canonical_json
from tocsin.processors.rules import RulesError, RuleSet, load_rules_file, parse_set
from tocsin.processors.what_if import diff, diff_json, incident_rows, totals
from tocsin.schemas.codec import encode_incident
from tocsin.streams.kafka.headers import PROVENANCE_HEADER
from tocsin.streams.stages.detect import window_records
from tocsin.streams.stages.detect_loop import deploy_record
from tocsin.streams.stages.triage import owner_of
from tocsin.streams.worker.settings import Settings, rules_of

err = Console(stderr=True, highlight=False)


# ---------------------------------------------------------------------- rules


def rules_for(settings: Settings, rules_file: Path | None, sets: Sequence[str]) -> RuleSet:
    """The rules a replay runs under: ``rules_file`` (else the one TOCSIN_RULES names,
    else none), with ``--set`` items as [defaults] on top (ADR 0022). A bad file or item is
    a :class:`click.BadParameter` naming its line or item."""
    try:
        if rules_file is not None:
            rules = load_rules_file(rules_file, base=settings.detector)
        else:
            rules = rules_of(settings)
        if sets:
            rules = rules.with_defaults(parse_set(sets), base=settings.detector)
    except RulesError as exc:
        if exc.source == "--set":
            raise click.BadParameter(exc.message, param_hint="--set") from exc
        raise click.BadParameter(str(exc), param_hint="--rules") from exc
    except OSError as exc:
        raise click.BadParameter(f"{rules_file}: {exc.strerror or exc}",
                                 param_hint="--rules") from exc
    return rules


def _rules_info(rules: RuleSet) -> dict[str, Any]:
    return {"hash": None if rules.is_empty else rules.hash,
            "file": rules.source if not rules.is_empty else None,
            "file_sha256": rules.file_sha256}


def base_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # a bad TOCSIN_* variable is a usage problem
        raise click.UsageError(f"settings: {exc}") from exc


# ---------------------------------------------------------------------- replay


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def replay_log(log: RecordedLog, settings: Settings, rules: RuleSet, jobs: int = 1
               ) -> tuple[Outputs, Counts, float]:
    started = time.perf_counter()
    replay = Replay(settings, rules)
    out = replay.run(log, jobs)
    return out, replay.counts, time.perf_counter() - started


def lifecycle_of(out: Outputs) -> list[dict[str, Any]]:
    return [change.to_dict() for _, change in out.changes]


def rows_of(out: Outputs, settings: Settings) -> list[dict[str, Any]]:
    return incident_rows(lifecycle_of(out), out.final, settings.detector.window_ms)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _secs(ms: int | float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:g}s"


def incident_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Two lines an incident: id and family, then when, how it stands, cause and hash."""
    out = []
    for r in rows:
        out.append(f"{r['id']}  {r['family']} ({r['env']})")
        out.append(f"    onset {_iso(r['onset_ms'])}, detected after "
                   f"{_secs(r['time_to_detect_ms'])}, {r['phase']}; {r['cause']} "
                   f"({r['rule']}); {r['report_hash'] or 'no report'}")
    return out


def _print_incidents(console: Console, rows: Sequence[Mapping[str, Any]], title: str
                     ) -> None:
    console.print(escape(title), highlight=False)
    for line in incident_lines(rows):
        console.print(escape(line), highlight=False, soft_wrap=True)


class _Rec:
    """A record as the projection reads one (what the worker would have put on a topic)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key, self.value, self.headers, self.timestamp = key, value, list(headers), 0


def write_db(path: Path, settings: Settings, log: RecordedLog, out: Outputs) -> int:
    """The replay's outputs into a new DuckDB file through the worker's projection (the
    same tables and rows); how many rows were written."""
    from tocsin.sinks.duckdb_sink import DuckDBSink
    from tocsin.streams.stages.project import read_batch, write_rows

    t = settings.topics
    parts = max(len(log.partitions(t.events)), 1)
    batch: dict[TopicPartition, list[Any]] = {}

    def put(topic: str, partition: int, key: bytes | None, value: bytes | None,
            headers: Sequence[tuple[str, bytes | None]] = ()) -> None:
        records = batch.setdefault(TopicPartition(topic, partition), [])
        records.append(_Rec(topic, partition, len(records), key, value, headers))

    for _, change in out.changes:
        put(t.incidents, owner_of(change.service, parts), change.incident_id.encode(),
            encode_incident(change.to_dict(), settings.incident_encoding))
    for partition, fams, steps in out.windows:
        for key, value in window_records(partition, fams, steps, settings.detector.bucket_ms):
            put(t.windows, partition, key, value)
    for p in log.partitions(t.signals):
        for rec in log.records(t.signals, p):
            put(t.signals, p, rec.key, rec.value, rec.headers)
    for signal in out.deploys:
        put(t.signals, 0, None, *deploy_record(signal))
    for report in out.reports:
        incident = report["incident"]
        put(t.reports, owner_of(incident["service"], parts), incident["id"].encode(),
            canonical_json(report), [("tocsin.report_hash", report["report_hash"].encode()),
                                     (PROVENANCE_HEADER,
                                      out.provenance.get(report["report_hash"], b"{}"))])
    for letter in out.letters:
        put(t.dlq, 0, letter.letter.key, letter.letter.value, letter.letter.headers)
    rows = read_batch(batch, t)
    sink = DuckDBSink(path)
    try:
        write_rows(sink, rows, positions=False)
    finally:
        sink.close()
    return rows.count()


def _open(directory: Path) -> RecordedLog:
    try:
        return RecordedLog.open(directory)
    except ReplayError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)


def _run(log: RecordedLog, settings: Settings, rules: RuleSet, jobs: int
         ) -> tuple[Outputs, Counts, float]:
    try:
        return replay_log(log, settings, rules, jobs)
    except ReplayError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)


def _log_info(log: RecordedLog) -> dict[str, Any]:
    return {"directory": str(log.root), "records": log.manifest.get("records"),
            "files": len(log.manifest.get("files", ())),
            "manifest_sha256": log.manifest_sha256}


@click.command(name="replay", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--rules", "rules_file", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Rules file to replay under (default: TOCSIN_RULES, if set).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A setting for every family, over the rules' [defaults]: "
                   "detector.min_count, detector.min_lift, detector.min_rate, "
                   "detector.window, detector.baseline_windows, detector.resolve_after, "
                   "detector.min_active, detector.rearm_ratio, triage.correlation_window "
                   "(durations: 90s, 10m, 2h or ms). Repeatable.")
@click.option("--db", "db", metavar="OUT.duckdb", type=click.Path(dir_okay=False,
                                                                  path_type=Path),
              help="Write the worker's DuckDB tables to this new file.")
@click.option("--jobs", "jobs", type=click.IntRange(1, 256), default=None, metavar="N",
              help="Processes for detection's partitions (default: the CPUs this process "
                   "may use). The result does not depend on it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replay_command(directory: Path, rules_file: Path | None, sets: tuple[str, ...],
                   db: Path | None, jobs: int | None, as_json: bool) -> None:
    """Replay a recorded log (`tocsin export`'s DIR) through detection, trace assembly
    and triage, with no broker: the incidents, their causes and report hashes, as the
    worker concluded them (ADR 0023).

    \b
    tocsin replay DIR
    tocsin replay DIR --set detector.min_lift=4 --db replay.duckdb --json

    Exit 0 replayed, 1 the log cannot be read, 2 bad arguments.
    """
    settings = base_settings()
    rules = rules_for(settings, rules_file, sets)
    if db is not None and db.exists():
        raise click.BadParameter(f"{db} exists; replay writes a new file", param_hint="--db")
    log = _open(directory)
    out, counts, seconds = _run(log, settings, rules, jobs or default_jobs())
    rows = rows_of(out, settings)
    written = None
    if db is not None:
        try:
            written = write_db(db, settings, log, out)
        except (OSError, duckdb.Error) as exc:
            err.print(f"[red]error:[/] cannot write {escape(str(db))}: {escape(str(exc))}")
            sys.exit(1)
    result = {
        "log": _log_info(log), "rules": _rules_info(rules), "set": list(sets),
        "counts": {**vars(counts), "incidents": len(rows),
                   "lifecycle_changes": len(out.changes), "report_versions": len(out.reports)},
        "totals": totals(rows), "incidents": rows,
        "seconds": round(seconds, 3),
        "events_per_second": round(counts.events / max(seconds, 1e-9)),
        "jobs": jobs or default_jobs(),
        "db": None if db is None else {"path": str(db), "rows": written},
    }
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode())
        return
    _print_incidents(Console(), rows, f"{len(rows)} incident{'s' * (len(rows) != 1)}:")
    t = totals(rows)
    err.print(f"replayed {counts.events:,} events, {counts.signals:,} signals and "
              f"{counts.span_records:,} span records in {seconds:.2f}s "
              f"({result['events_per_second']:,} events/s): {t['incidents']} incidents, "
              f"{t['pages']} pages, median time to detect "
              f"{_secs(t['median_time_to_detect_ms'])}; {counts.dead_letters} dead letters"
              + (f"; {written:,} rows in {db}" if db is not None else ""))


# ---------------------------------------------------------------------- what-if


@click.command(name="what-if", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--rules", "rules_file", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The change: this rules file instead of the configured one "
                   "(TOCSIN_RULES, or none).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="The change: a setting for every family (keys as for `tocsin replay "
                   "--set`), over the rules' [defaults]. Repeatable.")
@click.option("--jobs", "jobs", type=click.IntRange(1, 256), default=None, metavar="N",
              help="Processes for detection's partitions (default: the CPUs this process "
                   "may use). The result does not depend on it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def what_if_command(directory: Path, rules_file: Path | None, sets: tuple[str, ...],
                    jobs: int | None, as_json: bool) -> None:
    """Replay a recorded log twice, as configured and under a change, and print what the
    change would have done: incidents only in the baseline, only under the change, and
    changed, with totals (incidents, pages, median time to detect). ADR 0023.

    \b
    tocsin what-if DIR --set detector.min_lift=4

    Exit 0 compared (whatever the difference), 1 the log cannot be read, 2 bad arguments.
    """
    if rules_file is None and not sets:
        raise click.UsageError("say what to change: --set KEY=VALUE and/or --rules FILE")
    settings = base_settings()
    before_rules = rules_for(settings, None, ())
    after_rules = rules_for(settings, rules_file, sets)
    log = _open(directory)
    before, _, _ = _run(log, settings, before_rules, jobs or default_jobs())
    after, _, _ = _run(log, settings, after_rules, jobs or default_jobs())
    left, right = rows_of(before, settings), rows_of(after, settings)
    d = diff(left, right)
    change = {"set": list(sets), "rules": None if rules_file is None else str(rules_file)}
    result = {"log": _log_info(log), "change": change,
              "rules": {"baseline": _rules_info(before_rules),
                        "change": _rules_info(after_rules)},
              **diff_json(d, left, right)}
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode())
        return
    print_diff(Console(), result)


def print_diff(console: Console, result: Mapping[str, Any]) -> None:
    what = [*result["change"]["set"]]
    if result["change"]["rules"]:
        what.insert(0, f"rules {result['change']['rules']}")
    console.print(f"what if {escape(', '.join(what))}:", highlight=False)
    if result["empty"]:
        console.print(f"no difference ({result['unchanged']} incidents the same)")
    if result["only_baseline"]:
        _print_incidents(console, result["only_baseline"],
                         "only in the baseline (would not open under the change):")
    if result["only_change"]:
        _print_incidents(console, result["only_change"],
                         "only under the change (would open):")
    if result["changed"]:
        console.print("changed:")
        for c in result["changed"]:
            before, after = c["baseline"], c["change"]
            lines = [f"{before['id']}  {before['family']} ({before['env']})"]
            if after["id"] != before["id"]:
                lines.append(f"    id: {before['id']} -> {after['id']}")
            for f in c["fields"]:
                a, b = before[f], after[f]
                if f.endswith("_ms"):
                    a, b = _iso(a), _iso(b)
                lines.append(f"    {f}: {a} -> {b}")
            for line in lines:
                console.print(escape(line), highlight=False, soft_wrap=True)
    tb, tc = result["totals"]["baseline"], result["totals"]["change"]
    table = Table(title="totals", title_justify="left")
    for name in ("", "baseline", "change"):
        table.add_column(name)
    table.add_row("incidents", str(tb["incidents"]), str(tc["incidents"]))
    table.add_row("pages", str(tb["pages"]), str(tc["pages"]))
    table.add_row("median time to detect", _secs(tb["median_time_to_detect_ms"]),
                  _secs(tc["median_time_to_detect_ms"]))
    table.add_row("unchanged incidents", str(result["unchanged"]), "")
    console.print(table)
