"""The projection's pure parts (ADR 0015, section 8): a ``signals`` row folds on exactly as
the in-memory fold would, and a consumed batch becomes rows — report versions from the
reports topic's bytes and provenance header — or dead letters with a reason."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from tests.unit.report_fixtures import report
from tocsin.processors.report import canonical_json, seal
from tocsin.processors.signals.model import Signal
from tocsin.processors.triage import Folded, fold
from tocsin.schemas.signal_wire import encode_signal
from tocsin.streams.kafka.headers import DELIVERY_HEADER, MARK, PROVENANCE_HEADER
from tocsin.streams.stages.project import (
    Projection,
    Rows,
    fold_occurrences,
    folded_of_row,
    folded_row,
    read_batch,
)
from tocsin.streams.worker.settings import Settings, Topics

TOPICS = Topics()
T0 = 1_793_612_403_000


def signal(key: str = "k1", at: int = T0, state: str = "firing", occurrences: int = 1,
           title: str = "x", **more: Any) -> Signal:
    return Signal(dedup_key=key, type="alert", state=state,  # type: ignore[arg-type]
                  source="native", severity="warning", title=title, event_time_ms=at,
                  occurrences=occurrences, **more)


def record(topic: str, value: bytes | None, offset: int = 0, partition: int = 0,
           headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0,
                          len(value or b""), headers or [])


def batch(*records: ConsumerRecord[bytes, bytes]
          ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
    for rec in records:
        out.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
    return out


def fold_all(signals: list[Signal]) -> dict[str, Folded]:
    folds: dict[str, Folded] = {}
    for s in signals:
        folds[s.signal_id] = fold(folds.get(s.signal_id), s)
    return folds


# --------------------------------------------------------------------------- signals


def test_a_signals_row_gives_back_the_fold_it_was_written_from() -> None:
    s = signal(labels={"b": "2", "a": "1"}, annotations={"incident_id": "inc_1"},
               occurrences=3, exit_code=137, commit="8f2c1e0", service="checkout")
    later = replace(s, event_time_ms=T0 + 5_000, state="resolved", occurrences=2)
    folded = fold(fold(None, s), later)
    row = folded_row(folded)
    assert row["occurrences"] == 5 and row["latest_occurrences"] == 2
    assert isinstance(row["labels"], str) and isinstance(row["annotations"], str)
    back = folded_of_row(row)
    assert back == folded
    assert back.signal.to_dict() == later.to_dict()
    assert folded_row(back) == row


def test_a_row_whose_id_is_not_its_source_and_key_is_refused() -> None:
    row = folded_row(fold(None, signal()))
    with pytest.raises(ValueError, match="rebuilds as"):
        folded_of_row({**row, "signal_id": "sig_0000000000000000"})


def test_the_latest_occurrence_own_count_decides_ties_as_in_memory() -> None:
    """Same time and state: the larger canonical form is the latest, and an occurrence's
    own count is part of it. Rebuilt with the folded total instead, "x" would win here."""
    a, b = signal(occurrences=1, title="x"), signal(occurrences=2, title="a")
    whole = fold_all([a, a, b])[a.signal_id]
    assert whole.signal.title == "a"
    first = folded_of_row(folded_row(fold_all([a, a])[a.signal_id]))
    touched, _, _ = fold_occurrences({a.signal_id: first}, set(), [(b, None)])
    assert touched[a.signal_id] == whole


def occurrences(seed: int) -> list[tuple[Signal, str | None]]:
    rng = random.Random(seed)
    out: list[tuple[Signal, str | None]] = []
    for _ in range(60):
        s = signal(key=f"k{rng.randint(1, 4)}", at=T0 + rng.randint(0, 5) * 1000,
                   state=rng.choice(["firing", "acknowledged", "resolved"]),
                   occurrences=rng.randint(1, 3), title=rng.choice("abc"))
        delivery = rng.choice([None, None, f"d{rng.randint(1, 6)}"])
        out.append((s, delivery))
        if rng.random() < 0.2:
            out.append((s, delivery))  # a retry: counts once when it has a delivery
    return out


@pytest.mark.parametrize("seed", range(5))
def test_folding_in_batches_through_rows_equals_folding_in_one_go(seed: int) -> None:
    items = occurrences(seed)
    whole, applied, redelivered = fold_occurrences({}, set(), items)
    assert redelivered == len(items) - len(applied) - sum(1 for _, d in items if d is None)
    rng = random.Random(seed)
    rows: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    start = 0
    while start < len(items):
        end = start + rng.randint(1, 7)
        held = {k: folded_of_row(r) for k, r in rows.items()}
        touched, new, _ = fold_occurrences(held, seen, items[start:end])
        rows.update({k: folded_row(f) for k, f in touched.items()})
        seen.update(new)
        start = end
    assert rows == {k: folded_row(f) for k, f in whole.items()}
    assert seen == set(applied)


# --------------------------------------------------------------------------- reports


def provenance() -> dict[str, list[Any]]:
    return {"incident:inc_dd40b8528905eadf:1": ["tocsin.incidents", 2, 17],
            "signal:sig_dep": ["tocsin.signals", 0, 4]}


def report_record(body: dict[str, Any], offset: int = 0, prov: bytes | None = None,
                  hash_header: str | None = None) -> ConsumerRecord[bytes, bytes]:
    headers = [("tocsin.report_hash", (hash_header or str(body["report_hash"])).encode())]
    if prov is not None:
        headers.append((PROVENANCE_HEADER, prov))
    return record(TOPICS.reports, canonical_json(body), offset, headers=headers)


def test_report_rows_come_from_the_bytes_and_the_provenance_header() -> None:
    body = report()
    prov = orjson.dumps(provenance(), option=orjson.OPT_SORT_KEYS)
    rows = read_batch(batch(report_record(body, 0, prov), report_record(body, 1, prov)),
                      TOPICS)
    assert rows.rejected == []
    assert len(rows.reports) == 1, "a version published twice is one row"
    version = rows.reports[0]
    assert version["incident_id"] == "inc_dd40b8528905eadf"
    assert version["report_hash"] == body["report_hash"]
    assert version["body"] == canonical_json(body).decode()
    assert orjson.loads(version["provenance"]) == provenance()
    assert {(e["kind"], e["id"]) for e in rows.evidence} == \
        {(e["kind"], e["id"]) for e in body["evidence"]}  # type: ignore[attr-defined]
    assert rows.positions == {(TOPICS.reports, 0): 2}


def test_a_version_without_a_provenance_header_cites_nothing() -> None:
    rows = read_batch(batch(report_record(report())), TOPICS)
    assert rows.rejected == [] and rows.reports[0]["provenance"] == "{}"


def resealed(**changes: Any) -> dict[str, Any]:
    body = dict(report())
    body.update(changes)
    return seal(body)


@pytest.mark.parametrize(("value", "headers", "reason"), [
    (b"\x00garbage", [], "not JSON"),
    (b"[1, 2]", [], "a report is a JSON object"),
    (b'{"incident": {"id": "inc_x"}}', [], "not a triage report"),
    (canonical_json({**report(), "next_checks": []}), [], "does not match its content"),
    (canonical_json(resealed(generated_at_ms="soon")), [], "generated_at_ms is not a BIGINT"),
    (canonical_json(resealed(incident={**report()["incident"], "id": None})),  # type: ignore[dict-item]
     [], "incident_id is missing"),
    (canonical_json(report()), [(PROVENANCE_HEADER, b"{")], "header is not JSON"),
    (canonical_json(report()), [(PROVENANCE_HEADER, b'{"signal:x": ["t", "0", 1]}')],
     "not an object of [topic, partition, offset]"),
    (canonical_json(report()), [("tocsin.report_hash", b"sha256:00")], "header is not"),
])
def test_a_record_that_is_not_a_report_version_is_rejected_with_a_reason(
        value: bytes, headers: list[tuple[str, bytes]], reason: str) -> None:
    rows = read_batch(batch(record(TOPICS.reports, value, 3, headers=headers)), TOPICS)
    assert rows.reports == [] and rows.evidence == []
    [(rec, why, _)] = rows.rejected
    assert rec.offset == 3 and why.startswith("not a report version: ")
    assert reason in why
    assert rows.positions == {(TOPICS.reports, 0): 4}, "read past, never stuck"


# --------------------------------------------------------------------------- a batch


def test_a_batch_becomes_rows_and_what_is_not_ours_is_rejected() -> None:
    s = signal()
    mark = [(MARK, b"tocsin.events:0=1000")]
    rows: Rows = read_batch(batch(
        record(TOPICS.signals, encode_signal(s), 0, headers=[(DELIVERY_HEADER, b"d1")]),
        record(TOPICS.signals, encode_signal(s, "json"), 1),
        record(TOPICS.signals, b"\x00garbage", 2),
        record(TOPICS.signals, None, 3, headers=mark),
        record(TOPICS.incidents, b'{"kind": "opened"}', 0),
        record(TOPICS.incidents, b"not an incident", 1),
        record(TOPICS.windows, b"{", 0),
        record(TOPICS.dlq, b"foreign", 0),
    ), TOPICS)
    assert rows.signals.occurrences == [(s, "d1"), (s, None)]
    assert rows.marks == 1
    assert rows.events == [] and len(rows.letters) == 1
    reasons = sorted((rec.topic, rec.offset, why.split(":")[0]) for rec, why, _ in
                     rows.rejected)
    assert reasons == [(TOPICS.incidents, 0, "not an incident event"),
                       (TOPICS.incidents, 1, "not an incident event"),
                       (TOPICS.signals, 2, "not a signal"),
                       (TOPICS.windows, 0, "not a window record")]
    assert rows.positions == {(TOPICS.signals, 0): 4, (TOPICS.incidents, 0): 2,
                              (TOPICS.windows, 0): 1, (TOPICS.dlq, 0): 1}


def test_an_incident_event_duckdb_would_refuse_is_rejected_not_written() -> None:
    event = {"incident_id": "inc_a", "seq": 1, "kind": "opened", "status": "active",
             "env": "prod", "service": "s", "step": "p", "error_code": "E",
             "family": "s:p:E", "onset_ms": 1000, "at_ms": 1000, "window_count": 5,
             "baseline": 0.0, "lift": None, "peak_count": 5, "error_count": 5,
             "last_error_ms": 1000, "rule": "spike.v1", "sample_trace_ids": ["t1"]}
    good = read_batch(batch(record(TOPICS.incidents, orjson.dumps(event))), TOPICS)
    assert good.rejected == [] and good.events == [event]
    for bad in ({"seq": "1"}, {"onset_ms": 10**17}, {"sample_trace_ids": [1]},
                {"window_count": 2**40}, {"incident_id": None}):
        rows = read_batch(batch(record(TOPICS.incidents, orjson.dumps({**event, **bad}))),
                          TOPICS)
        assert rows.events == [] and len(rows.rejected) == 1, bad


def test_the_projection_reads_summaries_never_events_or_spans() -> None:
    s = Settings()
    projection = Projection(s, "127.0.0.1:9", None, None)  # type: ignore[arg-type]
    assert set(projection.topics) == {s.topics.incidents, s.topics.windows, s.topics.dlq,
                                      s.topics.signals, s.topics.reports}
    assert s.topics.events not in projection.topics
    assert s.topics.spans not in projection.topics
