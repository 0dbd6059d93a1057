"""A dead letter is bounded whatever the rejected record held."""

from __future__ import annotations

import hashlib

import pytest

from tocsin.streams.kafka.dead_letters import MAX_HEADER_BYTES, MAX_KEY_BYTES, dead_letter


@pytest.mark.parametrize(("size", "cap", "truncated"), [
    (0, 10, False), (10, 10, False), (11, 10, True), (5_000_000, 512 * 1024, True),
    (100, 0, True),
])
def test_value_is_cut_at_the_cap_and_the_whole_is_described(size: int, cap: int,
                                                            truncated: bool) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = dead_letter("t", 3, 7, b"k", value, [], "why", "field.x", cap)
    headers = dict(letter.headers)
    assert letter.value == value[:cap]
    assert headers["tocsin.dlq.original_bytes"] == str(size).encode()
    assert headers["tocsin.dlq.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["tocsin.dlq.truncated"] == (b"true" if truncated else b"false")
    assert headers["tocsin.dlq.source_topic"] == b"t"
    assert headers["tocsin.dlq.source_partition"] == b"3"
    assert headers["tocsin.dlq.source_offset"] == b"7"
    assert headers["tocsin.dlq.field"] == b"field.x"


def test_headers_keys_and_reasons_are_bounded() -> None:
    headers = [("a", b"1" * 100), ("big", b"2" * (MAX_HEADER_BYTES + 1)),
               ("tocsin.dlq.reason", b"forged"), ("b", b"3")]
    letter = dead_letter("t", 0, 0, b"k" * (MAX_KEY_BYTES * 3), None, headers,
                         "r" * 10_000)
    kept = dict(letter.headers)
    assert [k for k, _ in letter.headers if not k.startswith("tocsin.dlq.")] == ["a", "b"]
    assert kept["tocsin.dlq.headers_dropped"] == b"1"
    assert kept["tocsin.dlq.reason"] == b"r" * 2000, "our own reason, never a forged one"
    assert letter.key == b"k" * MAX_KEY_BYTES
    assert kept["tocsin.dlq.original_key_bytes"] == str(MAX_KEY_BYTES * 3).encode()
    assert sum(len(k) + len(v) for k, v in letter.headers) < MAX_HEADER_BYTES + 4096


def test_a_letter_without_its_value_says_so() -> None:
    letter = dead_letter("t", 0, 0, b"k", b"abc", [("x", b"y")], "r", None, 10)
    bare = letter.without_value()
    assert bare.value == b""
    assert dict(bare.headers)["tocsin.dlq.truncated"] == b"true"
    assert "x" not in dict(bare.headers)
