"""Errors rate-limited in the log (ADR 0014): during a broker outage every client retries
every few milliseconds, and a log that repeats one line ten thousand times hides the one
line that matters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    """Lets a message (by logger and format string) through at most once every
    ``interval_s`` seconds; the next one that passes says how many were held back."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} similar messages held back]"
        return True


def install(interval_s: float = 10.0) -> RepeatFilter:
    """On every handler of the root logger (what the worker's logging set up)."""
    limit = RepeatFilter(interval_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit
