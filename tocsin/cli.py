"""``tocsin``: the command line (click for parsing and usage errors, rich for display)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from tocsin.streams.worker.settings import Settings

err = Console(stderr=True)


def _settings(**overrides: Any) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except Exception as exc:  # pydantic.ValidationError: a usage problem, not a crash
        raise click.UsageError(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tocsin")
def main() -> None:
    """Tocsin: incident triage from wide events on Kafka."""


# ---------------------------------------------------------------------- run


@main.command()
@click.option("--broker", metavar="HOST:PORT", help="Kafka bootstrap; default: start Tansu.")
@click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file of the projection.")
@click.option("--http-port", type=click.IntRange(0, 65535), help="Query/health port (0=off).")
@click.option("--partitions", type=click.IntRange(1, 1024), help="Partitions of new topics.")
@click.option("--role", type=click.Choice(["all", "detect", "project"]), help="What to run.")
@click.option("--incident-encoding", type=click.Choice(["avro", "json"]))
@click.option("--embedded-port", type=click.IntRange(1, 65535),
              help="Port of the embedded broker (default: a free one).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--http-bind", metavar="ADDRESS", help="Address the HTTP port binds.")
@click.option("--insecure", is_flag=True, default=None,
              help="Allow a non-loopback --http-bind without API and intake tokens.")
@click.option("--broker-storage", metavar="URL",
              help="Storage engine of the embedded broker (default memory://, lost when it "
                   "stops; postgres://user:pass@host/db persists).")
def run(broker: str | None, db: str | None, http_port: int | None, partitions: int | None,
        role: str | None, incident_encoding: str | None, embedded_port: int | None,
        log_level: str, http_bind: str | None, insecure: bool | None,
        broker_storage: str | None) -> None:
    """Run the worker until SIGINT/SIGTERM."""
    from tocsin.streams.worker.runner import check_exposure, run_worker

    settings = _settings(broker=broker, db=db, http_port=http_port, partitions=partitions,
                         role=role, incident_encoding=incident_encoding, http_bind=http_bind,
                         insecure=insecure, broker_storage=broker_storage)
    if broker_storage and broker:
        raise click.UsageError("--broker-storage is for the embedded broker; --broker names "
                               "another one")
    problem = check_exposure(settings)
    if problem:
        raise click.UsageError(problem)
    sys.exit(run_worker(settings, embedded_port=embedded_port, log_level=log_level))


# ---------------------------------------------------------------------- demo


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--db", type=click.Path(dir_okay=False),
              help="Keep the demo's DuckDB file here (default: a temporary folder).")
@click.option("--traces", is_flag=True,
              help="Send the failure only as OTLP spans (OpenTelemetry SDK) on otlp_spans.")
@click.option("--export", "export", metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Afterwards, write the input topics to DIR as `tocsin export` does "
                   "(must be new or empty), for `tocsin replay DIR`.")
def demo(as_json: bool, db: str | None, traces: bool, export: Path | None) -> None:
    """Start a broker and a worker, send traffic with a spike, show the incident."""
    from tocsin.clients.demo import DemoError, run_demo

    if export is not None and export.is_dir() and any(export.iterdir()):
        raise click.BadParameter(f"{export} is not empty", param_hint="--export")
    try:
        result = run_demo(db=db, console=err, traces=traces, export=export)
    except DemoError as exc:
        err.print(f"[red]demo failed:[/] {exc}")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    table = Table(title="incident opened", show_header=False)
    keys = ["incident_id", "family", "env", "status", "onset", "window_count", "baseline",
            "lift", "detect_seconds", "cause", "cause_rule", "report_hash"]
    if traces:
        keys[9:9] = ["origin", "path", "affected_requests", "incidents"]
    for key in keys:
        table.add_row(key, str(result.get(key)))
    Console().print(table)


# ---------------------------------------------------------------------- produce


@main.command()
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--topic", required=True, help="Topic to publish to.")
@click.option("--broker", metavar="HOST:PORT", help="Kafka bootstrap.",
              envvar="TOCSIN_BROKER", required=True)
@click.option("--encoding", type=click.Choice(["json", "avro"]), default="json",
              show_default=True, help="Wire encoding for wide events.")
@click.option("--schema", type=click.Choice(["wide_event.v1", "json"]), default="wide_event.v1",
              show_default=True, help="Contract each record is checked against.")
@click.option("--mapping", "mapping_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="TOML field mapping: records in your own shape onto wide_event.v1.")
def produce(file: str, topic: str, broker: str, encoding: str, schema: str,
            mapping_file: str | None) -> None:
    """Publish NDJSON (plain or gzip, - for stdin) or a JSON array, validating each record.

    Wide events are checked against wide_event.v1 and keyed by service; `--schema json`
    only checks that each record is a JSON object. `--mapping FILE` maps each record onto
    wide_event.v1 first (docs/adr/0013-event-field-mapping.md).
    """
    from tocsin.clients.produce import ProduceReport, prepare, publish, read_records
    from tocsin.processors.mapping import MappingError, load_mapping

    if file != "-" and not Path(file).exists():
        raise click.BadParameter(f"no such file: {file}", param_hint="FILE")
    wide = schema == "wide_event.v1"
    mapping = None
    if mapping_file is not None:
        if not wide:
            raise click.BadParameter("maps onto wide_event.v1; not with --schema json",
                                     param_hint="--mapping")
        try:
            mapping = load_mapping(mapping_file)
        except MappingError as exc:
            raise click.BadParameter(str(exc), param_hint="--mapping") from exc
    report = ProduceReport()
    items = prepare(read_records(file), wide, encoding, report,  # type: ignore[arg-type]
                    mapping)
    try:
        asyncio.run(publish(broker, topic, items, report))
    except Exception as exc:  # noqa: BLE001 - a broker problem is a clear message
        err.print(f"[red]error:[/] could not publish to {broker}: {exc}")
        sys.exit(2)
    for r in report.rejected:
        click.echo(f"line {r.line}: rejected: {r.reason}", err=True)
    click.echo(f"sent {report.sent}, rejected {len(report.rejected)}", err=True)
    sys.exit(1 if report.rejected else 0)


# ---------------------------------------------------------------------- query


def _run_query(db: str, sql: str) -> tuple[list[str], list[list[Any]]]:
    from tocsin.clients.query import QueryError, run_query

    try:
        return run_query(db, sql)
    except QueryError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)


def _print_rows(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(orjson.dumps([dict(zip(columns, r, strict=True)) for r in rows],
                                default=str).decode())
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
    else:
        table = Table(*columns)
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        Console().print(table)


FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]),
                      default="table", show_default=True)
DB = click.option("--db", type=click.Path(dir_okay=False), default=None,
                  help="DuckDB file (default: the worker's).")


@main.command()
@click.argument("sql")
@DB
@FORMAT
def query(sql: str, db: str | None, fmt: str) -> None:
    """Run one read-only SQL query (through the running worker when there is one)."""
    columns, rows = _run_query(db or _settings().db, sql)
    _print_rows(columns, rows, fmt)


@main.command()
@DB
@FORMAT
@click.option("--status", type=click.Choice(["active", "recovering", "resolved"]))
def incidents(db: str | None, fmt: str, status: str | None) -> None:
    """List incidents, newest first."""
    where = f"WHERE status = '{status}'" if status else ""
    sql = ("SELECT incident_id, family, env, status, onset, opened_window_count AS count, "
           "opened_baseline AS baseline, opened_lift AS lift, peak_count, error_count "
           f"FROM incidents {where} ORDER BY onset_ms DESC, incident_id")
    columns, rows = _run_query(db or _settings().db, sql)
    _print_rows(columns, rows, fmt)


@main.command()
@click.argument("incident_id")
@DB
@click.option("--format", "fmt",
              type=click.Choice(["text", "md", "json", "slack", "pagerduty"]),
              default="text", show_default=True,
              help="text: for the terminal (headings, an evidence table, the timeline as a "
                   "chart); md, slack, pagerduty: the notification renderings; json: the "
                   "canonical report.")
def report(incident_id: str, db: str | None, fmt: str) -> None:
    """Print the latest triage report of an incident (same bytes as the API and topic)."""
    from tocsin.clients.query import QueryError, fetch_report
    from tocsin.streams.web.reports import render_report

    try:
        # text is rendered here from the canonical report (a pure function of its bytes,
        # so the same text as the API's), which any running worker serves.
        data = fetch_report(db or _settings().db, incident_id, "json" if fmt == "text" else fmt)
    except QueryError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    if fmt == "text":
        data = render_report(data.decode(), fmt)[0]
    sys.stdout.buffer.write(data)  # exactly the stored or rendered bytes, nothing added


CLI_ACTIONS = ("acknowledge", "investigate", "mitigate", "resolve", "reopen", "note",
               "hypothesis")


@main.command()
@click.argument("incident_id")
@click.argument("action", required=False, type=click.Choice(CLI_ACTIONS))
@click.argument("text", required=False)
@click.option("--by", metavar="NAME", help="Who acts (required with an action).")
@click.option("--note", metavar="TEXT", help="A note with the action.")
@click.option("--status", "hypothesis_status",
              type=click.Choice(["proposed", "confirmed", "rejected"]),
              help="A hypothesis' status (with hypothesis TITLE).")
@click.option("--worker", metavar="URL", help="The worker's HTTP base URL (default: the "
              "running worker that holds --db).")
@DB
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.option("--plot", is_flag=True, help="Plot the timeline of the incident's latest "
              "report in the terminal (errors, requests, p50/p95 over time).")
def incident(incident_id: str, action: str | None, text: str | None, by: str | None,
             note: str | None, hypothesis_status: str | None, worker: str | None,
             db: str | None, as_json: bool, plot: bool) -> None:
    """Show an incident, or act on it (ADR 0016), or plot its timeline (ADR 0019).

    \b
    tocsin incident ID
    tocsin incident ID --plot
    tocsin incident ID acknowledge|investigate|mitigate|resolve|reopen --by NAME [--note TEXT]
    tocsin incident ID note TEXT --by NAME
    tocsin incident ID hypothesis TITLE --status proposed|confirmed|rejected --by NAME
    """
    from tocsin.clients.incident import act, describe, latest_report, show, worker_url
    from tocsin.clients.query import QueryError

    if plot and action is not None:
        raise click.UsageError(f"--plot shows the incident's timeline; it takes no action "
                               f"(run `tocsin incident {incident_id} {action} ...` on its own)")
    if plot and as_json:
        raise click.UsageError("--plot draws the timeline; --json prints the incident: "
                               "choose one")
    if action is None:
        if by or note or text or hypothesis_status:
            raise click.UsageError("--by, --note and --status go with an action")
    elif not by:
        raise click.UsageError(f"{action} needs --by NAME")
    elif action == "note" and (not text or note):
        raise click.UsageError("note takes its TEXT as an argument: note TEXT --by NAME")
    elif action == "hypothesis" and (not text or not hypothesis_status):
        raise click.UsageError("hypothesis needs a TITLE and --status")
    elif action not in ("note", "hypothesis") and (text or hypothesis_status):
        raise click.UsageError(f"{action} takes no TEXT or --status; a note is --note TEXT")
    try:
        base = worker_url(db or _settings().db, worker)
        if plot:
            status, body = latest_report(base, incident_id)
        elif action is None:
            status, body = show(base, incident_id)
        else:
            request: dict[str, Any] = {"action": action, "by": by}
            if action == "note":
                request.update(action="annotate", note=text)
            elif action == "hypothesis":
                request.update(title=text, status=hypothesis_status)
            if note:
                request["note"] = note
            status, body = act(base, incident_id, request)
    except QueryError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    if status >= 400:
        rule = f" (rule {body['rule']})" if body.get("rule") else ""
        click.echo(f"error: {body.get('error')}{rule}", err=True)
        sys.exit(1)
    if plot:
        import shutil

        from tocsin.clients.plot import plot_timeline

        timeline = body.get("timeline")
        if not isinstance(timeline, dict):
            click.echo(f"error: the latest report of {incident_id} has no timeline (reports "
                       "written before timelines were kept have none); nothing to plot",
                       err=True)
            sys.exit(1)
        width = min(max(shutil.get_terminal_size().columns, 60), 160)
        click.echo(plot_timeline(timeline, width=width), nl=False)
    elif as_json:
        click.echo(json.dumps(body, sort_keys=True))
    elif action is None:
        click.echo("\n".join(describe(body)))
    elif status == 202:
        click.echo(f"{incident_id}: {action} written as {body['action_id']}, not decided yet")
    else:
        click.echo(f"{incident_id}: {body['kind']} by {body['by']} "
                   f"(status {body['status']}, phase {body['phase']}, seq {body['seq']})")


# ---------------------------------------------------------------------- broker


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    import signal

    from tocsin.streams.kafka.broker import EmbeddedBroker

    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    with EmbeddedBroker(port) as b:
        click.echo(b.bootstrap)
        err.print(f"embedded broker on {b.bootstrap} (memory only); Ctrl-C stops it")
        signal.sigwait(stop)


def entry() -> None:  # pragma: no cover - console script shim
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    main()


# Commands that live with their clients
from tocsin.clients.doctor import doctor_command  # noqa: E402
from tocsin.clients.export import export_command  # noqa: E402
from tocsin.clients.gate import gate_command  # noqa: E402
from tocsin.clients.mcp_server import mcp_command  # noqa: E402
from tocsin.clients.replay_cli import replay_command, what_if_command  # noqa: E402

main.add_command(doctor_command)
main.add_command(export_command)
main.add_command(gate_command)
main.add_command(mcp_command)
main.add_command(replay_command)
main.add_command(what_if_command)
