"""Distinct counting in bounded memory: an exact set while small, a HyperLogLog beyond.

:class:`DistinctCounter` keeps the exact set of values up to ``exact_limit`` (1,000), then
moves them into a :class:`HyperLogLog` and counts with it from there on. The sketch is the
textbook one (Flajolet et al. 2007, with linear counting for small cardinalities) on a
fixed 64-bit hash, the first 8 bytes of BLAKE2b of the UTF-8 value, and a fixed precision
of 14 bits: 16,384 one-byte registers, a standard error of 1.04 / sqrt(16,384) ≈ 0.8%.
Nothing is random: the same values in any order give the same registers, and two sketches
merge by taking the larger register.
"""

from __future__ import annotations

import base64
import math
from hashlib import blake2b
from typing import Any

PRECISION = 14
REGISTERS = 1 << PRECISION
EXACT_LIMIT = 1_000
_ALPHA = 0.7213 / (1 + 1.079 / REGISTERS)
_REST = 64 - PRECISION


def hash64(value: str) -> int:
    return int.from_bytes(blake2b(value.encode(), digest_size=8).digest(), "big")


class HyperLogLog:
    """A fixed-precision HyperLogLog (p = 14) over :func:`hash64`."""

    __slots__ = ("registers",)

    def __init__(self, registers: bytes | None = None) -> None:
        self.registers = bytearray(registers if registers is not None else REGISTERS)
        if len(self.registers) != REGISTERS:
            raise ValueError(f"a HyperLogLog of precision {PRECISION} has {REGISTERS} "
                             "registers")

    def add(self, value: str) -> None:
        h = hash64(value)
        index = h >> _REST
        rest = h & ((1 << _REST) - 1)
        rank = _REST - rest.bit_length() + 1  # leading zeros of the remaining bits, + 1
        if rank > self.registers[index]:
            self.registers[index] = rank

    def merge(self, other: HyperLogLog) -> None:
        self.registers = bytearray(map(max, self.registers, other.registers))

    def estimate(self) -> int:
        regs = self.registers
        zeros = regs.count(0)
        raw = _ALPHA * REGISTERS * REGISTERS / sum(2.0 ** -r for r in regs)
        if raw <= 2.5 * REGISTERS and zeros:
            return round(REGISTERS * math.log(REGISTERS / zeros))  # linear counting
        return round(raw)  # 64-bit hashes: no large-range correction needed


class DistinctCounter:
    """How many distinct strings were added: exact up to ``exact_limit``, estimated by a
    :class:`HyperLogLog` beyond (``estimated`` says which). Memory: at most
    ``exact_limit`` strings, or 16 KiB."""

    __slots__ = ("exact", "exact_limit", "sketch")

    def __init__(self, exact_limit: int = EXACT_LIMIT) -> None:
        self.exact_limit = exact_limit
        self.exact: set[str] | None = set()
        self.sketch: HyperLogLog | None = None

    @property
    def estimated(self) -> bool:
        return self.sketch is not None

    def add(self, value: str) -> None:
        if self.exact is not None:
            self.exact.add(value)
            if len(self.exact) > self.exact_limit:
                self.sketch = HyperLogLog()
                for v in self.exact:
                    self.sketch.add(v)
                self.exact = None
        elif self.sketch is not None:
            self.sketch.add(value)

    def count(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        return self.sketch.estimate() if self.sketch is not None else 0

    def snapshot(self) -> dict[str, Any]:
        if self.exact is not None:
            return {"exact": sorted(self.exact)}
        assert self.sketch is not None
        return {"hll": base64.b64encode(bytes(self.sketch.registers)).decode()}

    @classmethod
    def restore(cls, snap: dict[str, Any], exact_limit: int = EXACT_LIMIT
                ) -> DistinctCounter:
        counter = cls(exact_limit)
        if "hll" in snap:
            counter.exact = None
            counter.sketch = HyperLogLog(base64.b64decode(snap["hll"]))
        else:
            counter.exact = set(snap["exact"])
        return counter
