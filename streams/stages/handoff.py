"""What one stage of a worker already decoded, handed to the next stage in the same
process (ADR 0015).

The span intake writes what it decoded to Kafka again: each span record's spans to the
by-trace topic as JSON, and its span events to the events topic as binary records and
packs. When the trace stage (or the detection) of the same process owns the partition
written to, it would read those bytes back and decode them into the very values the
intake held. The intake leaves the values here keyed by (partition, the record's value);
the stage, reading a record, takes them when the value it read is byte for byte the one
written. Kafka stays the source of truth and of order: the stage still reads every record,
in offset order, from its checkpointed position; the hand-off only spares decoding bytes
whose decoded form is known. A record that is not here (another worker wrote it, a
replay, a restart, a full hand-off) is decoded as always, to equal values (unit-tested for
both forms: the by-trace form reads back equal, and ``mapping.detected_event`` equals what
its span event record decodes to).

Bounded: at most ``max_records`` records wait; past that the oldest are forgotten (their
records are decoded when read). The intake hands off only for partitions the local stage
holds (:meth:`HandOff.holds`); one hand-off per pair of stages.
"""

from __future__ import annotations

from typing import Any

MAX_RECORDS = 20_000


class HandOff:
    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.max_records = max_records
        self.partitions: set[int] = set()  # the partitions the receiving stage holds
        self._waiting: dict[tuple[int, bytes], Any] = {}
        self.taken = 0
        self.missed = 0

    def holds(self, partition: int) -> bool:
        return partition in self.partitions

    def put(self, partition: int, value: bytes, decoded: Any) -> None:
        waiting = self._waiting
        waiting[(partition, value)] = decoded
        while len(waiting) > self.max_records:
            del waiting[next(iter(waiting))]

    def take(self, partition: int, value: bytes) -> Any | None:
        """The decoded form of ``value`` as written to ``partition``, once; None if it was
        not handed off here."""
        decoded = self._waiting.pop((partition, value), None)
        if decoded is None:
            self.missed += 1
        else:
            self.taken += 1
        return decoded

    def release(self, partition: int) -> None:
        """The receiving stage no longer holds ``partition``: forget what waits for it."""
        self.partitions.discard(partition)
        for key in [k for k in self._waiting if k[0] == partition]:
            del self._waiting[key]

    def __len__(self) -> int:
        return len(self._waiting)
