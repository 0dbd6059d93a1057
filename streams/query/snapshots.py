"""Snapshots (ADR 0006): read-only copies of the sink's file, taken after a checkpoint
without the writer's lock, at most every ``interval_s``, only when a batch was committed
since the last one, and at least ``COPY_DUTY`` copy durations apart."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tocsin.sinks.duckdb_sink import DuckDBSink

COPY_DUTY = 10  # snapshots are at least this many copy durations apart


@dataclasses.dataclass(eq=False)
class Snapshot:
    path: str
    generation: int
    published: float  # time.monotonic()
    copy_s: float
    checkpoint_s: float  # of copy_s, the writer held for the checkpoint
    size: int
    refs: int = 0
    retired: bool = False


class Snapshots:
    """Read-only copies of the sink's file, newest first; a copy is deleted once a newer
    one exists and no query holds it. ``acquire`` runs on one thread only."""

    def __init__(self, sink: DuckDBSink, directory: Path, interval_s: float) -> None:
        self.sink = sink
        self.directory = directory
        self.interval_s = interval_s
        self.name = Path(sink.path).name  # DuckDB names the catalog after the file
        self.current: Snapshot | None = None
        self.published = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        shutil.rmtree(directory, ignore_errors=True)  # a crash's leftovers
        directory.mkdir(parents=True)

    def acquire(self) -> Snapshot:
        with self._lock:
            current = self.current
        if current is None or (current.generation != self.sink.generation
                               and self._due(current)):
            current = self._publish()
        with self._lock:
            current.refs += 1
        return current

    def _due(self, current: Snapshot) -> bool:
        gap = max(self.interval_s, COPY_DUTY * current.copy_s)
        return time.monotonic() - current.published >= gap

    def _publish(self) -> Snapshot:
        folder = self.directory / f"{next(self._ids):08d}"
        folder.mkdir()
        final, tmp = folder / self.name, folder / f"{self.name}.tmp"
        started = time.monotonic()
        try:
            generation = self.sink.copy_checkpoint(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        now = time.monotonic()
        snap = Snapshot(str(final), generation, now, now - started, self.sink.checkpoint_s,
                        final.stat().st_size)
        with self._lock:
            old, self.current = self.current, snap
            self.published += 1
            if old is not None:
                old.retired = True
                if old.refs == 0:
                    _remove(old)
        return snap

    def release(self, snap: Snapshot) -> None:
        with self._lock:
            snap.refs -= 1
            if snap.refs == 0 and snap.retired:
                _remove(snap)

    def close(self) -> None:
        with self._lock:
            self.current = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove(snap: Snapshot) -> None:
    shutil.rmtree(Path(snap.path).parent, ignore_errors=True)
