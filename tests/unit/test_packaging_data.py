"""A wheel built from the sources ships the data files where the code looks for them (the
``.avsc`` schemas beside ``schemas/codec.py``, ``openapi.json`` and the live page's
``static/`` files beside ``streams/web``'s modules), and building it prints no packaging
warning (setuptools warns when a data folder looks like a package missing from
``packages``).

tests/unit/test_packaging.py checks what pyproject.toml declares; this builds the wheel.
The build runs on a copy of the sources, so the repository gets no build/ or egg-info.
It builds offline with the installed setuptools (a dev dependency, the version
pyproject.toml's build system asks for)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("tocsin", "processors", "schemas", "streams", "sinks")
# What setuptools' bdist_wheel always says when byte-compiling is off: not about packaging.
HARMLESS = re.compile(r"warning: (build_py|install_lib): byte-compiling is disabled")


def _wanted_setuptools() -> tuple[int, ...]:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    spec = next(r for r in requires if r.startswith("setuptools"))
    found = re.search(r">=\s*([\d.]+)", spec)
    return tuple(int(x) for x in found.group(1).split(".")) if found else (0,)


def _installed_setuptools() -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in re.findall(r"\d+", version("setuptools"))[:3])
    except PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """The wheel, everything the build printed, and the sources it was built from."""
    tmp = tmp_path_factory.mktemp("packaging")
    src, out = tmp / "src", tmp / "wheel"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for top in SOURCES:
        shutil.copytree(ROOT / top, src / top, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    installed = _installed_setuptools()
    assert installed is not None and installed >= _wanted_setuptools(), \
        "the dev dependencies install the setuptools pyproject.toml's build system asks for"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "--no-build-isolation",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    wheels = list(out.glob("tocsin-*.whl"))
    assert len(wheels) == 1, printed[-4000:]
    return wheels[0], printed, src


def test_the_build_prints_no_packaging_warning(built: tuple[Path, str, Path]) -> None:
    _, printed, _ = built
    assert "absent from the `packages` configuration" not in printed
    assert "Package would be ignored" not in printed
    warnings = [line.strip() for line in printed.splitlines()
                if re.search(r"warn", line, re.IGNORECASE) and not HARMLESS.search(line)]
    assert warnings == []


def test_the_wheel_ships_the_schemas_and_the_api_document(built: tuple[Path, str, Path]
                                                          ) -> None:
    wheel, _, src = built
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = {f"tocsin/schemas/{p.relative_to(src / 'schemas').as_posix()}"
               for p in (src / "schemas" / "avro").rglob("*.avsc")}
    assert any("/released/" in name for name in schemas)
    assert schemas and schemas <= names
    assert "tocsin/streams/web/openapi.json" in names
    static = {f"tocsin/streams/web/static/{p.name}"
              for p in (src / "streams" / "web" / "static").glob("*") if p.is_file()}
    assert static <= names  # the live page's own files (streams/web/live.py)
    # where the code looks for them: beside the modules that read them
    assert "tocsin/schemas/codec.py" in names and "tocsin/streams/web/views.py" in names
    # and nothing of the repository's own tests or tooling
    assert not any(name.startswith(("tests/", "bench/", "docs/")) for name in names)
