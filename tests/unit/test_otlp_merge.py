"""The span-record merge gives one order for one log, whatever the fetches (ADR 0011)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.processors.otlp.merge import PartitionMerge

Log = list[list[int | None]]  # per partition, record times in log order (None: no spans)

logs = st.lists(st.lists(st.none() | st.integers(0, 50), max_size=12), min_size=1,
                max_size=6)


def merged(log: Log, seed: int) -> list[tuple[int, int]]:
    """(partition, offset) in release order, fetching random chunks of random partitions;
    a partition holds the merge back while it has records not fetched yet."""
    rng = random.Random(seed)
    merge: PartitionMerge[None] = PartitionMerge(range(len(log)))
    fetched = [0] * len(log)
    out: list[tuple[int, int]] = []

    def holds_back(p: int) -> bool:
        return fetched[p] < len(log[p])

    while any(holds_back(p) for p in range(len(log))):
        p = rng.choice([p for p in range(len(log)) if holds_back(p)])
        for offset in range(fetched[p], min(len(log[p]), fetched[p] + rng.randint(1, 4))):
            merge.add(p, offset, log[p][offset], None)
            fetched[p] = offset + 1
        out += [(e.partition, e.offset) for e in merge.release(holds_back)]
    out += [(e.partition, e.offset) for e in merge.release(holds_back)]
    return out


@settings(max_examples=300)
@given(log=logs, seeds=st.lists(st.integers(0, 10**6), min_size=2, max_size=4))
def test_any_fetch_interleaving_gives_the_same_order(log: Log, seeds: list[int]) -> None:
    orders = [merged(log, seed) for seed in seeds]
    assert all(order == orders[0] for order in orders)
    assert sorted(orders[0]) == [(p, o) for p, recs in enumerate(log)
                                 for o in range(len(recs))]  # each record once


@given(log=logs)
def test_each_partition_keeps_its_log_order_and_heads_go_by_time(log: Log) -> None:
    order = merged(log, 0)
    for p in range(len(log)):
        offsets = [o for q, o in order if q == p]
        assert offsets == sorted(offsets)
    if all(all(t is not None for t in recs) and recs == sorted(recs) for recs in log):
        times = [log[p][o] for p, o in order]
        assert times == sorted(times)  # sorted partitions merge into one sorted stream


def test_a_quiet_partition_stops_holding_back_when_the_caller_says_so() -> None:
    merge: PartitionMerge[str] = PartitionMerge([0, 1])
    merge.add(0, 0, 100, "a")
    assert merge.release(lambda p: True) == []  # partition 1 may still hold earlier ones
    assert [e.item for e in merge.release(lambda p: False)] == ["a"]
    merge.add(1, 0, None, "dead letter")
    merge.add(0, 1, 50, "b")
    assert [e.item for e in merge.release(lambda p: False)] == ["dead letter", "b"]
    merge.assign([1])
    assert list(merge.buffers) == [1]


def test_a_record_merge_time_is_its_latest_span_end_capped_an_hour_past_its_timestamp(
) -> None:
    from aiokafka import ConsumerRecord

    from tocsin.clients.otel_workload import proto, workload
    from tocsin.processors.otlp import decode_batch
    from tocsin.streams.stages.spans import MAX_AHEAD_MS, _time_of

    t0_ns = 1_793_610_000 * 10**9
    payload = proto(workload(2, (), t0_ns))
    decoded = decode_batch(payload)
    latest = max(s.end_ms for s in decoded.spans)

    def record(timestamp: int) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord("otlp_spans", 0, 0, timestamp, 0, None, payload, None,
                              len(payload), 0, ())

    assert _time_of(record(latest), decoded) == latest
    assert _time_of(record(0), decoded) == latest  # no timestamp: not capped
    early = latest - 2 * MAX_AHEAD_MS  # the spans claim to end two hours after it
    assert _time_of(record(early), decoded) == early + MAX_AHEAD_MS
    assert _time_of(record(latest), decode_batch(b"")) is None
