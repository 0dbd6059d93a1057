"""(c) The quixstreams peer, in its own virtualenv, over the same pre-produced topic.

The venv lives under ``~/.cache/tocsin-bench/quix-venv`` (``$XDG_CACHE_HOME`` honoured)
and is created with ``python -m venv`` + ``pip install quixstreams`` on first use. The
app (written into a temp dir) re-keys the events by family (``group_by``), counts them in
30 s tumbling windows on event time (RocksDB state), and stops itself once the N-th
event went through the window; it prints its own timing as one JSON line. Any failure
to install or run makes (c) "skipped" with the reason, never a failed benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from .workload import EVENTS_TOPIC

QUIX_SCRIPT = r'''
"""quixstreams peer of Tocsin's benchmark: windowed count per (service, step, error_code)."""
import json
import sys
import time

from quixstreams import Application

broker, topic_name, events, group, state_dir, timeout_s = sys.argv[1:7]
events, timeout_s = int(events), float(timeout_s)

app = Application(
    broker_address=broker, consumer_group=group, auto_offset_reset="earliest",
    state_dir=state_dir, loglevel="WARNING", broker_availability_timeout=timeout_s,
    consumer_extra_config={
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50,
    },
)
topic = app.topic(
    topic_name, value_deserializer="json",
    timestamp_extractor=lambda value, headers, ts, ts_type: value["event_time_ms"],
)
clock = {"first": 0.0, "last": 0.0, "n": 0}


def count(_value):
    if clock["n"] == 0:
        clock["first"] = time.perf_counter()
    clock["n"] += 1
    if clock["n"] >= events:
        clock["last"] = time.perf_counter()
        app.stop()


def family(value):
    return f'{value["service"]}|{value["step"]}|{value.get("error_code") or ""}'


sdf = app.dataframe(topic)
sdf = sdf.group_by(family, name="family")
sdf = sdf.tumbling_window(duration_ms=30_000).count().current()
sdf = sdf.update(count)
started = time.perf_counter()
app.run(timeout=timeout_s)
n, first, last = clock["n"], clock["first"], clock["last"]
seconds = (last - first) if n >= events else 0.0
print("QUIX_RESULT " + json.dumps({
    "events": n, "seconds": seconds, "complete": n >= events,
    "events_per_s": n / seconds if seconds > 0 else None,
    "startup_s": (first - started) if n else None,
}), flush=True)
'''


@dataclass(frozen=True)
class QuixResult:
    events_per_s: float | None
    events: int
    seconds: float
    version: str | None
    skipped: str | None = None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tocsin-bench"


def venv_python() -> Path:
    return cache_dir() / "quix-venv" / "bin" / "python"


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run to completion; on timeout (or interrupt) the child is killed."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                          stdin=subprocess.DEVNULL, env=env)


def _gist(text: str) -> str:
    """The last error line of a tool's output (or its last line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:300]


def quix_version(python: Path) -> str | None:
    probe = _run([str(python), "-c", "import quixstreams; print(quixstreams.__version__)"], 60)
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_venv(log: list[str]) -> tuple[Path, str]:
    """The venv's python and quixstreams' version; raises RuntimeError with the reason."""
    python = venv_python()
    if python.exists():
        version = quix_version(python)
        if version:
            return python, version
    venv = python.parent.parent
    log.append(f"creating {venv} and installing quixstreams (first run only)")
    made = _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120)
    if made.returncode != 0:
        raise RuntimeError(f"python -m venv failed: {_gist(made.stderr)}")
    pip = _run([str(python), "-m", "pip", "install", "-q", "--retries", "2", "--timeout", "30",
                "quixstreams"], 600)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install quixstreams failed: {_gist(pip.stderr)}")
    version = quix_version(python)
    if version is None:
        raise RuntimeError("quixstreams installed but does not import")
    return python, version


def _parse(stdout: str) -> dict[str, object] | None:
    for line in stdout.splitlines():
        if line.startswith("QUIX_RESULT "):
            value: dict[str, object] = json.loads(line.removeprefix("QUIX_RESULT "))
            return value
    return None


def _skip(reason: str, version: str | None = None) -> QuixResult:
    return QuixResult(None, 0, 0.0, version, skipped=reason)


def run_quix(bootstrap: str, events: int, workdir: Path, log: list[str],
             idle_timeout_s: float = 30.0) -> QuixResult:
    """Run the quixstreams app over the events topic; skipped (with why) on any failure.

    The app stops itself after ``idle_timeout_s`` without a message; the process is
    killed past a hard limit that grows with the workload (at least 2 minutes)."""
    try:
        python, version = ensure_venv(log)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return _skip(f"no quixstreams venv: {exc}")
    script = workdir / "quix_count.py"
    script.write_text(QUIX_SCRIPT)
    group = f"bench-quix-{uuid.uuid4().hex[:8]}"
    cmd = [str(python), str(script), bootstrap, EVENTS_TOPIC, str(events), group,
           str(workdir / "quix-state"), str(idle_timeout_s)]
    limit_s = max(120.0, events / 2500)
    try:
        done = _run(cmd, limit_s)
    except subprocess.TimeoutExpired:
        return _skip(f"the quixstreams app did not finish within {limit_s:.0f}s", version)
    (workdir / "quix.log").write_text(done.stdout + done.stderr)
    result = _parse(done.stdout)
    if result is None or not result.get("complete"):
        counted = result.get("events") if result else "?"
        why = (f"idle for {idle_timeout_s:.0f}s" if result is not None and done.returncode == 0
               else f"exit {done.returncode}: {_gist(done.stdout + done.stderr)}")
        return _skip(f"the quixstreams app counted {counted} of {events} events ({why}; "
                     f"see {workdir / 'quix.log'})", version)
    rate = result["events_per_s"]
    return QuixResult(float(rate) if isinstance(rate, int | float) else None,
                      int(str(result["events"])), float(str(result["seconds"])), version)
