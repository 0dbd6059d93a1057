"""The producer's cached partitioner places every key where aiokafka's default (murmur2,
the Java client's placement) does: other producers keying by service must agree."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from tocsin.streams.kafka.io import CachedKeyPartitioner


@given(keys=st.lists(st.binary(max_size=40), min_size=1, max_size=50),
       partitions=st.integers(1, 64))
def test_same_placement_as_the_default_partitioner(keys: list[bytes], partitions: int) -> None:
    cached, default = CachedKeyPartitioner(max_keys=7), DefaultPartitioner()
    every = list(range(partitions))
    for key in keys + keys:  # the second pass reads the remembered hashes
        assert cached(key, every, every) == default(key, every, every)
    assert len(cached._hashes) <= 7


def test_keyless_records_go_where_aiokafka_puts_them() -> None:
    assert CachedKeyPartitioner()(None, [0, 1, 2], [3]) == 3  # an available one
    assert CachedKeyPartitioner()(None, [5], []) == 5
