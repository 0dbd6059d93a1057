"""`pip install .` ships every package of the repository (a missing one only shows in a
fresh install, never in the editable dev install)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"processors", "schemas", "streams", "sinks", "tocsin"}


def test_every_python_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top in MAPPED:
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            found.add(".".join(parts if top == "tocsin" else ("tocsin", *parts)))
    assert found == listed


def test_data_files_are_shipped() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert "avro/*.avsc" in data["tocsin.schemas"]
    assert "openapi.json" in data["tocsin.streams.web"]
