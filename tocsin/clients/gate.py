"""``tocsin gate``: may this service be deployed now? For CI and deploy pipelines.

The answer comes from a running worker (``--worker URL``, else the worker that holds
``--db``, as ``tocsin incident`` finds it): its ``/healthz`` first (a worker that is not up,
or whose projection has not caught up with the log, cannot tell), then one parameterised
``POST /v1/query`` for the service's open incidents (status ``active`` or ``recovering``)
with their phase and the latest report's cause. ``--service`` and ``--env`` travel as query
parameters, never inside the SQL text.

Exit codes: 0 no open incident, 1 open incidents (listed one per line), 2 cannot tell (no
worker, not ready, refused) or bad arguments. A pipeline tells "on fire" from "cannot
tell" by the code.
"""

from __future__ import annotations

import json
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)

OPEN_STATUSES = ("active", "recovering")
NAME_MAX = 256  # characters of --service / --env

# Parameters: $1 service, $2 env (NULL = every env). The statuses are constants.
OPEN_INCIDENTS_SQL = """
SELECT i.incident_id, i.family, i.env, i.status, coalesce(i.phase, 'triggered') AS phase,
       r.cause_kind, i.onset_ms
FROM incidents i
LEFT JOIN (SELECT incident_id, arg_max(cause_kind, written_seq) AS cause_kind
           FROM triage_reports GROUP BY incident_id) r USING (incident_id)
WHERE i.service = $1 AND ($2::VARCHAR IS NULL OR i.env = $2)
  AND i.status IN ('active', 'recovering')
ORDER BY i.onset_ms, i.incident_id
"""


class CannotTell(RuntimeError):
    """The gate could not learn the answer; the message says why (exit 2)."""


# ---------------------------------------------------------------------- HTTP


def auth_headers() -> dict[str, str]:
    from tocsin.clients.query import _auth

    return _auth()


def http_json(url: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request (POST when ``body`` is given); any HTTP
    status comes back. :class:`CannotTell` when nothing answers or the answer is not
    JSON."""
    data = None if body is None else json.dumps(body).encode()
    headers = {**auth_headers(), **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CannotTell(f"no answer from {url}: {reason}") from exc
    try:
        return status, json.loads(raw)
    except ValueError as exc:
        raise CannotTell(f"{url} answered {status} with something that is not JSON "
                         "(is it a Tocsin worker?)") from exc


def refusal(status: int, body: Any) -> str:
    """The worker's refusal as one sentence."""
    message = body.get("error") if isinstance(body, dict) else None
    message = str(message or f"HTTP {status}")
    if status == 401:
        message += ": the worker wants an API token (set TOCSIN_API_TOKEN)"
    return f"{message} (HTTP {status})"


def resolve_worker(worker: str | None, db: str | None) -> str:
    """The worker's base URL: ``--worker``, else the worker that holds the database."""
    from tocsin.clients.incident import worker_url
    from tocsin.clients.query import QueryError

    if worker is not None:
        return worker  # checked by its option's callback
    if db is None:
        db = settings_or_usage().db
    try:
        return worker_url(db, worker)
    except QueryError as exc:
        raise CannotTell(str(exc)) from exc


def settings_or_usage() -> Any:
    """The worker's settings from the environment; invalid ones are a usage error."""
    from tocsin.streams.worker.settings import Settings

    try:
        return Settings()
    except Exception as exc:  # pydantic.ValidationError: a usage problem, not a crash
        raise click.UsageError(f"the TOCSIN_* environment is not valid: {exc}") from exc


def check_worker_url(ctx: click.Context, param: click.Parameter, value: str | None
                     ) -> str | None:
    if value is None:
        return None
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise click.BadParameter(f"must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A service or env name as the events carry it: not empty, no control characters,
    at most NAME_MAX characters. Never part of SQL text either way (query parameters)."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be empty")
    if len(value) > NAME_MAX:
        raise click.BadParameter(f"longer than {NAME_MAX} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise click.BadParameter("contains control characters")
    return value


# ---------------------------------------------------------------------- the gate


def open_incidents(base: str, service: str, env: str | None, timeout_s: float = 30.0
                   ) -> list[dict[str, Any]]:
    """The service's open incidents, oldest onset first; :class:`CannotTell` when the
    worker cannot answer for them."""
    status, health = http_json(f"{base}/healthz", timeout_s=timeout_s)
    if status != 200 or not isinstance(health, dict):
        raise CannotTell(f"{base}/healthz: {refusal(status, health)}")
    if health.get("role") == "detect":
        raise CannotTell(f"the worker at {base} runs role detect and keeps no DuckDB "
                         "projection: ask a worker of role all or project")
    if health.get("status") != "ok":
        down = sorted(k for k, up in (health.get("parts") or {}).items() if not up)
        raise CannotTell(f"the worker at {base} is {health.get('status')} (not up: "
                         f"{', '.join(down) or '?'}); its incidents may be incomplete")
    if not health.get("projection_caught_up"):
        raise CannotTell(f"the worker at {base} is still catching up with the log; its "
                         "incidents may be incomplete")
    status, body = http_json(f"{base}/v1/query",
                             {"sql": OPEN_INCIDENTS_SQL, "params": [service, env]},
                             timeout_s=timeout_s)
    if status != 200 or not isinstance(body, dict):
        raise CannotTell(f"{base}/v1/query: {refusal(status, body)}")
    return [incident_row(dict(zip(body["columns"], row, strict=True)))
            for row in body["rows"]]


def incident_row(row: dict[str, Any]) -> dict[str, Any]:
    from tocsin.processors.render import iso

    onset_ms = row.get("onset_ms")
    return {"incident_id": row["incident_id"], "family": row["family"], "env": row["env"],
            "status": row["status"], "phase": row.get("phase") or "triggered",
            "cause_kind": row.get("cause_kind"), "onset_ms": onset_ms,
            "onset": iso(int(onset_ms)) if onset_ms is not None else None}


def verdict(service: str, env: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` answer."""
    return {"service": service, "env": env, "open": rows, "ok": not rows}


def incident_line(row: dict[str, Any]) -> str:
    """One open incident: id, family, env, status, phase, cause kind, onset."""
    return "  ".join(str(v) for v in (
        row["incident_id"], row["family"], row["env"], row["status"], row["phase"],
        f"cause={row['cause_kind'] or '-'}", f"onset={row['onset'] or '-'}"))


def summary_line(answer: dict[str, Any]) -> str:
    where = answer["service"] + (f" ({answer['env']})" if answer["env"] else "")
    n = len(answer["open"])
    if not n:
        return f"gate: {where}: no open incident"
    return f"gate: {where}: {n} open incident{'s' if n > 1 else ''}"


def exit_code(answer: dict[str, Any]) -> int:
    return 0 if answer["ok"] else 1


@click.command(name="gate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--service", required=True, metavar="NAME", callback=check_name,
              help="The service to gate (as the events name it).")
@click.option("--env", metavar="ENV", callback=check_name,
              help="Only incidents of this env (default: every env).")
@click.option("--worker", metavar="URL", callback=check_worker_url,
              help="The worker's HTTP base URL (default: the running worker that holds "
                   "--db).")
@click.option("--db", type=click.Path(dir_okay=False), default=None,
              help="DuckDB file whose worker to ask (default: the worker's setting).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gate_command(service: str, env: str | None, worker: str | None, db: str | None,
                 as_json: bool) -> None:
    """Exit 0 when SERVICE has no open incident (active or recovering), 1 listing them,
    2 when the worker cannot tell (unreachable, not ready, refused).

    \b
    tocsin gate --service checkout --env prod || exit $?
    """
    try:
        base = resolve_worker(worker, db)
        answer = verdict(service, env, open_incidents(base, service, env))
    except CannotTell as exc:
        err.print(f"[red]gate: cannot tell:[/] {escape(str(exc))}")
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(answer, sort_keys=True))
    else:
        for row in answer["open"]:
            click.echo(incident_line(row))
        err.print(escape(summary_line(answer)))
    sys.exit(exit_code(answer))


if __name__ == "__main__":  # pragma: no cover - `python -m tocsin.clients.gate ...`
    gate_command()
