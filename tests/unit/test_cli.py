"""Bad CLI arguments give a usage line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def tocsin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ["nonsense"],
    ["run", "--http-port", "99999"],
    ["run", "--role", "boss"],
    ["run", "--partitions", "0"],
    ["produce"],
    ["produce", "f.ndjson"],
    ["produce", "/no/such/file.ndjson", "--topic", "t", "--broker", "127.0.0.1:1"],
    ["query"],
    ["query", "SELECT 1", "--format", "xml"],
    ["incidents", "--status", "sleeping"],
    ["demo", "--jsn"],
])
def test_bad_arguments_give_usage_and_no_traceback(args: list[str]) -> None:
    out = tocsin(*args)
    assert out.returncode == 2, out
    assert "Usage:" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_settings_from_the_environment_are_a_usage_error() -> None:
    import os

    out = subprocess.run([sys.executable, "-P", "-m", "tocsin", "run"], capture_output=True,
                         text=True, timeout=60,
                         env=dict(os.environ, TOCSIN_DETECTOR__WINDOW_MS="7"))
    assert out.returncode == 2
    assert "window_ms" in out.stderr and "Traceback" not in out.stderr


def test_query_on_a_missing_database_says_so(tmp_path: object) -> None:
    out = tocsin("query", "SELECT 1", "--db", "/nonexistent/x.duckdb")
    assert out.returncode == 2
    assert "no database" in out.stderr and "Traceback" not in out.stderr


def test_help_lists_the_commands() -> None:
    out = tocsin("--help")
    assert out.returncode == 0
    for command in ("demo", "run", "produce", "query", "incidents", "broker"):
        assert command in out.stdout
