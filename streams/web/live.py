"""The live incident page and its feed: ``GET /`` (the board), ``GET /incidents/{id}`` (one
incident), ``GET /static/...`` (the page's own HTML, CSS and JS, no external assets) and
``GET /v1/stream``, server-sent events with every lifecycle change and report version the
projection writes.

Events on the stream:

- ``incident``: a lifecycle change (``incident_id``, ``seq``, ``kind``, ``status``,
  ``phase``, ``family``, ``env``, ``service``, ``onset_ms``, ``at_ms``, ``peak_count``,
  ``error_count``, ``actor``, ``note``).
- ``report``: a report version (``incident_id``, ``report_hash``, ``status``,
  ``incident_seq``, ``cause_kind``, ``cause_confidence``).
- ``reset``: the stream cannot resume where the client left it (the worker restarted, or
  the client fell more than :data:`KEPT` events behind): read the state again.

Each event's id is ``<epoch>-<n>``: ``n`` counts the events of this worker process, the
epoch tells one process from another. A client that reconnects with ``Last-Event-ID`` gets
what it missed, or ``reset``. A comment line goes out every :data:`HEARTBEAT_S` so that
proxies keep the connection.

The page is served with a strict Content-Security-Policy (scripts, styles and connections
from this origin only, no inline script or style, no frames), and writes untrusted text
only as text (``textContent``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import orjson

KEPT = 2_000  # events a reconnecting client can catch up on
HEARTBEAT_S = 15.0
MAX_STREAMS = 64
STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
INCIDENT_FIELDS = ("incident_id", "seq", "kind", "status", "phase", "family", "env",
                   "service", "onset_ms", "at_ms", "peak_count", "error_count", "actor",
                   "note")


def incident_message(event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in INCIDENT_FIELDS}


def report_message(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"incident_id": row.get("incident_id"), "report_hash": row.get("report_hash"),
            "status": row.get("status"), "incident_seq": row.get("incident_seq"),
            "cause_kind": row.get("cause_kind"),
            "cause_confidence": row.get("cause_confidence")}


def frame(event_id: str | None, name: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event (data is one line of JSON: no newline can split it)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class LiveFeed:
    """What the projection wrote, numbered, the last :data:`KEPT` kept for resuming."""

    def __init__(self, epoch: str, kept: int = KEPT) -> None:
        self.epoch = epoch
        self.n = 0
        self.kept: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=kept)
        self._changed = asyncio.Event()
        self.streams = 0
        self.closed = False

    def close(self) -> None:
        """The worker is stopping: every stream ends (clients reconnect to the next)."""
        self.closed = True
        self._changed.set()

    # -- fed by the projection, on the worker's loop
    def written(self, events: Sequence[Mapping[str, Any]], _letters: Sequence[Any] = ()
                ) -> None:
        for event in events:
            self._add("incident", incident_message(event))

    def reports(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._add("report", report_message(row))

    def _add(self, name: str, data: dict[str, Any]) -> None:
        self.n += 1
        self.kept.append((self.n, name, data))
        self._changed.set()
        self._changed = asyncio.Event()

    # -- read by streams
    def position(self, last_event_id: str | None) -> int | None:
        """Where a client resumes: the n after which it wants events, None when it cannot
        (another process's id, or older than what is kept)."""
        if last_event_id is None:
            return self.n
        epoch, _, n = last_event_id.partition("-")
        if epoch != self.epoch or not n.isascii() or not n.isdigit() or len(n) > 18 \
                or int(n) > self.n:
            return None
        oldest = self.kept[0][0] if self.kept else self.n + 1
        return int(n) if int(n) >= oldest - 1 else None

    def after(self, n: int) -> list[tuple[int, bytes]]:
        """The kept events after ``n``, numbered, framed."""
        return [(i, frame(f"{self.epoch}-{i}", name, data))
                for i, name, data in self.kept if i > n]

    async def wait(self, n: int, timeout_s: float) -> None:
        """Until an event after ``n`` exists, the feed closes, or the timeout."""
        if self.n > n or self.closed:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)


def register_live_views(app: Any, feed: LiveFeed, reader: Callable[..., Any],
                        answer: Callable[..., Any]) -> None:
    """The page's routes and ``/v1/stream`` (``reader``: the API token check of the other
    reads; ``answer``: their JSON answer)."""
    from aiohttp import web
    from faust.web import Request, Response, View

    shell = (STATIC / "index.html").read_bytes()

    def served(body: bytes, kind: str) -> Response:
        # aiohttp takes the charset apart from the content type
        response = web.Response(body=body, content_type=kind, charset="utf-8",
                                headers=PAGE_HEADERS)
        return cast(Response, response)

    def page(view: View) -> Response:
        return served(shell, "text/html")

    @app.page("/")
    class Board(View):
        async def get(self, request: Request) -> Response:
            return page(self)

    @app.page("/incidents/{incident_id}")
    class IncidentPage(View):
        async def get(self, request: Request, incident_id: str) -> Response:
            return page(self)

    @app.page("/static/{name}")
    class Asset(View):
        async def get(self, request: Request, name: str) -> Response:
            kind = ASSETS.get(name)
            if kind is None:
                missing: Response = answer(self, 404, {"error": f"no asset {name}"})
                return missing
            return served((STATIC / name).read_bytes(), kind)

    @app.page("/v1/stream")
    class Stream(View):
        async def get(self, request: Request) -> Any:
            denied = reader(self, request)
            if denied is not None:
                return denied
            if feed.closed:
                return answer(self, 503, {"error": "the worker is stopping"})
            if feed.streams >= MAX_STREAMS:
                return answer(self, 503, {"error": f"{MAX_STREAMS} streams are open"})
            last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
            n = feed.position(last)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store", "X-Accel-Buffering": "no",
                "X-Content-Type-Options": "nosniff"})
            feed.streams += 1
            try:
                await response.prepare(request)  # type: ignore[arg-type]
                if n is None:
                    n = feed.n
                    await response.write(frame(f"{feed.epoch}-{n}", "reset", {
                        "reason": "cannot resume there: read the state again"}))
                elif last is None:
                    await response.write(frame(f"{feed.epoch}-{n}", "hello", {}))
                while not feed.closed:
                    for sent, chunk in feed.after(n):
                        await response.write(chunk)
                        n = sent
                    await feed.wait(n, HEARTBEAT_S)
                    if feed.n == n and not feed.closed:
                        await response.write(b": keep-alive\n\n")
            except ConnectionResetError:  # the client went away
                pass
            finally:
                feed.streams -= 1
            return response
