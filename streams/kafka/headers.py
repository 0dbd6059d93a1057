"""Record headers Tocsin writes and reads on its own topics.

Headers carry what must not change a record's bytes or hash: where a translated record
came from, and the delivery id that makes a retried webhook count once.
"""

from __future__ import annotations

DELIVERY_HEADER = "tocsin.delivery"  # one webhook delivery, or `registered:<signal id>`
SPAN_SOURCE = "tocsin.span_source"  # topic:partition:offset:index[@merge time] of a span
# event: where its span record lies and, from the span intake, the record's place in its
# source's order (the running maximum of the source's record times, ADR 0015)
"""On the events topic, a translated span's value is a binary span event record when its
first byte is one of ``processors.otlp.record.VERSIONS`` (ADR 0015), else JSON."""
ACTION = "tocsin.action"
"""On the events topic, a record with this header is an operator action's command (JSON,
``processors.actions.Command``), keyed by the incident's service (ADR 0016)."""
RUNTIME = "tocsin.runtime"
"""On the events topic, a record with this header is a runtime signal (signal.v1) the
intake put there for the rules file's [runtime] rule, keyed by its service (ADR 0022)."""
PROVENANCE_HEADER = "tocsin.provenance"  # where a report's cited records lie (JSON)
MARK = "tocsin.mark"
"""A record with this header and an empty value is a progress mark, `<source>=<ms>`: the
source (an upstream partition) has sent everything up to that event time (ADR 0015).
Readers that do not know marks skip records without a value. On the events topic a mark
may also say `<source>=idle`: the source is caught up and quiet upstream, and holds
nothing back until it writes again."""
SOURCES = "tocsin.sources"
"""Beside a mark on the events topic: `<topic>:<n>`, the upstream topic and its partition
count, so a reader knows every source there is before each has spoken."""


def header(headers: object, name: str) -> bytes | None:
    """The value of the first header called ``name``, if any."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == name:
            return bytes(value or b"")
    return None


def mark_of(headers: object) -> tuple[str, int] | None:
    """(source, event time) of a mark record, None for any other record."""
    raw = header(headers, MARK)
    if raw is None:
        return None
    source, _, at = raw.decode(errors="replace").rpartition("=")
    try:
        return source, int(at)
    except ValueError:
        return None


def progress_of(headers: object) -> tuple[str, int | None, set[str]] | None:
    """(source, event time or None when idle, every source of its topic when said) of a
    mark record, None for any other record."""
    raw = header(headers, MARK)
    if raw is None:
        return None
    source, _, at = raw.decode(errors="replace").rpartition("=")
    if not source:
        return None
    sources: set[str] = set()
    of = header(headers, SOURCES)
    if of is not None:
        topic, _, count = of.decode(errors="replace").rpartition(":")
        if topic and count.isdigit() and int(count) <= 100_000:
            sources = {f"{topic}:{p}" for p in range(int(count))}
    if at == "idle":
        return source, None, sources
    try:
        return source, int(at), sources
    except ValueError:
        return None


def span_time(headers: object) -> int | None:
    """The merge time of a translated event (its span record's place in its source's
    order), None when its span_source header has none."""
    raw = header(headers, SPAN_SOURCE)
    if raw is None or b"@" not in raw:
        return None
    try:
        return int(raw.rpartition(b"@")[2])
    except ValueError:
        return None


def span_source(headers: object) -> tuple[str, tuple[int, int]] | None:
    """(source partition, (offset, index)) from a translated event's headers, if any."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == SPAN_SOURCE:
            try:
                position = bytes(value or b"").partition(b"@")[0]
                topic_partition, _, rest = position.decode().rpartition(":")
                source, _, offset = topic_partition.rpartition(":")
                return source, (int(offset), int(rest))
            except (UnicodeDecodeError, ValueError):
                return None  # not one we wrote: the event counts as any other
    return None
