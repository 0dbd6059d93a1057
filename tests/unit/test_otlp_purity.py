"""processors/otlp stays pure and off protobuf's slow paths (ADR 0011): the repository-wide
purity test only looks at processors/*.py, so this one covers the subpackage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

OTLP = Path(__file__).resolve().parents[2] / "processors" / "otlp"
SOURCES = sorted(OTLP.glob("*.py"))
FORBIDDEN = ("faust", "aiokafka", "duckdb", "kafka", "mode", "confluent_kafka")


def test_importing_otlp_loads_no_io_framework() -> None:
    code = ("import sys\nimport tocsin.processors.otlp\n"
            f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_no_clock_no_randomness() -> None:
    imports = re.compile(r"^\s*(?:import|from)\s+(random|uuid|secrets|time|datetime)\b", re.M)
    clock = re.compile(r"\b(time\.time|monotonic|perf_counter|datetime\.now|utcnow|today)\s*\(")
    assert SOURCES
    assert [p.name for p in SOURCES if imports.search(p.read_text())] == []
    assert [p.name for p in SOURCES if clock.search(p.read_text())] == []


def test_no_message_to_dict_on_the_hot_path() -> None:
    """json_format converts every field (measured: ~390 requests/s against 37,000 parses/s)."""
    slow = re.compile(r"\bjson_format\b|\b(MessageToDict|MessageToJson|ParseDict|Parse)\(")
    assert [p.name for p in SOURCES if slow.search(p.read_text())] == []


def test_modules_stay_small() -> None:
    assert all(len(p.read_text().splitlines()) < 400 for p in SOURCES)
