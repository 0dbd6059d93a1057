"""(i) ``tocsin replay`` against the live worker (issue 13).

Once (b) stopped, the workload's events topic is exported with the library
(:func:`tocsin.clients.export.export_topics`, then the manifest as ``tocsin export``
writes it) into ``<workdir>/export``; the topic then holds the workload, the latency
phase's live spikes and, unless ``--no-intake``, (e)'s spiked family: what (b)'s worker
read. ``python -P -m tocsin replay DIR --json`` then runs as a newcomer would, in a
subprocess, first with its default ``--jobs`` (the CPUs: detection's partitions spread over
that many processes), then with ``--jobs 1``. Its ``events_per_second`` is events replayed
÷ the replay's own seconds (the process start and the log's opening excluded); the wall
time of the whole command is kept too. Its incidents are compared with the ones (b)'s
worker projected into its DuckDB (families, as ``service:step:CODE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tocsin.clients.export import export_topics
from tocsin.clients.tlog import build_manifest, write_manifest
from tocsin.streams.kafka.io import quiet_kafka_logs
from tocsin.streams.worker.settings import Topics
from tocsin.testing import topic_env_var

from .workload import EVENTS_TOPIC, Workload

TARGET_REPLAY_VS_LIVE = 2.0  # replay events/s (default --jobs) / (b)'s worker's


class ReplayError(RuntimeError):
    """``tocsin replay`` failed, timed out, or printed no JSON."""


@dataclass(frozen=True)
class ExportRun:
    """What the export wrote."""

    records: int
    files: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class ReplayResult:
    """One ``tocsin replay --json`` run."""

    jobs: int
    events: int
    seconds: float  # the replay's own (``seconds`` of its JSON)
    events_per_s: float  # its ``events_per_second``
    wall_s: float  # the whole command, interpreter start included
    families: tuple[str, ...]  # of its incidents, sorted (one per incident)
    dead_letters: int | None


@dataclass(frozen=True)
class ReplayRun:
    """(i): the export, the replay with the default jobs and with one, and what (b)'s
    worker held; None where a part failed (``errors`` says why)."""

    export: ExportRun | None = None
    replay: ReplayResult | None = None
    replay_1: ReplayResult | None = None
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None


def export_events(bootstrap: str, out: Path, topic: str = EVENTS_TOPIC) -> ExportRun:
    """``tocsin export --topics <topic>``, through the library: the files, then the
    manifest."""
    with quiet_kafka_logs():
        result = asyncio.run(export_topics(bootstrap, out, [topic], explicit=True))
    write_manifest(out, build_manifest(
        broker=bootstrap, files=result.files,
        selection={"topics": [topic], "topics_given": True, "from": None, "from_ms": None,
                   "to": None, "to_ms": None},
        skipped=result.skipped))
    return ExportRun(records=sum(f.count for f in result.files), files=len(result.files),
                     bytes=sum(f.bytes for f in result.files), seconds=result.seconds)


def replay_env(topic: str = EVENTS_TOPIC) -> dict[str, str]:
    """The bench's environment, with the events topic named when the workload's is not
    the default (the replay reads the export's ``<topic>/`` files by that name)."""
    env = dict(os.environ)
    if topic != Topics().events:
        env[topic_env_var("events")] = topic
    return env


def run_replay(directory: Path, jobs: int | None, timeout_s: float,
               topic: str = EVENTS_TOPIC) -> ReplayResult:
    """``python -P -m tocsin replay DIR --json [--jobs N]`` in a process group of its own
    (its worker processes are killed with it on a timeout or an interrupt)."""
    cmd = [sys.executable, "-P", "-m", "tocsin", "replay", str(directory), "--json"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=replay_env(topic),
                            cwd=directory.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise ReplayError(f"exit code {proc.returncode}: {' | '.join(tail)}")
    try:
        body: dict[str, Any] = orjson.loads(out)
    except orjson.JSONDecodeError as exc:
        raise ReplayError(f"no JSON on stdout ({len(out)} bytes): {exc}") from exc
    counts = body.get("counts") or {}
    return ReplayResult(
        jobs=int(body["jobs"]), events=int(counts["events"]),
        seconds=float(body["seconds"]), events_per_s=float(body["events_per_second"]),
        wall_s=wall, families=tuple(sorted(str(r["family"]) for r in body["incidents"])),
        dead_letters=counts.get("dead_letters"))


def measure_replay(bootstrap: str, workdir: Path, workload: Workload,
                   say: Callable[[str], None]) -> ReplayRun:
    """Export, then replay with the default jobs and with one. A failed replay leaves
    the other's figures (its reason in ``errors``); a failed export, none."""
    out = workdir / "export"
    say(f"(i) exporting {EVENTS_TOPIC} with tocsin.clients.export into {out}")
    export = export_events(bootstrap, out)
    say(f"(i) export: {export.records:,} events in {export.seconds:.2f} s, "
        f"{export.bytes / 1e6:.1f} MB in {export.files} files; tocsin replay --json")
    timeout_s = max(300.0, workload.events / 1000)
    results: dict[str, ReplayResult] = {}
    errors: dict[str, str] = {}
    for label, jobs in (("default", None), ("1", 1)):
        try:
            r = run_replay(out, jobs, timeout_s)
        except Exception as exc:  # noqa: BLE001 - keep the other run's figures
            errors[f"replay_jobs_{label}"] = f"{type(exc).__name__}: {exc}"
            say(f"(i) replay --jobs {label} failed: {errors[f'replay_jobs_{label}']}")
            continue
        results[label] = r
        say(f"(i) replay --jobs {r.jobs}: {r.events:,} events in {r.seconds:.2f} s, "
            f"{r.events_per_s:,.0f} events/s ({r.wall_s:.1f} s wall), "
            f"{len(r.families)} incidents")
    return ReplayRun(export, results.get("default"), results.get("1"), errors)


def compare_families(replayed: Sequence[str] | None, live: Sequence[str] | None
                     ) -> dict[str, Any]:
    """Incidents by family: counts, whether they match, and the families only one side
    opened (None where a side is unknown)."""
    if replayed is None or live is None:
        return {"match": None, "only_replay": None, "only_live": None}
    r, lv = sorted(replayed), sorted(live)
    return {"match": r == lv,
            "only_replay": sorted(set(r) - set(lv)),
            "only_live": sorted(set(lv) - set(r))}
