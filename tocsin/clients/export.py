"""``tocsin export``: the input topics written to files, as evidence (ADR 0021).

One gzip'd, length-prefixed file per topic partition and a ``manifest.json`` with each
file's sha256 and the offsets covered: the format is :mod:`tocsin.clients.tlog`, which
``tocsin replay`` reads with. This module reads the broker and writes them.

Reading from the broker: a consumer with partitions assigned by hand (no group), each
partition read from its log start to its end as it was when the export began (the high
watermark of a fetch: Tansu answers ListOffsets with the base offset of the last batch,
see :mod:`tocsin.streams.kafka.io`), so a live topic still gives a finite export.
``--from``/``--to`` select by record timestamp while every offset is read (Tansu's
offsets-for-times answers 0, and timestamps need not follow offsets anyway).

Exit codes: 0 written, 1 the export failed (a topic asked for is missing, the broker
cannot be read), 2 bad arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from tocsin.clients.tlog import (
    COMPRESS_LEVEL,
    MANIFEST,
    Compressor,
    FileSummary,
    LogWriter,
    build_manifest,
    file_path,
    write_manifest,
)

err = Console(stderr=True, soft_wrap=True)


# ---------------------------------------------------------------------- arguments

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_EPOCH_MS = re.compile(r"-?[0-9]+")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 time (with its offset or Z) or of an integer of
    epoch milliseconds. A time between two milliseconds rounds up: ``t >= --from`` and
    ``t < --to`` hold for whole-millisecond timestamps exactly as for the exact time."""
    s = text.strip()
    if _EPOCH_MS.fullmatch(s):
        return int(s)
    try:
        when = dt.datetime.fromisoformat(s.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-11-02T09:00:00Z) nor epoch "
                         "milliseconds") from None
    if when.tzinfo is None or ("T" not in s.upper() and " " not in s):
        raise ValueError(f"{text!r}: give a date, a time and an offset "
                         "(2026-11-02T09:00:00Z or +01:00)")
    us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    return -(-us // 1000)


def _ms_text(ms: int) -> str:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return value, parse_time(value)
    except (ValueError, OverflowError) as exc:
        raise click.BadParameter(str(exc)) from None


def _topics_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                   ) -> list[str] | None:
    if not value:
        return None
    names: list[str] = []
    for item in value:
        for name in item.split(","):
            name = name.strip()
            if not name:
                continue
            if not _TOPIC.fullmatch(name) or name in (".", ".."):
                raise click.BadParameter(f"{name!r} is not a Kafka topic name "
                                         "(letters, digits, . _ -, at most 249)")
            if name not in names:
                names.append(name)
    if not names:
        raise click.BadParameter("no topic named")
    return names


def _broker_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{item!r}: give HOST:PORT")
    return value


def default_topics() -> list[str]:
    """The worker's input topics: events, signals, spans (``TOCSIN_TOPICS__*`` apply)."""
    from tocsin.streams.worker.settings import Settings

    topics = Settings().topics
    return list(dict.fromkeys([topics.events, topics.signals, topics.spans]))


# ---------------------------------------------------------------------- the broker


class ExportError(Exception):
    """The export could not be made (a topic missing, the broker unreadable)."""


@dataclass
class Progress:
    total: int = 0  # offsets to read
    done: int = 0
    kept: int = 0


@dataclass
class ExportResult:
    files: list[FileSummary]
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


async def _existing_topics(bootstrap: str, timeout_s: float) -> dict[str, int]:
    """Topic -> partitions, from a metadata request for every topic: naming a missing
    topic in one would make a broker that auto-creates topics (Tansu does) create it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            described = await admin.describe_topics()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    out = {}
    for t in described:
        if not t.get("error_code") and t.get("partitions"):
            out[str(t["topic"])] = len(t["partitions"])
    return out


async def _ends(bootstrap: str, tps: Sequence[Any], starts: dict[Any, int],
                timeout_s: float) -> dict[Any, int]:
    """Each partition's high watermark now: ListOffsets' end (on Tansu the base offset of
    the last batch), then one small fetch from just before it, whose answer carries the
    high watermark."""
    from aiokafka import AIOKafkaConsumer

    from tocsin.streams.kafka.io import stop_quietly

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=64 * 1024)
    await consumer.start()
    try:
        consumer.assign(list(tps))
        listed = await consumer.end_offsets(list(tps))
        for tp in tps:
            consumer.seek(tp, max(int(listed[tp]) - 1, starts[tp]))
        async with asyncio.timeout(timeout_s):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=100, max_records=1)
        return {tp: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await stop_quietly(consumer)


async def export_topics(bootstrap: str, out: Path, topics: Sequence[str], *,
                        explicit: bool, from_ms: int | None = None, to_ms: int | None = None,
                        progress: Progress | None = None, level: int = COMPRESS_LEVEL,
                        stall_s: float = 30.0) -> ExportResult:
    """Write each partition of ``topics`` to ``out``; records in [from_ms, to_ms) by
    timestamp (None: unbounded). A missing topic is an :class:`ExportError` when
    ``explicit``, else skipped (and listed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tocsin.streams.kafka.io import stop_quietly

    progress = progress or Progress()
    started = time.monotonic()
    existing = await _existing_topics(bootstrap, 20.0)
    missing = [t for t in topics if t not in existing]
    if missing and explicit:
        raise ExportError(f"no such topic on {bootstrap}: {', '.join(missing)}")
    skipped = [{"topic": t, "reason": "no such topic on the broker (a default topic, not "
                "asked for)"} for t in missing]
    present = [t for t in topics if t in existing]
    tps = [TopicPartition(t, p) for t in present for p in range(existing[t])]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=100, fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024)
    writers: dict[Any, LogWriter] = {}
    files: list[FileSummary] = []
    compressor = Compressor()
    try:
        await consumer.start()
        if tps:
            consumer.assign(tps)
            starts = {tp: int(o) for tp, o in (await consumer.beginning_offsets(tps)).items()}
            ends = await _ends(bootstrap, tps, starts, 20.0)
        else:
            starts, ends = {}, {}
        out.mkdir(parents=True, exist_ok=True)
        for tp in tps:
            (out / tp.topic).mkdir(exist_ok=True)
            w = LogWriter(out / file_path(tp.topic, tp.partition), tp.topic, tp.partition,
                          relative_to=out, level=level, compressor=compressor)
            w.summary.start_offset, w.summary.end_offset = starts[tp], ends[tp]
            writers[tp] = w
        progress.total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        pending = set()
        for tp in tps:
            if ends[tp] > starts[tp]:
                consumer.seek(tp, starts[tp])
                pending.add(tp)
            else:
                files.append(writers.pop(tp).close())
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        lo = from_ms if from_ms is not None else -(2**63)
        hi = to_ms if to_ms is not None else 2**63 - 1
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=100_000)
            for tp, recs in batch.items():
                if tp not in pending:
                    continue
                w, end = writers[tp], ends[tp]
                for rec in recs:
                    if rec.offset >= end:
                        break
                    if lo <= rec.timestamp < hi:
                        w.write(rec.offset, rec.timestamp, rec.key, rec.value, rec.headers)
                        progress.kept += 1
            moved = bool(batch)
            left = 0
            for tp in list(pending):
                pos = await consumer.position(tp)
                if pos >= ends[tp]:
                    pending.discard(tp)
                    files.append(writers.pop(tp).close())
                    consumer.pause(tp)
                    moved = True
                else:
                    left += ends[tp] - pos
            progress.done = progress.total - left
            if moved:
                last_progress = loop.time()
            elif loop.time() - last_progress > stall_s:
                where = [f"{tp.topic}/{tp.partition} at {await consumer.position(tp)} of "
                         f"{ends[tp]}" for tp in sorted(pending)]
                raise ExportError(f"reading stalled for {stall_s:g}s: {', '.join(where)}")
        compressor.drain()
    finally:
        with contextlib.suppress(Exception):
            compressor.close()  # after a failure: let its jobs end before the files close
        for w in writers.values():
            w.abort()
        await stop_quietly(consumer)
    return ExportResult(files, skipped, time.monotonic() - started)


# ---------------------------------------------------------------------- the command


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise click.BadParameter(f"{out} is not empty (--force writes into it)",
                                 param_hint="--out")


@click.command(name="export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", required=True, metavar="HOST:PORT", envvar="TOCSIN_BROKER",
              callback=_broker_option, help="Kafka bootstrap.")
@click.option("--out", "out", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write (must be empty or new).")
@click.option("--topics", multiple=True, metavar="TOPIC[,TOPIC...]", callback=_topics_option,
              help="Topics to export (repeatable). Default: the worker's inputs: events, "
                   "signals, spans (TOCSIN_TOPICS__* apply); those missing are skipped.")
@click.option("--from", "from_", metavar="TIME", callback=_time_option,
              help="Records with timestamp >= TIME (RFC 3339 or epoch ms).")
@click.option("--to", "to", metavar="TIME", callback=_time_option,
              help="Records with timestamp < TIME (RFC 3339 or epoch ms).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@click.option("--created-at", metavar="TIME", callback=_time_option,
              help="The manifest's created_at (default: now); nothing hashed depends on it.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout.")
def export_command(broker: str, out: Path, topics: list[str] | None,
                   from_: tuple[str, int] | None, to: tuple[str, int] | None, force: bool,
                   created_at: tuple[str, int] | None, as_json: bool) -> None:
    """Write topics to files for replay and evidence: <DIR>/<topic>/<partition>.tlog.gz
    (every record's offset, timestamp, key, headers and value, bytes as they are) and
    DIR/manifest.json (each file's sha256 and the offsets it covers). ADR 0021.

    \b
    tocsin export --broker HOST:PORT --out DIR
    tocsin export --broker HOST:PORT --out DIR --topics tocsin.events \\
        --from 2026-11-02T09:00:00Z --to 2026-11-02T10:00:00Z

    Exit 0 written, 1 failed (a topic asked for is missing, the broker unreadable),
    2 bad arguments.
    """
    if from_ and to and from_[1] >= to[1]:
        raise click.UsageError("--from must be before --to")
    _check_out(out, force)
    explicit = topics is not None
    if topics is None:
        try:
            topics = default_topics()
        except Exception as exc:  # a bad TOCSIN_* variable is a usage problem
            raise click.UsageError(str(exc)) from exc
    if force:
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()  # a failed export must not leave an old manifest
    selection = {
        "topics": list(topics),
        "topics_given": explicit,
        "from": from_[0] if from_ else None,
        "from_ms": from_[1] if from_ else None,
        "to": to[0] if to else None,
        "to_ms": to[1] if to else None,
    }
    progress = Progress()
    try:
        from tocsin.streams.kafka.io import quiet_kafka_logs
        with quiet_kafka_logs():
            result = asyncio.run(_with_progress(
                export_topics(broker, out, topics, explicit=explicit,
                              from_ms=from_[1] if from_ else None,
                              to_ms=to[1] if to else None, progress=progress), progress))
    except ExportError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a broker problem is a message, not a trace
        why = str(exc) or type(exc).__name__
        left = (f"; {out} holds no manifest: not an export" if out.is_dir() else "")
        err.print(f"[red]error:[/] could not export from {escape(broker)}: "
                  f"{escape(why)}{escape(left)}")
        sys.exit(1)
    stamp = created_at[1] if created_at else int(time.time() * 1000)
    manifest = build_manifest(broker=broker, files=result.files, selection=selection,
                              skipped=result.skipped, created_at=_ms_text(stamp))
    data = write_manifest(out, manifest)
    for s in result.skipped:
        err.print(f"skipped {escape(s['topic'])}: {escape(s['reason'])}")
    if as_json:
        click.echo(json.dumps(manifest, sort_keys=True))
    err.print(escape(summary_line(manifest, out, progress.done, result.seconds,
                                  hashlib.sha256(data).hexdigest())))


def summary_line(manifest: dict[str, Any], out: Path, read: int, seconds: float,
                 manifest_sha256: str) -> str:
    files = manifest["files"]
    topics = len({f["topic"] for f in files})
    n, size = manifest["records"], manifest["bytes"]
    return (f"exported {n:,} record{'s' * (n != 1)} (of {read:,} offsets read) from "
            f"{len(files)} partition{'s' * (len(files) != 1)} of {topics} "
            f"topic{'s' * (topics != 1)} to {out} in {seconds:.1f}s "
            f"({read / max(seconds, 1e-3):,.0f}/s), {_size(size)}; manifest sha256 "
            f"{manifest_sha256}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"




async def _with_progress(work: Any, progress: Progress) -> ExportResult:
    """Run ``work``, showing ``progress`` on a terminal."""
    if not err.is_terminal:
        return await work  # type: ignore[no-any-return]
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             console=err, transient=True) as bar:
        task = bar.add_task("export", total=None)
        job = asyncio.ensure_future(work)
        while not job.done():
            await asyncio.wait([job], timeout=0.2)
            bar.update(task, total=progress.total or None, completed=progress.done)
        return job.result()  # type: ignore[no-any-return]


if __name__ == "__main__":  # pragma: no cover - `python -m tocsin.clients.export ...`
    export_command()
