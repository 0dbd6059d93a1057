"""Writes the recorded log of README's what-if example: `python examples/noisy_search.py
examples/noisy-search` (the directory must be new or empty; the same bytes every time).

50 minutes of three services, one request a second each, as `tocsin export`
writes a log (ADR 0021): JSON wide events on `tocsin.events`, six partitions keyed by
service. `search` fails every 40 s throughout (about 15 errors a 10-minute window; its
first five open an incident, with no baseline yet), and from minute 40 fails once more
every 5 s for 3 minutes: a lift of 3 over its baseline, a spike to the default MIN_LIFT
(3) and not to 4. `checkout`'s payment.charge, clean before, fails 90 times from minute 44.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from tocsin.clients.tlog import LogRecord, write_export

T0_MS = 1_793_610_000_000  # 2026-11-02T08:20:00Z
PARTITIONS = 6


def event(t_ms: int, service: str, step: str, error: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"event_time_ms": t_ms, "service": service, "step": step,
                         "env": "prod"}
    if error:
        e.update(status="error", error_code=error)
    return e


def noisy_log() -> list[dict[str, Any]]:
    log = [event(T0_MS + s * 1000 + i, svc, "GET /")
           for s in range(3000) for i, svc in enumerate(("checkout", "cart", "search"))]
    log += [event(T0_MS + s * 1000 + 7, "search", "GET /", "SRCH_500")
            for s in range(0, 3000, 40)]
    log += [event(T0_MS + s * 1000 + 9, "search", "GET /", "SRCH_500")
            for s in range(2400, 2580, 5)]
    log += [event(T0_MS + (2640 + k) * 1000 + 5, "checkout", "payment.charge", "PMT_502")
            for k in range(90)]
    log.sort(key=lambda e: (e["event_time_ms"], e["service"]))
    return log


def records(events: list[dict[str, Any]], extra: dict[int, list[bytes]] | None = None
            ) -> Iterator[tuple[str, int, LogRecord]]:
    """The events as a producer keyed by service partitions them; ``extra`` values
    appended to a partition (for tests: garbage)."""
    offsets = [0] * PARTITIONS
    for e in events:
        key = e["service"].encode()
        p = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        yield "tocsin.events", p, LogRecord(offsets[p], e["event_time_ms"], key,
                                            orjson.dumps(e))
        offsets[p] += 1
    for p, values in (extra or {}).items():
        for value in values:
            yield "tocsin.events", p, LogRecord(offsets[p], T0_MS, None, value)
            offsets[p] += 1


def write(out: Path) -> dict[str, Any]:
    return write_export(out, records(noisy_log()), broker="examples/noisy_search.py")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/noisy_search.py DIR")
    target = Path(sys.argv[1])
    if target.exists() and any(target.iterdir()):
        sys.exit(f"{target} is not empty")
    manifest = write(target)
    print(f"{manifest['records']} records in {target}")
