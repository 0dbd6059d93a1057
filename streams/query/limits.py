"""The bounds of one query (ADR 0006): rows, bytes, time, memory, threads, priority."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

ADDRESS_SPACE_MARGIN = 1 << 30  # beyond memory_limit: interpreter, stacks, allocator arenas
GRACE_S = 5.0  # after the time limit, a child that has not answered is killed


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    """The bounds of one query; every field has a TOCSIN_QUERY_* setting (ADR 0006)."""

    max_rows: int = 100_000
    max_bytes: int = 64 << 20
    timeout_ms: int = 30_000
    memory_limit: str = "256MB"
    threads: int = 1
    nice: int = 19
    idle: bool = True  # SCHED_IDLE where the OS has it (Linux): only CPU nobody else wants

    def __post_init__(self) -> None:
        parse_bytes(self.memory_limit)
        if self.max_rows < 1 or self.max_bytes < 1024 or self.timeout_ms < 1:
            raise ValueError(f"query limits out of range: {self}")
        if self.threads < 1 or not 0 <= self.nice <= 19:
            raise ValueError(f"query threads >= 1 and nice 0..19: {self}")

    @property
    def address_space(self) -> int:
        return parse_bytes(self.memory_limit) + ADDRESS_SPACE_MARGIN

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> QueryLimits:
        """From Settings' ``query_*`` fields (those it has), then ``overrides``."""
        values = {f.name: getattr(settings, f"query_{f.name}")
                  for f in dataclasses.fields(cls) if hasattr(settings, f"query_{f.name}")}
        return cls(**{**values, **overrides})


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """A DuckDB-style size ('256MB', '1GiB', '300 MB'): MB = 10^6, MiB = 2^20."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text.lower())
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 256MB, 1GiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if size < 16 * 10**6:
        raise ValueError(f"memory limit {text!r} is below 16MB")
    return size
