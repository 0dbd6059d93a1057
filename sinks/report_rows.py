"""The DuckDB rows of what the projection reads: a report version with its evidence, and a
folded signal."""

from __future__ import annotations

from typing import Any

import orjson

from tocsin.processors.report import canonical_json


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
