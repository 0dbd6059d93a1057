"""Record headers Tocsin writes and reads on its own topics.

Headers carry what must not change a record's bytes or hash: where a translated record
came from, and the delivery id that makes a retried webhook count once.
"""

from __future__ import annotations

DELIVERY_HEADER = "tocsin.delivery"  # one webhook delivery, or `registered:<signal id>`
SPAN_SOURCE = "tocsin.span_source"  # topic:partition:offset:index of the span record


def span_source(headers: object) -> tuple[str, tuple[int, int]] | None:
    """(source partition, (offset, index)) from a translated event's headers, if any."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == SPAN_SOURCE:
            try:
                topic_partition, _, rest = bytes(value or b"").decode().rpartition(":")
                source, _, offset = topic_partition.rpartition(":")
                return source, (int(offset), int(rest))
            except (UnicodeDecodeError, ValueError):
                return None  # not one we wrote: the event counts as any other
    return None
