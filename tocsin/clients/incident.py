"""Client side of ``tocsin incident``: show an incident, act on it, or fetch its latest
report (for ``--plot``), through a worker's HTTP port (``--worker URL``, else the worker
that holds the database, as ``tocsin query`` finds it). Actions are decided by the worker's
detection (ADR 0016); nothing here writes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tocsin.clients.query import QueryError, _auth, _worker_port


def worker_url(db: str | Path, worker: str | None) -> str:
    if worker:
        parsed = urllib.parse.urlsplit(worker)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise QueryError(f"--worker must be an http(s) URL, got {worker!r}")
        return worker.rstrip("/")
    port = _worker_port(db)
    if port is None:
        raise QueryError(f"no running worker holds {db}: start one with `tocsin run`, or "
                         "name one with --worker URL")
    return f"http://127.0.0.1:{port}"


def _call(request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {"error": str(exc.reason)}
        if exc.code == 401:
            body["error"] = f"{body.get('error')}: the worker wants an API token (set " \
                            "TOCSIN_API_TOKEN)"
        return int(exc.code), body
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise QueryError(f"no answer from {request.full_url}: {exc}") from exc


def show(base: str, incident_id: str) -> tuple[int, dict[str, Any]]:
    quoted = urllib.parse.quote(incident_id, safe="")
    return _call(urllib.request.Request(f"{base}/v1/incidents/{quoted}", headers=_auth()))


def latest_report(base: str, incident_id: str) -> tuple[int, dict[str, Any]]:
    """The incident's latest triage report, as the worker stores it (its JSON)."""
    quoted = urllib.parse.quote(incident_id, safe="")
    return _call(urllib.request.Request(f"{base}/v1/incidents/{quoted}/report",
                                        headers=_auth()))


def act(base: str, incident_id: str, body: dict[str, Any], key: str | None = None
        ) -> tuple[int, dict[str, Any]]:
    """POST the action; one Idempotency-Key per call (a retry inside urllib is the same
    action, a second call a new one)."""
    quoted = urllib.parse.quote(incident_id, safe="")
    request = urllib.request.Request(
        f"{base}/v1/incidents/{quoted}/actions", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json",
                                "Idempotency-Key": key or uuid.uuid4().hex, **_auth()})
    return _call(request)


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    minutes, ms = divmod(int(value), 60_000)
    return f"{minutes} min {ms / 1000:.0f} s" if minutes else f"{ms / 1000:.1f} s"


def describe(incident: dict[str, Any]) -> list[str]:
    """An incident as lines for a terminal: what, where it stands, who did what."""
    lines = [
        f"{incident['incident_id']}  {incident['family']}  ({incident['env']})",
        f"  status {incident['status']}, phase {incident.get('phase') or 'triggered'}, "
        f"seq {incident['seq']}",
        f"  errors {incident['error_count']} (peak window {incident['peak_count']}), "
        f"onset_ms {incident['onset_ms']}",
    ]
    for label, by, at in (("acknowledged", "acknowledged_by", "acknowledged_ms"),
                          ("mitigated", "mitigated_by", "mitigated_ms")):
        if incident.get(by):
            lines.append(f"  {label} by {incident[by]} at_ms {incident[at]}")
    if incident.get("resolved_by"):
        lines.append(f"  resolved by {incident['resolved_by']}")
    lines.append(f"  MTTA {_ms(incident.get('mtta_ms'))}, MTTR {_ms(incident.get('mttr_ms'))}")
    for a in incident.get("actions") or ():
        what = a["kind"]
        if a.get("title"):
            what += f" {a['title']!r} ({a['hypothesis_status']})"
        note = f": {a['note']}" if a.get("note") else ""
        lines.append(f"  #{a['seq']} {what} by {a['actor']} at_ms {a['at_ms']}{note}")
    return lines
