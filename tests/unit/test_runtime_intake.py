"""The signal intake and the [runtime] rule (ADR 0022): with the rule on, a runtime signal
it names also goes onto the events topic, keyed by its service, with the header
tocsin.runtime, for detection to read in log order; with the rule off, nothing extra.
A recording producer stands in for the broker (the send is the unit under test; the
integration suite covers the broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tocsin.schemas.signal_wire import decode_signal
from tocsin.streams.web.intake import Intake
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "kubernetes" / \
    "pod-v1-crashloopbackoff-argo-gitops-engine.json"


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None, **_: Any
                   ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, list(headers or ())))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def post(settings: Settings) -> list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]:
    producer = Producer()
    handler = Intake(settings, producer, Metrics(),  # type: ignore[arg-type]
                     wall_ms=lambda: 1_793_610_000_000)
    answer = asyncio.run(handler.handle(FIXTURE.read_bytes(), "kubernetes", None,
                                        "127.0.0.1"))
    assert answer.status == 202, answer.body
    return producer.sent


def test_with_the_runtime_rule_a_crash_loop_also_goes_to_detection(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('version = 1\n[runtime]\nenabled = true\npersistent_after = "10m"\n')
    sent = post(Settings(rules=str(rules)))
    topics = [topic for topic, *_ in sent]
    assert topics == ["tocsin.signals", "tocsin.events"]
    _, key, value, headers = sent[1]
    assert key == b"my-pod" and ("tocsin.runtime", b"1") in headers
    assert decode_signal(value).reason == "CrashLoopBackOff"
    assert value == sent[0][2]  # the same signal.v1 bytes on both topics


def test_without_it_only_the_signals_topic_is_written(tmp_path: Path) -> None:
    assert [t for t, *_ in post(Settings())] == ["tocsin.signals"]
    rules = tmp_path / "rules.toml"
    rules.write_text('version = 1\n[runtime]\nenabled = true\nreasons = ["OOMKilled"]\n')
    assert [t for t, *_ in post(Settings(rules=str(rules)))] == ["tocsin.signals"]
