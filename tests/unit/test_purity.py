"""processors/ is pure: importing it loads no Kafka, Faust or DuckDB client, and it reads no
clock or randomness (the selfcheck greps for those too)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PROCESSORS = Path(__file__).resolve().parents[2] / "processors"
FORBIDDEN = ("faust", "aiokafka", "duckdb", "kafka", "mode")


def test_importing_processors_loads_no_io_framework() -> None:
    modules = sorted(".".join(p.relative_to(PROCESSORS).with_suffix("").parts)
                     for p in PROCESSORS.rglob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        + "".join(f"import tocsin.processors.{m}\n" for m in modules)
        + f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_processors_import_no_randomness() -> None:
    imports = re.compile(r"^\s*(?:import|from)\s+(random|uuid|secrets|time)\b", re.M)
    offenders = [p.name for p in PROCESSORS.rglob("*.py") if imports.search(p.read_text())]
    assert offenders == []


def test_processors_read_no_clock() -> None:
    clock = re.compile(r"\b(time\.time|time\.monotonic|datetime\.now|datetime\.utcnow|"
                       r"date\.today)\s*\(")
    offenders = [p.name for p in PROCESSORS.rglob("*.py") if clock.search(p.read_text())]
    assert offenders == []
