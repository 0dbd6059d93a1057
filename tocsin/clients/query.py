"""Client side of ``tocsin query``: through the running worker's HTTP port when one holds
the database, else the file opened read-only in a query process of our own, with the same
check and limits as the worker's query surface (ADR 0006)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tocsin.streams.query import QueryLimits, run_file_query
from tocsin.streams.worker.announce import alive, worker_file


class QueryError(RuntimeError):
    """The query could not run; the message says why."""


def _worker_port(db: str | Path) -> int | None:
    try:
        info = json.loads(worker_file(db).read_text())
    except (OSError, ValueError):
        return None
    if not info.get("http_port") or not alive(int(info.get("pid", 0))):
        return None
    return int(info["http_port"])


def _auth() -> dict[str, str]:
    """The bearer token this client shows the worker: ``TOCSIN_API_TOKEN``, else the first
    of ``TOCSIN_API_TOKENS`` (the worker's own setting, on the worker's machine)."""
    token = os.environ.get("TOCSIN_API_TOKEN")
    if not token:
        try:
            tokens = json.loads(os.environ.get("TOCSIN_API_TOKENS") or "{}")
            token = next(iter(tokens.values()), None) if isinstance(tokens, dict) else None
        except ValueError:
            token = None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _from_worker(request: urllib.request.Request | str, timeout_s: float) -> bytes | None:
    """The worker's answer; None when no worker answers (the caller falls back to the
    file); a 4xx/5xx becomes a QueryError carrying the worker's message."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code == 401:
            message = f"{message}: the worker wants an API token (set TOCSIN_API_TOKEN)"
        raise QueryError(f"{message} (HTTP {exc.code})" if exc.code in (408, 413, 422, 429)
                         else message) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return None


def _via_worker(port: int, sql: str) -> tuple[list[str], list[list[Any]]] | None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/query", data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json", **_auth()}, method="POST")
    answer = _from_worker(req, 60)
    if answer is None:
        return None
    body = json.loads(answer)
    return body["columns"], body["rows"]


def fetch_report(db: str | Path, incident_id: str, fmt: str) -> bytes:
    """The latest report of an incident, in a format: the same bytes as the HTTP API."""
    from tocsin.streams.web.reports import render_report

    port = _worker_port(db)
    if port is not None:
        answer = _from_worker(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/incidents/{urllib.parse.quote(incident_id)}"
            f"/report?format={urllib.parse.quote(fmt)}", headers=_auth()), 30)
        if answer is not None:
            return answer
    _, rows = run_query(db, "SELECT body FROM triage_reports WHERE incident_id = "
                            f"'{incident_id.replace(chr(39), chr(39) * 2)}' "
                            "ORDER BY written_seq DESC LIMIT 1")
    if not rows:
        raise QueryError(f"no report for {incident_id}")
    return render_report(str(rows[0][0]), fmt)[0]


def _limits() -> QueryLimits:
    """TOCSIN_QUERY_* from the environment, as the worker reads them; the defaults when
    the environment does not make valid settings (the worker would refuse it too)."""
    from pydantic import ValidationError

    from tocsin.streams.worker.settings import Settings

    try:
        return QueryLimits.from_settings(Settings(), nice=0, idle=False)
    except (ValidationError, ValueError):
        return QueryLimits(nice=0, idle=False)


def run_query(db: str | Path, sql: str) -> tuple[list[str], list[list[Any]]]:
    port = _worker_port(db)
    if port is not None:
        found = _via_worker(port, sql)
        if found is not None:
            return found
    if not Path(db).exists():
        raise QueryError(f"no database at {db} (run `tocsin run` or `tocsin demo --db {db}`)")
    answer = run_file_query(db, sql, limits=_limits())
    if answer.status == 503:
        raise QueryError(f"{db} is held by a running worker that serves no HTTP port: "
                         f"{answer.error}")
    if answer.status != 200:
        raise QueryError(str(answer.error))
    body = json.loads(answer.body)
    return body["columns"], body["rows"]
