"""``python -m bench.span_record [--events N]``: the cost per span event of handing a
translated wide event from the span intake to the detector, JSON against the binary record
(processors/otlp/record.py). Pure CPU, no broker; a few seconds.

Events: the entry-span wide events of the OpenTelemetry SDK workload
(tocsin/clients/otel_workload.py: frontend -> checkout -> payment, 3% of the requests
failing at payment), encoded as OTLP protobuf 100 traces a record, decoded with
``decode_batch`` and mapped with ``wide_events`` (~20,000 events by default).

Paths, each over every event, best of 3 runs, all in this process:

(a) JSON: ``orjson.dumps(event)`` then ``WideEventDecoder()(bytes)`` (orjson + the
    hand-written wide_event.v1 validation), as the intake and the detector do today;
(a+) the same plus the span-position header the intake writes (an f-string) and the
    detector parses (``span_source``'s partitions), what the JSON path really pays;
(b) binary: ``encode_span_event`` then ``decode_span_event`` (memos warm, as in a steady
    stream of low-cardinality families), and each half on its own;
(b-cold) binary with both memos cleared before every event: the worst case, every
    event's strings new (high-cardinality steps or error codes).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from tocsin.clients.otel_workload import proto, workload
from tocsin.processors.family import failing_downstream, family_of
from tocsin.processors.otlp import decode_batch, wide_events
from tocsin.processors.otlp import record as rec
from tocsin.processors.otlp.record import decode_span_event, encode_span_event
from tocsin.schemas.codec import WideEventDecoder

EVENTS = 20_000
REPEATS = 3
PARTITIONS = 6
T0_NS = 1_714_564_800_000_000_000
SPANS_PER_RECORD = 500  # 100 traces of 5 spans

Item = tuple[dict[str, Any], str, int, int]  # event, source, offset, index


def make_items(events: int) -> list[Item]:
    """~``events`` entry-span events (3 per trace) with the span position each would
    carry: record r of partition r % 6, index within the record."""
    traces = -(-events // 3)
    spans = workload(traces, set(range(0, traces, 33)), T0_NS)
    items: list[Item] = []
    for record, first in enumerate(range(0, len(spans), SPANS_PER_RECORD)):
        payload = proto(spans[first:first + SPANS_PER_RECORD])
        source = f"otlp_spans:{record % PARTITIONS}"
        items += [(event, source, record // PARTITIONS, index) for index, event in
                  enumerate(wide_events(decode_batch(payload).spans))]
    return items


def json_path(items: list[Item]) -> None:
    decode = WideEventDecoder()
    dumps = orjson.dumps
    for event, _, _, _ in items:
        decode(dumps(event))


def json_with_header(items: list[Item]) -> None:
    decode = WideEventDecoder()
    dumps = orjson.dumps
    for event, source, offset, index in items:
        header = f"{source}:{offset}:{index}".encode()
        decode(dumps(event))
        topic_partition, _, rest = header.decode().rpartition(":")
        src, _, off = topic_partition.rpartition(":")
        _ = (src, (int(off), int(rest)))  # what span_source returns


def binary_path(items: list[Item]) -> None:
    for event, source, offset, index in items:
        decode_span_event(encode_span_event(event, source, offset, index))


def binary_encode(items: list[Item]) -> None:
    for event, source, offset, index in items:
        encode_span_event(event, source, offset, index)


def binary_decode(records: list[bytes]) -> None:
    for data in records:
        decode_span_event(data)


def binary_cold(items: list[Item]) -> None:
    tails, strings = rec._TAILS, rec._STRINGS  # noqa: SLF001 - defeating the memos
    for event, source, offset, index in items:
        tails.clear()
        strings.clear()
        decode_span_event(encode_span_event(event, source, offset, index))


def best(run: Callable[[Any], None], items: list[Any]) -> float:
    """Best seconds of REPEATS runs over every item."""
    times = []
    for _ in range(REPEATS):
        gc.collect()
        start = time.perf_counter()
        run(items)
        times.append(time.perf_counter() - start)
    return min(times)


def check(items: list[Item]) -> None:
    """The binary path must give the detector what the JSON path gives (outside timing)."""
    decode = WideEventDecoder()
    for event, source, offset, index in items:
        got, got_source, position = decode_span_event(
            encode_span_event(event, source, offset, index))
        want = decode(orjson.dumps(event))
        assert (got_source, position) == (source, (offset, index))
        assert family_of(got) == family_of(want)
        assert failing_downstream(got) == failing_downstream(want)
        for key in ("event_time_ms", "service", "env", "step", "status", "service_version",
                    "trace_id"):
            assert got[key] == want[key], key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.span_record")
    parser.add_argument("--events", type=int, default=EVENTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    items = make_items(args.events)
    n = len(items)
    check(items)
    failing = sum(e["status"] != "ok" for e, _, _, _ in items)
    json_bytes = sum(len(orjson.dumps(e)) for e, _, _, _ in items) / n
    bin_sizes = [len(encode_span_event(*item)) for item in items]
    print(f"{n} entry-span events ({failing} failing), built in "
          f"{time.perf_counter() - started:.1f} s; Python {sys.version.split()[0]}")
    print(f"bytes per event: JSON {json_bytes:.0f}, binary {sum(bin_sizes) / n:.0f} "
          f"(min {min(bin_sizes)}, max {max(bin_sizes)})")
    results = {}
    for label, run in (("(a) JSON: orjson.dumps + WideEventDecoder", json_path),
                       ("(a+) JSON + span-position header", json_with_header),
                       ("(b) binary: encode + decode", binary_path),
                       ("(b-cold) binary, memos cleared per event", binary_cold)):
        seconds = best(run, items)
        results[label[:label.index(")") + 1]] = seconds
        print(f"{label:<44} {seconds / n * 1e6:6.2f} us/event  {n / seconds:>10,.0f} "
              f"events/s")
    records = [encode_span_event(*item) for item in items]
    for label, seconds in (("(b-enc) binary encode only (span intake)", best(binary_encode, items)),
                           ("(b-dec) binary decode only (detector)", best(binary_decode, records))):
        print(f"{label:<44} {seconds / n * 1e6:6.2f} us/event")
    a, b = results["(a)"], results["(b)"]
    print(f"ratio (b)/(a) = {b / a:.2f}   (b)/(a+) = {b / results['(a+)']:.2f}   "
          f"(b-cold)/(a) = {results['(b-cold)'] / a:.2f}")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
