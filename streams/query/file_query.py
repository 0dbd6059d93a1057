"""One query, synchronously, on a database file no worker holds (``tocsin query``)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tocsin.streams.query.limits import GRACE_S, QueryLimits
from tocsin.streams.query.protocol import (
    HEAD,
    QueryAnswer,
    child_command,
    frame,
    request_message,
    split_answer,
    to_answer,
)


def run_file_query(db: str | Path, sql: str, params: Sequence[Any] = (),
                   limits: QueryLimits | None = None) -> QueryAnswer:
    """One query on a database file no worker holds (``tocsin query``'s fallback): the
    same child, limits and check as the worker's query surface, the file read-only."""
    limits = limits or QueryLimits(nice=0, idle=False)
    proc = subprocess.Popen(child_command(limits), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(frame(orjson.dumps(request_message(str(db), sql, params, limits))))
        proc.stdin.flush()
        # the child interrupts the query itself at timeout_ms; this is the backstop
        deadline = time.monotonic() + limits.timeout_ms / 1000 + GRACE_S + 10
        fd, data, need = proc.stdout.fileno(), b"", 4
        while len(data) < need:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return QueryAnswer.fail(408, f"query ran over {limits.timeout_ms} ms and "
                                             "its process was stopped")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return QueryAnswer.fail(500, f"the query's process exited ({proc.poll()})")
            data += chunk
            if need == 4 and len(data) >= 4:
                need = 4 + HEAD.unpack_from(data)[0]
        header, body = split_answer(data[4:need])
        return to_answer(header, body, "rows")
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: the child exits (interrupting a query it still runs)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
