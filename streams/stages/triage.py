"""Triage wiring: incidents and signals in, report versions out (ADR 0009).

Runs inside the projection (one writer per DuckDB file): each batch of lifecycle events and
signals is folded by the pure :class:`~tocsin.processors.triage.Triage`; every report whose
hash changed is published on the reports topic (key = incident id, value = the report's
canonical bytes), acknowledged, and then written to DuckDB with the batch's positions.

Restart: the fold is rebuilt from the two topics up to the positions DuckDB holds (nothing
is emitted while rebuilding), and the reports topic is read once so that a version
published just before a crash is not published again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import orjson
from aiokafka import ConsumerRecord
from fastavro.validation import validate

from tocsin.processors.otlp import OtlpError, decode_batch
from tocsin.processors.report import canonical_json
from tocsin.processors.signals.model import FIELDS as SIGNAL_FIELDS
from tocsin.processors.signals.model import IntakeError, Signal
from tocsin.processors.traces import TraceAssembler
from tocsin.processors.triage import Triage
from tocsin.schemas.codec import SIGNAL, SchemaError, avro_schema, decode_incident

log = logging.getLogger("tocsin.triage")

Record: TypeAlias = ConsumerRecord[bytes, bytes]
SPAN_IDLE_GRACE_MS = 5 * 60_000


def encode_signal(signal: Signal, encoding: str = "avro") -> bytes:
    if encoding == "json":
        return orjson.dumps(signal.to_dict(), option=orjson.OPT_SORT_KEYS)
    return avro_schema(SIGNAL).encode_soe(signal.to_dict())


def decode_signal(data: bytes) -> Signal:
    """A signal record: Avro single-object encoding of signal.v1, or its JSON form (the
    same fields with the same types; ``signal_id`` may be left out, it is computed, and
    other keys are ignored). Whatever is not a valid signal raises :class:`SchemaError`,
    naming the field when one failed."""
    if data[:1] == b"\xc3":
        raw = avro_schema(SIGNAL).decode_soe(data)
    else:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"signal is neither Avro nor JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise SchemaError("a signal is a JSON object")
        _check_json_signal(raw)
    try:
        return Signal(**{k: raw[k] for k in SIGNAL_FIELDS if k != "signal_id" and k in raw})
    except IntakeError as exc:  # an integer outside its Avro range (a damaged varint)
        raise SchemaError(f"not a valid signal.v1: {exc.problem}", exc.field) from exc
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"not a valid signal.v1: {exc}") from exc


def _check_json_signal(raw: dict[str, Any]) -> None:
    """The JSON form held to signal.v1's types, as the Avro form is by its decoder: every
    field without a default present, every field given of its type (null only where the
    schema allows it), integers within int and long."""
    schema = avro_schema(SIGNAL).parsed
    record = {k: raw[k] for k in SIGNAL_FIELDS if k in raw}
    record.setdefault("signal_id", "")  # computed from source and dedup key
    if validate(record, schema, raise_errors=False):
        return
    fields: list[dict[str, Any]] = cast(dict[str, Any], schema)["fields"]
    for f in fields:
        name = f["name"]
        if name not in record and "default" not in f:
            raise SchemaError("required by signal.v1", name)
        if name in record and not validate(record[name], f["type"], raise_errors=False):
            wanted = _avro_kind(f["type"])
            raise SchemaError(f"must be {wanted}, got {_json_kind(record[name], wanted)}",
                              name)
    raise SchemaError("not a valid signal.v1 record")  # a field fails above, as a rule


def _avro_kind(avro_type: Any) -> str:
    """An Avro type as the error message says it."""
    if isinstance(avro_type, list):
        return " or ".join(_avro_kind(t) for t in avro_type)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "enum":
            return "one of " + ", ".join(avro_type["symbols"])
        if avro_type["type"] == "map":
            return f"an object of {avro_type['values']} values"
        return _avro_kind(avro_type["type"])
    return {"null": "null", "string": "a string", "int": "an integer within 32 bits",
            "long": "an integer within 64 bits"}.get(str(avro_type), str(avro_type))


def _json_kind(value: object, wanted: str) -> str:
    """What a JSON value is beside what was ``wanted``, never the value itself (a record
    may be hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "one out of range" if "integer" in wanted else "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "another string" if wanted.startswith("one of") else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object with a value of another type" if "object" in wanted else "an object"


def _where(rec: Record) -> list[Any]:
    return [rec.topic, rec.partition, rec.offset]


MAX_DELIVERIES = 200_000
"""Deliveries remembered for idempotency: a retry later than this many keyed signals
counts again (ADR 0014)."""


def _delivery(rec: Record) -> str | None:
    for key, value in rec.headers or ():
        if key == "tocsin.delivery":
            return bytes(value or b"").decode(errors="replace")
    return None


class TriageLoop:
    """The fold plus what a report needs beside it: provenance and published versions."""

    def __init__(self, incidents_topic: str, signals_topic: str,
                 spans_topic: str | None = None) -> None:
        self.incidents_topic = incidents_topic
        self.signals_topic = signals_topic
        self.spans_topic = spans_topic
        self.triage = Triage()
        # Spans of one trace arrive on any partition; the projection reads them all, so
        # traces assemble here (ADR 0012), closed by event-time inactivity.
        self.assembler = TraceAssembler(external_watermark=True)
        self.span_marks: dict[int, int] = {}  # span partition -> largest span end read
        self.provenance: dict[str, list[Any]] = {}
        self.published: set[tuple[str, str]] = set()
        self.rejected = 0
        self.rejects: list[tuple[Record, str]] = []  # since the last take_rejects()
        # (delivery id, signal id) of signals posted with an Idempotency-Key, oldest first
        self.deliveries: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.redelivered = 0

    def restore(self, records: Iterable[Record], reports: Iterable[Record]) -> None:
        """Fold what DuckDB already reflects, emitting nothing; note published versions.

        The last hash of each incident is what this fold computes at DuckDB's positions,
        never the newest on the reports topic: a version published just before a crash,
        and not yet in DuckDB, is computed again from the replayed batch and written (it is
        not published twice: ``published`` knows it)."""
        for rec in records:
            self._apply(rec)
        self.rejects.clear()  # dead-lettered when they were first read
        self._advance_traces()
        self.triage.flush()
        for rec in reports:
            try:
                report = orjson.loads(rec.value or b"{}")
                self.published.add((report["incident"]["id"], report["report_hash"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue

    def feed(self, records: Iterable[Record]) -> list[dict[str, Any]]:
        """Fold a batch, then evaluate each incident it touched once: at most one version
        an incident a batch, by incident id."""
        for rec in records:
            self._apply(rec)
        self._advance_traces()
        reports = self.triage.flush()
        self._prune()
        return reports

    def _apply_spans(self, rec: Record) -> None:
        try:
            spans = decode_batch(rec.value).spans
        except OtlpError:
            return  # the span intake dead-letters it with the reason
        for span in spans:
            for closed in self.assembler.add(span):
                self.triage.apply_trace(closed)
            if span.end_ms > self.span_marks.get(rec.partition, -1):
                self.span_marks[rec.partition] = span.end_ms

    def _advance_traces(self) -> None:
        """Close traces up to the least of the span partitions' marks: event time every
        partition has surely reached, so how partitions interleave does not decide which
        spans a trace gets. A partition quiet for longer than the grace no longer holds
        it back (as a silent service in ADR 0002)."""
        if not self.span_marks:
            return
        newest = max(self.span_marks.values())
        live = [m for m in self.span_marks.values() if m >= newest - SPAN_IDLE_GRACE_MS]
        for closed in self.assembler.flush(min(live)):
            self.triage.apply_trace(closed)

    def _prune(self) -> None:
        """Forget where forgotten signals and incidents were read (bounded like them)."""
        if len(self.provenance) <= 2 * (len(self.triage.signals) + len(self.triage.incidents)
                                        ) + 1_000:
            return
        alive = set(self.triage.signals) | set(self.triage.incidents)
        self.provenance = {k: v for k, v in self.provenance.items()
                           if k.split(":")[1] in alive}

    def _apply(self, rec: Record) -> None:
        if rec.topic == self.spans_topic:
            self._apply_spans(rec)
            return
        try:
            if rec.topic == self.incidents_topic:
                event = decode_incident(rec.value or b"")
                self.provenance[f"incident:{event['incident_id']}:{event['seq']}"] = \
                    _where(rec)
                self.triage.apply_incident_event(event, event.get("downstream"))
                return
            signal = decode_signal(rec.value or b"")
            delivery = _delivery(rec)
            if delivery is not None:
                seen = (delivery, signal.signal_id)
                if seen in self.deliveries:
                    self.redelivered += 1  # a retried request: applied once already
                    return
                self.deliveries[seen] = None
                if len(self.deliveries) > MAX_DELIVERIES:
                    self.deliveries.popitem(last=False)
            self.provenance[f"signal:{signal.signal_id}"] = _where(rec)
            self.triage.apply_signal(signal)
        except (SchemaError, KeyError, TypeError, ValueError) as exc:
            self.rejected += 1
            self.rejects.append((rec, f"{type(exc).__name__}: {exc}"))
            log.warning("triage skipped %s:%s:%s: %s", rec.topic, rec.partition,
                        rec.offset, exc)

    def take_rejects(self) -> list[tuple[Record, str]]:
        """Records the fold could not read since the last call, with the reason."""
        taken, self.rejects = self.rejects, []
        return taken

    def provenance_of(self, report: dict[str, Any]) -> dict[str, list[Any]]:
        """Where each cited record was read: beside the report, never inside its hash."""
        incident = report["incident"]
        keys = [f"incident:{incident['id']}:{seq}" for seq in range(1, incident["seq"] + 1)]
        keys += [f"signal:{row['id']}" for row in report["evidence"]
                 if row["kind"] != "incident"]
        return {k: self.provenance[k] for k in keys if k in self.provenance}


def report_rows(report: dict[str, Any], provenance: dict[str, list[Any]]
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The DuckDB rows of one report version: the version and its evidence."""
    incident, cause = report["incident"], report["cause"]
    version = {
        "incident_id": incident["id"], "report_hash": report["report_hash"],
        "evidence_fingerprint": report["evidence_fingerprint"],
        "generated_at_ms": report["generated_at_ms"], "status": incident["status"],
        "incident_seq": incident["seq"], "cause_kind": cause["kind"],
        "cause_confidence": cause["confidence"], "cause_rule": cause["rule_id"],
        "body": canonical_json(report).decode(),
        "provenance": orjson.dumps(provenance, option=orjson.OPT_SORT_KEYS).decode(),
    }
    evidence = [{"incident_id": incident["id"], "report_hash": report["report_hash"],
                 "kind": row["kind"], "id": row["id"], "source": row["source"],
                 "summary": row["summary"], "time_ms": row["time_ms"]}
                for row in report["evidence"]]
    return version, evidence


def signal_row(folded: Any) -> dict[str, Any]:
    s = folded.signal
    row = {k: v for k, v in s.to_dict().items() if k not in ("labels", "annotations")}
    row.update(occurrences=folded.occurrences, first_seen_ms=folded.first_seen_ms,
               last_seen_ms=folded.last_seen_ms,
               labels=orjson.dumps(s.labels, option=orjson.OPT_SORT_KEYS).decode(),
               annotations=orjson.dumps(s.annotations, option=orjson.OPT_SORT_KEYS).decode())
    return row
