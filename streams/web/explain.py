"""Explaining one request and measuring a failure's blast radius from the failing-trace
summaries triage keeps (ADR 0012, ADR 0015): ``GET /v1/requests/{id}`` and ``GET
/v1/blast``, what ``tocsin mcp``'s ``explain_request`` and ``blast_radius`` read.

Traces are not projected to DuckDB. What a worker knows of them lives in its triage folds
(:class:`~tocsin.processors.triage.Triage`, one per owned partition of the summaries
topic): the summary of every *failing* trace, by family, the newest ``traces_per_family``
(2,000) of each, for 72 h of event time; and each incident's window, family and first
errors' sample trace ids. So:

- a request is found by its **trace id**, or by the **request id** of a failing wide
  event among the latest ones this worker's detection counted
  (:mod:`tocsin.processors.recent_requests`, not checkpointed); summaries carry no request
  ids. An id that is none of these is not found, and the answer says why;
- a healthy request is never found (only failing traces are summarized);
- a worker answers from the partitions it owns (``searched.partitions``); with several
  detecting workers, ask each or the one that owns the service.

Blast windows are in **event time**: ``window_ms`` up to ``until_ms``, by default the end
of the newest failing trace the folds keep (the stream's "now" as traces tell it), never
the wall clock. Counts use the report's own accumulator
(:class:`~tocsin.processors.traces.blast.BlastRadius`), so a window that covers an
incident's counts what its report's ``snapshots.blast`` counts.

The lookups are pure functions of the folds (:func:`explain_request`, :func:`blast`);
the views read the folds synchronously in the worker's event loop, where triage applies
its inputs between awaits, so each answer sees one consistent state.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tocsin.processors.recent_requests import MOST, RecentRequests
from tocsin.processors.report import IncidentState
from tocsin.processors.traces.blast import BlastRadius, TraceSummary
from tocsin.processors.triage import Triage

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response, View

    from tocsin.streams.worker.app import Worker

    Reader = Callable[[View, Request], Response | None]

DEFAULT_WINDOW_MS = 15 * 60_000  # triage's correlation window
MAX_WINDOW_MS = 72 * 3_600_000  # summaries are kept 72 h of event time
MAX_ID_CHARS = 256
INCIDENT_ROW_FIELDS = ("status", "phase", "acknowledged_by", "acknowledged_ms",
                       "mitigated_by", "resolved_by", "resolved_ms", "updated_ms")

NOT_KEPT = ("Tocsin keeps the summaries of failing traces only (the newest {kept} per "
            "family, for 72 h of event time), keyed by trace id, and each incident's first "
            "errors' sample trace ids; and the request ids of the latest failing wide "
            "events its detection counted ({requests} per partition) since it started. "
            "Look a request up by its trace id, or by the request id of a failing event.")


class BadQuery(ValueError):
    """A query parameter that cannot be honoured; the message says which."""


# ---------------------------------------------------------------- family keys


def split_family(key: str) -> tuple[str, str, str] | None:
    """(service, step, error code) of a family key ``service:step:code`` (``:`` and ``\\``
    escaped by a backslash, :mod:`tocsin.processors.family`); None if it is not one."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def family_matches(key: str, service: str, step: str | None, error_code: str | None
                   ) -> bool:
    parts = split_family(key)
    return parts is not None and parts[0] == service \
        and (step is None or parts[1] == step) \
        and (error_code is None or parts[2] == error_code)


# ---------------------------------------------------------------- what the folds keep


def kept(folds: Iterable[Triage]) -> dict[str, tuple[int, TraceSummary]]:
    """Every kept failing trace once, by trace id: (its end ms, its summary). A trace
    kept by several folds or under several families is one trace (the latest end)."""
    found: dict[str, tuple[int, TraceSummary]] = {}
    for fold in folds:
        for summaries in fold.traces.values():
            for (end_ms, trace_id), summary in summaries.items():
                held = found.get(trace_id)
                if held is None or held[0] < end_ms:
                    found[trace_id] = (end_ms, summary)
    return found


def find(folds: Iterable[Triage], trace_id: str) -> tuple[int, TraceSummary] | None:
    """(end ms, summary) of one kept failing trace (its latest end), None if not kept."""
    found: tuple[int, TraceSummary] | None = None
    for fold in folds:
        for summaries in fold.traces.values():
            for (end_ms, kept_id), summary in summaries.items():
                if kept_id == trace_id and (found is None or found[0] < end_ms):
                    found = (end_ms, summary)
    return found


def _window_end(fold: Triage, incident: IncidentState) -> int:
    """The last trace end an incident counts (as triage counts them): when it resolved,
    else its last error plus the correlation window."""
    if incident.resolved_ms is not None:
        return int(incident.resolved_ms)
    return int(incident.last_error_ms + fold.window_of(incident))


def _incident_ref(fold: Triage, incident: IncidentState, how: str) -> dict[str, Any]:
    f = incident.facts
    return {"incident_id": f.incident_id, "family": incident.family, "env": f.env,
            "service": f.service, "step": f.step, "error_code": f.error_code,
            "status": incident.status, "phase": incident.phase, "seq": incident.seq,
            "onset_ms": f.onset_ms, "last_error_ms": incident.last_error_ms,
            "resolved_ms": incident.resolved_ms,
            "report_hash": fold.last_hash.get(f.incident_id), "matched_by": how}


def _latest(refs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One reference per incident (its highest seq), by onset then id."""
    best: dict[str, dict[str, Any]] = {}
    for ref in refs:
        held = best.get(ref["incident_id"])
        if held is None or held["seq"] < ref["seq"]:
            best[ref["incident_id"]] = ref
    return sorted(best.values(), key=lambda r: (r["onset_ms"], r["incident_id"]))


def incidents_for_trace(folds: Sequence[Triage], trace_id: str, end_ms: int | None,
                        families: Sequence[str]) -> list[dict[str, Any]]:
    """The incidents a failing trace counts for: those of one of its families whose
    window holds its end (``matched_by`` ``window``), and those that cite it among
    their first errors' sample traces (``sample_trace``)."""
    refs = []
    for fold in folds:
        for incident in fold.incidents.values():
            window = fold.window_of(incident)
            if end_ms is not None and incident.family in families and \
                    incident.facts.onset_ms - window <= end_ms <= _window_end(fold, incident):
                refs.append(_incident_ref(fold, incident, "window"))
            elif trace_id in incident.sample_traces:
                refs.append(_incident_ref(fold, incident, "sample_trace"))
    return _latest(refs)


def searched(folds: Sequence[Triage], partitions: Sequence[int]) -> dict[str, Any]:
    return {"partitions": list(partitions),
            "kept_failing_traces": len({t for fold in folds for s in fold.traces.values()
                                        for _, t in s}),
            "traces_per_family": min((f.config.traces_per_family for f in folds),
                                     default=0)}


def _kept_note(folds: Sequence[Triage]) -> str:
    return NOT_KEPT.format(kept=max((f.config.traces_per_family for f in folds),
                                    default=2_000), requests=f"{MOST:,}")


# ---------------------------------------------------------------- one request


def normal_id(raw: str) -> str:
    """A trace id as summaries hold it: OTLP trace ids are lower-case hex."""
    value = raw.strip()
    if not value:
        raise BadQuery("an id is required")
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise BadQuery(f"an id is printable, at most {MAX_ID_CHARS} characters")
    bare = value.replace("-", "")
    return value.lower() if bare and all(c in string.hexdigits for c in bare) else value


def explain_request(folds: Sequence[Triage], raw_id: str,
                    partitions: Sequence[int] = (),
                    requests: Sequence[RecentRequests] = ()) -> dict[str, Any] | None:
    """What the folds know of a request, by its trace id: its path root → where it
    failed, the failing step, its families and the incidents it counts for; None when
    nothing is known of it."""
    wanted = normal_id(raw_id)
    candidates = [wanted] + ([wanted.replace("-", "")] if "-" in wanted else [])
    for trace_id in candidates:
        held = find(folds, trace_id)
        if held is not None:
            return _explained(folds, raw_id, trace_id, held[0], held[1], partitions)
    for trace_id in candidates:
        incidents = incidents_for_trace(folds, trace_id, None, ())
        if incidents:
            return {
                "id": raw_id, "trace_id": trace_id, "matched": "sample_trace",
                "end_ms": None, "complete": None, "capture": "missing", "path": [],
                "failing_step": None, "family": incidents[0]["family"],
                "families": sorted({r["family"] for r in incidents}),
                "services": [], "distinct_users": None,
                "incident": incidents[0], "incidents": incidents,
                "searched": searched(folds, partitions),
                "notes": ["This trace id is one of the incident's first errors' sample "
                          "traces, but no summary of it is kept: its spans did not reach "
                          "trace assembly (wide events without OTLP spans), its trace has "
                          "not closed yet (30 s of event-time quiet), or it was forgotten. "
                          "The failing step shown is the incident's."],
            }
    return _by_request_id(folds, raw_id, requests, partitions)


def _by_request_id(folds: Sequence[Triage], raw_id: str, requests: Sequence[RecentRequests],
                   partitions: Sequence[int]) -> dict[str, Any] | None:
    """A failing request by the request id its wide event carried (the latest failing
    requests detection counted, :mod:`tocsin.processors.recent_requests`): through its
    trace when a summary of it is kept, else from its event: its step, family and the
    incidents whose family and window hold it."""
    failed = next((r for rs in requests if (r := rs.get(raw_id.strip())) is not None), None)
    if failed is None:
        return None
    if failed.trace_id:
        held = find(folds, failed.trace_id)
        if held is not None:
            return {**_explained(folds, raw_id, failed.trace_id, held[0], held[1],
                                 partitions), "matched": "request_id"}
    family = failed.family
    incidents = incidents_for_trace(folds, failed.trace_id or "", failed.t_ms, [family.key])
    notes = ["Found by the request id of a failing wide event (the latest failing requests "
             "this worker's detection counted since it started). No summary of its trace "
             "is kept (no OTLP spans for it, or not closed yet): its path is unknown."]
    if not incidents:
        notes.append("No incident's family and window hold this request (its failure did "
                     "not spike, or the incident is another worker's partition).")
    return {
        "id": raw_id, "trace_id": failed.trace_id, "matched": "request_id",
        "end_ms": failed.t_ms, "complete": None, "capture": "missing", "path": [],
        "failing_step": {"service": family.service, "step": family.step,
                         "error_code": family.error_code},
        "family": family.key, "families": [family.key], "services": [family.service],
        "distinct_users": None, "incident": incidents[0] if incidents else None,
        "incidents": incidents, "searched": searched(folds, partitions), "notes": notes,
    }


def _explained(folds: Sequence[Triage], raw_id: str, trace_id: str, end_ms: int,
               summary: TraceSummary, partitions: Sequence[int]) -> dict[str, Any]:
    p = summary.propagation
    origin = p.origin if p is not None else None
    family = None
    if origin is not None:
        family = next((k for k in summary.families
                       if (parts := split_family(k)) is not None
                       and parts[:2] == (origin.service, origin.step)), None) \
            or next((k for k in summary.families
                     if (parts := split_family(k)) is not None
                     and parts[0] == origin.service), None)
    if family is None and summary.families:
        family = summary.families[0]
    incidents = incidents_for_trace(folds, trace_id, end_ms, summary.families)
    incident = next((r for r in incidents if r["family"] == family), None) \
        or (incidents[0] if incidents else None)
    notes = []
    if p is None:
        notes.append("No propagation: no span of this trace is marked as failing where "
                     "it started.")
    elif p.capture == "partial" or not summary.complete:
        notes.append("The trace is incomplete (spans missing or over the per-trace cap): "
                     "the path is a lower bound, never an invented link.")
    if not incidents:
        notes.append("No incident's family and window hold this trace (its failure did "
                     "not spike, or the incident is another worker's partition).")
    return {
        "id": raw_id, "trace_id": trace_id, "matched": "trace_id",
        "end_ms": end_ms, "complete": summary.complete,
        "capture": "missing" if p is None else p.capture,
        "path": [h.to_dict() for h in p.path] if p is not None else [],
        "failing_step": None if origin is None else origin.to_dict(),
        "family": family, "families": list(summary.families),
        "services": list(summary.services), "distinct_users": len(summary.users),
        "incident": incident, "incidents": incidents,
        "searched": searched(folds, partitions), "notes": notes,
    }


# ---------------------------------------------------------------- blast radius


def window_of(params: Mapping[str, str]) -> tuple[str, str | None, str | None, int, int | None]:
    """(service, step, error_code, window_ms, until_ms) of a blast query's parameters."""
    service = (params.get("service") or "").strip()
    if not service:
        raise BadQuery("service is required (the failing service, as in a family key)")
    step = params.get("step") or None
    error_code = params.get("error_code") or None

    def integer(name: str, default: int | None, least: int, most: int) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadQuery(f"{name} must be an integer, got {raw[:40]!r}") from None
        if not least <= value <= most:
            raise BadQuery(f"{name} must lie in [{least}, {most}], got {value}")
        return value

    window_ms = integer("window_ms", DEFAULT_WINDOW_MS, 1, MAX_WINDOW_MS)
    assert window_ms is not None
    until_ms = integer("until_ms", None, 0, (1 << 63) - 1)
    for name, value in (("service", service), ("step", step), ("error_code", error_code)):
        if value is not None and (len(value) > MAX_ID_CHARS or not value.isprintable()):
            raise BadQuery(f"{name} is printable, at most {MAX_ID_CHARS} characters")
    return service, step, error_code, window_ms, until_ms


def blast(folds: Sequence[Triage], service: str, step: str | None = None,
          error_code: str | None = None, window_ms: int = DEFAULT_WINDOW_MS,
          until_ms: int | None = None, partitions: Sequence[int] = ()) -> dict[str, Any]:
    """How far the failures of the families matching (service, step?, error_code?)
    spread within ``window_ms`` of event time up to ``until_ms`` (default: the end of the
    newest kept failing trace): affected requests, distinct users, services, families,
    sample traces, and the incidents of those families the window overlaps."""
    summaries = kept(folds)
    horizon = max((end for end, _ in summaries.values()), default=None)
    to_ms = until_ms if until_ms is not None else horizon
    families = sorted({k for fold in folds for k in fold.traces
                       if family_matches(k, service, step, error_code)})
    wanted = set(families)
    matching = sorted((end, s.trace_id, s) for end, s in summaries.values()
                      if wanted.intersection(s.families))
    radius = BlastRadius(f"{service}:{step or '*'}:{error_code or '*'}", service)
    from_ms = None if to_ms is None else to_ms - window_ms
    if to_ms is not None and from_ms is not None:
        for end, _, summary in matching:
            if from_ms < end <= to_ms:
                radius.add(summary)
    refs = []
    for fold in folds:
        for incident in fold.incidents.values():
            if family_matches(incident.family, service, step, error_code) and \
                    from_ms is not None and to_ms is not None and \
                    incident.facts.onset_ms <= to_ms and _window_end(fold, incident) > from_ms:
                refs.append(_incident_ref(fold, incident, "window"))
    notes = ["Counted from the failing-trace summaries triage keeps: requests that did "
             "not fail are not counted, and a family keeps its newest "
             f"{max((f.config.traces_per_family for f in folds), default=2_000)} traces."]
    if horizon is None:
        notes.append("No failing trace is kept: no OTLP spans reached this worker, or "
                     "none failed.")
    elif not matching:
        notes.append("No kept failing trace has a family of this service"
                     + (" and step" if step else "") + (" and error code" if error_code
                                                         else "") + ".")
    return {
        "service": service, "step": step, "error_code": error_code,
        "window_ms": window_ms, "from_ms": from_ms, "to_ms": to_ms,
        "newest_failing_trace_ms": horizon,
        "latest_match_ms": matching[-1][0] if matching else None,
        **radius.to_dict(), "families": families, "incidents": _latest(refs),
        "searched": searched(folds, partitions), "notes": notes,
    }


# ---------------------------------------------------------------- the views


def register_explain_views(app: faust.App, worker: Worker, reader: Reader) -> None:
    """``GET /v1/requests/{id}`` and ``GET /v1/blast`` on the worker's web server, guarded
    by the API tokens like the other reads (``reader``: register_views' check)."""
    from faust.web import View

    def answer(view: View, status: int, body: dict[str, Any]) -> Response:
        return view.bytes(orjson.dumps(body), content_type="application/json",
                          status=status)

    def folds() -> tuple[list[Triage], list[int]] | None:
        """The triage folds this worker owns, read now (no await while they are used)."""
        stage = worker.triage
        if stage is None:
            return None
        runs = sorted(stage.runs.items())
        return [run.loop.triage for _, run in runs], [p for p, _ in runs]

    def recent_requests() -> list[RecentRequests]:
        """The latest failing requests of each partition this worker detects."""
        detection = worker.detection
        return [run.requests for _, run in sorted(detection.runs.items())] \
            if detection is not None else []

    def readable(view: View, request: Request) -> tuple[list[Triage], list[int]] | Response:
        """The folds to answer from, or the refusal: no token, or no triage here."""
        denied = reader(view, request)
        if denied is not None:
            return denied
        held = folds()
        return no_triage(view) if held is None else held

    def no_triage(view: View) -> Response:
        return answer(view, 404, {"error": "this worker runs no triage (role "
                                           f"{worker.settings.role}): ask a worker whose "
                                           "role is all or detect"})

    async def current(refs: list[dict[str, Any]]) -> None:
        """Each incident's status and phase as the projection holds them now (people's
        actions included), where this worker keeps the projection."""
        sink = worker.sink if worker.projection is not None else None
        if sink is None:
            return
        for ref in refs:
            row = await asyncio.to_thread(sink.incident, ref["incident_id"])
            if row is not None:
                ref.update({k: row.get(k) for k in INCIDENT_ROW_FIELDS if k in row})

    @app.page("/v1/requests/{request_id}")
    class RequestExplained(View):
        """A request, by its trace id or request id: path, failing step, family,
        incident."""

        async def get(self, request: Request, request_id: str) -> Response:
            held = readable(self, request)
            if not isinstance(held, tuple):
                return held
            try:
                found = explain_request(held[0], request_id, held[1], recent_requests())
            except BadQuery as exc:
                return answer(self, 400, {"error": str(exc)})
            if found is None:
                return answer(self, 404, {
                    "error": f"nothing is known of {request_id[:MAX_ID_CHARS]!r}: it is "
                             "neither the trace id of a failing trace this worker's triage "
                             "keeps, nor an incident's sample trace, nor the request id of "
                             "a failing event its detection counted lately. "
                             + _kept_note(held[0]),
                    "searched": searched(held[0], held[1])})
            await current(found["incidents"])
            return answer(self, 200, found)

    @app.page("/v1/blast")
    class Blast(View):
        """Affected requests, users and services of a failure within an event-time
        window."""

        async def get(self, request: Request) -> Response:
            held = readable(self, request)
            if not isinstance(held, tuple):
                return held
            try:
                service, step, code, window_ms, until_ms = window_of(request.query)
            except BadQuery as exc:
                return answer(self, 400, {"error": str(exc)})
            found = blast(held[0], service, step, code, window_ms, until_ms, held[1])
            await current(found["incidents"])
            return answer(self, 200, found)
