"""The shared fixtures (../shared/fixtures beside the repository, in CI too) and the small
helpers every test that reads them needs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def load(name: str) -> dict[str, Any]:
    """A fixture file that holds one JSON object."""
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def ms(iso: str) -> int:
    """Epoch ms of an ISO time written with at most millisecond precision."""
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1)
