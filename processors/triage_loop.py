"""One triage partition's fold plus what a report needs beside it: where each cited record
was read (provenance, outside the report's bytes and hash) and the deliveries already
applied (a retried webhook counts once, ADR 0014). Pure: the stage gives it decoded
records and their positions."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from tocsin.processors.signals.model import Signal
from tocsin.processors.traces.blast import TraceSummary
from tocsin.processors.triage import Triage, TriageConfig

MAX_DELIVERIES = 200_000
"""Deliveries remembered for idempotency: a retry later than this many keyed signals
counts again (ADR 0014)."""


class TriageLoop:
    """One partition's fold plus what a report needs beside it: where each cited record
    was read (provenance) and the deliveries already applied."""

    def __init__(self, triage: Triage | None = None) -> None:
        self.triage = triage or Triage()
        self.provenance: dict[str, list[Any]] = {}
        # (delivery id, signal id) of signals posted with an Idempotency-Key, oldest first
        self.deliveries: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.redelivered = 0

    def apply_incident(self, event: dict[str, Any], where: list[Any]) -> None:
        self.provenance[f"incident:{event['incident_id']}:{event['seq']}"] = where
        self.triage.apply_incident_event(event, event.get("downstream"))

    def apply_signal(self, signal: Signal, delivery: str | None, where: list[Any]) -> None:
        if delivery is not None:
            seen = (delivery, signal.signal_id)
            if seen in self.deliveries:
                self.redelivered += 1  # a retried request: applied once already
                return
            self.deliveries[seen] = None
            if len(self.deliveries) > MAX_DELIVERIES:
                self.deliveries.popitem(last=False)
        self.provenance[f"signal:{signal.signal_id}"] = where
        self.triage.apply_signal(signal)

    def apply_summary(self, summary: TraceSummary, end_ms: int) -> None:
        self.triage.apply_summary(summary, end_ms)

    def flush(self) -> list[dict[str, Any]]:
        """Evaluate each incident touched since the last flush once; the versions whose
        hash changed, by incident id."""
        reports = self.triage.flush()
        self._prune()
        return reports

    def _prune(self) -> None:
        """Forget where forgotten signals and incidents were read (bounded like them)."""
        if len(self.provenance) <= 2 * (len(self.triage.signals) + len(self.triage.incidents)
                                        ) + 1_000:
            return
        alive = set(self.triage.signals) | set(self.triage.incidents)
        self.provenance = {k: v for k, v in self.provenance.items()
                           if k.split(":")[1] in alive}

    def provenance_of(self, report: dict[str, Any]) -> dict[str, list[Any]]:
        """Where each cited record was read: beside the report, never inside its hash."""
        incident = report["incident"]
        keys = [f"incident:{incident['id']}:{seq}" for seq in range(1, incident["seq"] + 1)]
        keys += [f"signal:{row['id']}" for row in report["evidence"]
                 if row["kind"] != "incident"]
        return {k: self.provenance[k] for k in keys if k in self.provenance}

    def snapshot(self) -> dict[str, Any]:
        return {"triage": self.triage.snapshot(), "provenance": self.provenance,
                "deliveries": [list(k) for k in self.deliveries],
                "redelivered": self.redelivered}

    @classmethod
    def restore(cls, snap: dict[str, Any], config: TriageConfig | None = None) -> TriageLoop:
        loop = cls(Triage.restore(snap["triage"], config))
        loop.provenance = dict(snap["provenance"])
        loop.deliveries = OrderedDict((tuple(k), None) for k in snap["deliveries"])
        loop.redelivered = int(snap["redelivered"])
        return loop
