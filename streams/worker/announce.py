"""Where a running worker announces itself: ``<db>.worker.json`` beside the DuckDB file
holds its pid and HTTP port, so ``tocsin query`` and friends reach the worker that holds the
file instead of failing on DuckDB's lock."""

from __future__ import annotations

import json
import os
from pathlib import Path


def worker_file(db: str | Path) -> Path:
    return Path(f"{db}.worker.json")


def write_worker_file(db: str | Path, http_port: int, broker: str) -> Path:
    path = worker_file(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "http_port": http_port, "broker": broker}))
    tmp.replace(path)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
