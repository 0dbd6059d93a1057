"""The embedded broker for integration tests: started on a free port, never skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tocsin.streams.kafka.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b.bootstrap
