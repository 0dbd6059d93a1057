"""Signals are bounded where they are made: times between 0001-01-01 and 9999-12-31 (UTC),
integers within signal.v1's int and long, so every accepted signal can be written; and the
HTTP intake answers 422, never 500, if one could not be."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
import pytest

from tocsin.processors.signals import IntakeError, Signal, intake
from tocsin.processors.signals.fields import FIRST_MS, LAST_MS, seconds_ms, time_ms
from tocsin.processors.signals.model import INT_RANGES
from tocsin.schemas.codec import SIGNAL, SchemaError, avro_schema
from tocsin.streams.web import intake as intake_module
from tocsin.streams.web.intake import Intake
from tocsin.streams.worker.metrics import Metrics
from tocsin.streams.worker.settings import Settings

RECEIVED = 1_793_610_000_000


@pytest.mark.parametrize(("text", "ms"), [
    ("9999-12-31T23:59:59.999Z", LAST_MS),
    ("9999-12-31T23:59:59.999+00:30", LAST_MS - 30 * 60_000),
    ("0002-01-01T00:00:00+23:59", FIRST_MS + 365 * 86_400_000 - (23 * 60 + 59) * 60_000),
    ("0001-01-01T00:00:00Z", None),  # Go's zero time: unset
    ("1970-01-01T00:00:00.5-00:00", 500),
])
def test_times_are_read_up_to_the_last_millisecond_of_9999(text: str, ms: int | None) -> None:
    assert time_ms(text) == ms


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999-00:01",
                                  "9999-12-31T23:59:59-99:99"])
def test_a_time_past_9999_is_refused_with_a_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"9999-12-31T23:59:59\.999Z"):
        time_ms(text)


@pytest.mark.parametrize("seconds", [1e308, -1e308, math.inf, -math.inf, math.nan,
                                     (1 << 64) - 1, 253_402_300_800])
def test_epoch_seconds_out_of_range_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="epoch seconds"):
        seconds_ms(seconds)


def test_epoch_seconds_keep_their_milliseconds() -> None:
    assert seconds_ms(1_566_248_777.677) == 1_566_248_777_677
    assert seconds_ms(253_402_300_799.999) == LAST_MS


def signal(**fields: Any) -> Signal:
    base: dict[str, Any] = {"dedup_key": "k", "type": "runtime", "state": "firing",
                            "source": "native", "severity": "warning", "title": "t",
                            "event_time_ms": RECEIVED}
    return Signal(**{**base, **fields})


@pytest.mark.parametrize("field", sorted(INT_RANGES))
def test_the_edges_of_each_integer_range_encode(field: str) -> None:
    low, high = INT_RANGES[field]
    for value in (max(low, 1) if field == "occurrences" else low, high):
        record = signal(**{field: value}).to_dict()
        assert avro_schema(SIGNAL).decode_soe(avro_schema(SIGNAL).encode_soe(record)) == record


@pytest.mark.parametrize("field", sorted(INT_RANGES))
def test_one_past_either_edge_is_an_intake_error_naming_the_field(field: str) -> None:
    low, high = INT_RANGES[field]
    for value in (low - 1, high + 1):
        with pytest.raises(IntakeError) as refused:
            signal(**{field: value})
        assert refused.value.field == field and refused.value.provider is None


def test_the_intake_says_which_provider_sent_the_out_of_range_integer() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "status": {
        "startTime": "2026-11-02T09:00:00Z", "containerStatuses": [{"name": "c", "state": {
            "terminated": {"reason": "OOMKilled", "exitCode": -(1 << 31) - 1}}}]}}
    with pytest.raises(IntakeError, match=r"^kubernetes payload: exit_code: "):
        intake(pod, received_ms=RECEIVED)


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_signal_that_cannot_be_encoded_is_a_422_naming_it_and_nothing_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    body = (b'{"version": "4", "alerts": ['
            b'{"status": "firing", "labels": {"alertname": "A"}, '
            b'"startsAt": "2026-11-02T09:00:00Z"}, '
            b'{"status": "firing", "labels": {"alertname": "B"}, '
            b'"startsAt": "2026-11-02T09:00:00Z"}]}')
    expected = intake(orjson.loads(body), received_ms=RECEIVED).signals
    encode = intake_module.encode_signal

    def failing(sig: Signal, encoding: str = "avro") -> bytes:
        if sig.signal_id == expected[1].signal_id:
            raise SchemaError("cannot encode as signal.v1: boom", "exit_code")
        return encode(sig, encoding)

    monkeypatch.setattr(intake_module, "encode_signal", failing)
    producer = Producer()
    handler = Intake(Settings(), producer, Metrics(),  # type: ignore[arg-type]
                     wall_ms=lambda: RECEIVED)
    answer = asyncio.run(handler.handle(body, "alertmanager", None, "127.0.0.1"))
    assert answer.status == 422
    assert expected[1].signal_id in answer.body["error"]
    assert "exit_code" in answer.body["error"] and "boom" not in answer.body["error"]
    assert producer.sent == []
