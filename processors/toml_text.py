"""Reading TOML the project's files are written in (the rules file, ADR 0022; the event
mapping, ADR 0013) with the standard library's ``tomllib``, bounded: arrays nested
thousands deep make ``tomllib`` recurse past Python's limit, and that is an error naming
the line, not a crash."""

from __future__ import annotations

import tomllib
from typing import Any

MAX_NESTING = 100  # brackets on one line past which the RecursionError is placed there


class TooDeep(ValueError):
    """Values nested deeper than ``tomllib`` can read; ``line`` is where (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}: values nested too deep to read")
        self.line = line


def read_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``; TOMLDecodeError as it raises it, TooDeep for runaway nesting."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        line = next((n for n, row in enumerate(text.splitlines(), 1)
                     if row.count("[") > MAX_NESTING), 1)
        raise TooDeep(line) from None
