"""Drive a real worker from outside: the one driver of the integration tests, the demo and
the bench.

:class:`Worker` starts ``python -m tocsin run`` as a subprocess on a broker, waits for its
``/readyz``, talks to it over real HTTP, and stops, kills or restarts it. Waits are on
facts, polled at short intervals up to a deadline, never on a fixed sleep or on "nothing
changed for a second":

- :meth:`Worker.wait_ready`: ``/readyz`` answers 200 (every part of the worker's role up);
- :meth:`Worker.wait_committed`: a stage's consumer group has committed every partition of
  its input to that partition's end (the detector commits after its checkpoint, and the
  checkpoint follows the broker's acknowledgement of every effect: windows, lifecycle
  events, deploy signals, dead letters);
- :meth:`Worker.wait_caught_up`: the projection's positions in DuckDB (table
  ``positions``, read through ``/v1/query``) are at the end of every partition of every
  topic it projects;
- :meth:`Worker.wait_settled`: both, in that order: everything on the events topic has
  been detected and everything detection published is in DuckDB;
- :meth:`Worker.wait_for`: any other fact (a row present, a report version).

A topic's end is the high watermark a fetch returns, never ``end_offsets`` (ListOffsets):
the embedded broker, Tansu, answers ListOffsets with the base offset of a topic's last
batch (see :mod:`tocsin.streams.kafka.io`).

:class:`Names` holds an app id and a name for every topic in the worker's settings
(:class:`tocsin.streams.worker.settings.Topics`): a topic added there gets its own name
here, and its ``TOCSIN_TOPICS__*`` variable, with no change to this module.

The methods block; the Kafka waits run their own event loop, so call them from plain
threads, not from inside a running event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from tocsin.streams.kafka.broker import free_port
from tocsin.streams.kafka.io import stop_quietly, wait_partitions
from tocsin.streams.worker.settings import Topics

__all__ = [
    "PROJECTED_TOPICS",
    "TOPIC_FIELDS",
    "Names",
    "Reply",
    "WaitTimeout",
    "Worker",
    "WorkerError",
    "WorkerExited",
    "WorkerRefused",
    "WorkerUnreachable",
    "topic_env_var",
    "wait_for",
]

T = TypeVar("T")
Role = Literal["all", "detect", "project"]

TOPIC_FIELDS: tuple[str, ...] = tuple(Topics.model_fields)
"""Every topic setting of the worker (``events``, ``incidents``, ...), from its model."""

PROJECTED_TOPICS: tuple[str, ...] = ("incidents", "windows", "dlq", "signals", "reports")
"""The topic settings the DuckDB projection reads (``streams/stages/project.py``): what
:meth:`Worker.wait_caught_up` waits on by default. Must follow the projection."""

_SHORT = {"events": "ev", "incidents": "inc", "windows": "win", "signals": "sig",
          "reports": "rep"}
_ids = itertools.count(1)


def topic_env_var(topic_field: str) -> str:
    """The environment variable naming a topic: ``events`` -> ``TOCSIN_TOPICS__EVENTS``."""
    if topic_field not in TOPIC_FIELDS:
        raise ValueError(f"{topic_field!r} is not a topic setting ({', '.join(TOPIC_FIELDS)})")
    return f"TOCSIN_TOPICS__{topic_field.upper()}"


@dataclass
class Names:
    """A worker's app id (its consumer groups and state) and its topic names."""

    app_id: str
    topics: Topics = field(default_factory=Topics)

    @classmethod
    def defaults(cls, app_id: str = "tocsin") -> Self:
        """The default topic names (``tocsin.events``, ``otlp_spans``, ...) under ``app_id``."""
        return cls(app_id, Topics())

    @classmethod
    def fresh(cls, label: str, *, keep: Iterable[str] = ()) -> Self:
        """A new app id and a topic of its own for every topic setting, so tests on one
        broker never share a consumer group, a state table or a topic: app id
        ``t-<label><n>-<pid>``, topics ``<short>-<app id>`` (``ev-``, ``inc-``, ``win-``,
        ``dlq-``, ``sig-``, ``rep-``, ``spans-``, then the setting's name). Settings in
        ``keep`` keep their default names (an input shared on purpose)."""
        app_id = f"t-{label}{next(_ids)}-{os.getpid()}"
        kept = set(keep)
        unknown = kept - set(TOPIC_FIELDS)
        if unknown:
            raise ValueError(f"not topic settings: {sorted(unknown)}")
        defaults = Topics().model_dump()
        return cls(app_id, Topics(**{
            f: defaults[f] if f in kept else f"{_SHORT.get(f, f.replace('_', '-'))}-{app_id}"
            for f in TOPIC_FIELDS}))

    def with_topics(self, **names: str) -> Self:
        """A copy with some topics renamed: ``names.with_topics(events="shared.events")``."""
        for f in names:
            topic_env_var(f)  # raises on a name that is not a topic setting
        return type(self)(self.app_id, self.topics.model_copy(update=names))

    def topic(self, topic_field: str) -> str:
        """The topic of a setting given by name (``"events"``)."""
        topic_env_var(topic_field)
        return str(getattr(self.topics, topic_field))

    def all_topics(self) -> dict[str, str]:
        """Setting -> topic, for every topic setting."""
        return {f: self.topic(f) for f in TOPIC_FIELDS}

    def projected(self) -> list[str]:
        """The topics the DuckDB projection reads (:data:`PROJECTED_TOPICS`)."""
        return [self.topic(f) for f in PROJECTED_TOPICS]

    def env(self) -> dict[str, str]:
        """``TOCSIN_APP_ID`` and every ``TOCSIN_TOPICS__*`` variable."""
        return {"TOCSIN_APP_ID": self.app_id,
                **{topic_env_var(f): t for f, t in self.all_topics().items()}}


# ---------------------------------------------------------------------- errors


class WorkerError(RuntimeError):
    """The worker could not do what was asked; the message ends with its log's tail."""


class WorkerExited(WorkerError):
    """The worker process ended (``code`` is its exit code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class WorkerUnreachable(WorkerError, ConnectionError):
    """Nothing answered on the worker's HTTP port (not serving yet, or gone)."""


class WorkerRefused(WorkerError):
    """The worker answered with a status that is not a success (``reply`` has it all)."""

    def __init__(self, message: str, reply: Reply) -> None:
        super().__init__(message)
        self.reply = reply

    @property
    def retryable(self) -> bool:
        """429 or 503: busy or not ready yet, worth asking again."""
        return self.reply.status in (429, 503)


class WaitTimeout(WorkerError, TimeoutError):
    """A wait's deadline passed before its fact held."""


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, body bytes, headers (any status; nothing raised)."""

    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)


# ---------------------------------------------------------------------- waiting


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, WorkerUnreachable) or (isinstance(exc, WorkerRefused)
                                                  and exc.retryable)


def wait_for(fact: Callable[[], T], timeout_s: float = 30.0, what: str = "the fact", *,
             interval_s: float = 0.1, check: Callable[[], None] | None = None,
             context: Callable[[], str] | None = None) -> T:
    """Poll ``fact`` every ``interval_s`` until it returns something truthy, and return
    that. ``check`` runs before every poll and may raise (a process that died);
    :class:`WorkerUnreachable` and a 429/503 :class:`WorkerRefused` from ``fact`` count
    as "not yet", anything else it raises propagates. At the deadline:
    :class:`WaitTimeout` naming ``what`` and the last value (and ``context()``)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        if check is not None:
            check()
        try:
            value = fact()
        except (WorkerUnreachable, WorkerRefused) as exc:
            if not _retryable(exc):
                raise
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            extra = context() if context is not None else ""
            raise WaitTimeout(f"{what} did not hold within {timeout_s:g}s (last: {last!r})"
                              + (f"\n{extra}" if extra else ""))
        time.sleep(interval_s)


# ---------------------------------------------------------------------- the worker

FAST_SESSION_TIMEOUT_MS = 6_000
FAST_CHECKPOINT_INTERVAL_MS = 200


class Worker:
    """``python -m tocsin run`` on a broker, as a subprocess, with its own HTTP port.

    ``env`` is added last to the worker's environment (after the process's own, the
    ``names``' variables and the timing settings), so it can override any of them.
    ``session_timeout_ms`` (default 6 s: group joins and rebalances stay fast) and
    ``checkpoint_interval_ms`` (default 200 ms) are set unless None (the worker's own
    defaults then). The worker's stdout and stderr go to ``log_path`` (default: beside
    the DuckDB file). ``new_session`` puts it in its own process group, out of reach of
    the terminal's Ctrl-C.
    """

    def __init__(self, bootstrap: str, db: Path | str, *, names: Names | None = None,
                 role: Role = "all", env: Mapping[str, str] | None = None,
                 http_port: int | None = None, log_path: Path | str | None = None,
                 log_level: str | None = None,
                 session_timeout_ms: int | None = FAST_SESSION_TIMEOUT_MS,
                 checkpoint_interval_ms: int | None = FAST_CHECKPOINT_INTERVAL_MS,
                 new_session: bool = False) -> None:
        self.bootstrap = bootstrap
        self.db = Path(db)
        self.names = names if names is not None else Names.defaults()
        self.role: Role = role
        self.env = dict(env or {})
        self.http_port = http_port if http_port is not None else free_port()
        self.log_path = Path(log_path) if log_path is not None \
            else self.db.with_suffix(f".{role}.{self.http_port}.log")
        self.log_level = log_level
        self.session_timeout_ms = session_timeout_ms
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -------------------------------------------------------------- process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise WorkerError("the worker was never started")
        return self.proc.pid

    def command(self) -> list[str]:
        """The worker's command line."""
        cmd = [sys.executable, "-P", "-m", "tocsin", "run", "--broker", self.bootstrap,
               "--db", str(self.db), "--http-port", str(self.http_port), "--role", self.role]
        return cmd + (["--log-level", self.log_level] if self.log_level else [])

    def environment(self) -> dict[str, str]:
        """The worker's environment."""
        timing = {}
        if self.session_timeout_ms is not None:
            timing["TOCSIN_SESSION_TIMEOUT_MS"] = str(self.session_timeout_ms)
        if self.checkpoint_interval_ms is not None:
            timing["TOCSIN_CHECKPOINT_INTERVAL_MS"] = str(self.checkpoint_interval_ms)
        return {**os.environ, **self.names.env(), **timing, **self.env}

    def start(self) -> Self:
        """Spawn the worker (without waiting: see :meth:`wait_ready`). A restart appends
        to the same log."""
        if self.proc is not None and self.proc.poll() is None:
            raise WorkerError(f"the worker already runs (pid {self.proc.pid})")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb" if self.starts == 1 else "ab") as log:
            if self.starts > 1:
                log.write(f"--- tocsin.testing: start {self.starts} ---\n".encode())
                log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.environment(),
                start_new_session=self.new_session)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`WorkerExited` (with the log's tail) if the worker has ended."""
        if self.proc is None:
            raise WorkerError("the worker was never started")
        code = self.proc.poll()
        if code is not None:
            raise WorkerExited(f"the worker exited with {code}; log {self.log_path}:\n"
                               f"{self.log_tail()}", code)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the worker checkpoints and commits), then SIGKILL after ``timeout_s``.
        The exit code (negative: killed by that signal); None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no goodbye (a crash), and reap it."""
        if self.proc is None:
            raise WorkerError("the worker was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self, *, hard: bool = False, stop_timeout_s: float = 30.0) -> Self:
        """Stop (SIGTERM; ``hard``: SIGKILL) and start again: same port, DuckDB file,
        names and log. Does not wait for readiness."""
        if hard:
            self.kill()
        else:
            self.stop(stop_timeout_s)
        return self.start()

    def __enter__(self) -> Self:
        """Start and wait until ready; stopped on leaving."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -------------------------------------------------------------- HTTP

    def auth_headers(self) -> dict[str, str]:
        """An Authorization header with the worker's first API token
        (``TOCSIN_API_TOKENS`` in ``env``), or nothing when reads are open."""
        tokens = json.loads(self.env.get("TOCSIN_API_TOKENS", "{}"))
        return {"Authorization": f"Bearer {next(iter(tokens.values()))}"} if tokens else {}

    def request(self, method: str, path: str, body: Any = None, *,
                headers: Mapping[str, str] | None = None, auth: bool | str = True,
                timeout_s: float = 20.0) -> Reply:
        """One HTTP request; any status comes back as a :class:`Reply`. ``body``: bytes
        as they are, anything else but None as JSON. ``auth``: True, the worker's API
        token (if any); a string, that bearer token; False, none. Raises
        :class:`WorkerUnreachable` when nothing answers (:class:`WorkerExited` if the
        process has ended)."""
        sent: dict[str, str] = {}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if auth is True:
            sent.update(self.auth_headers())
        elif isinstance(auth, str):
            sent["Authorization"] = f"Bearer {auth}"
        sent.update(headers or {})
        req = urllib.request.Request(self.base_url + path, data=data, headers=sent,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return Reply(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.read(), dict(exc.headers))
        except (urllib.error.URLError, ConnectionError, TimeoutError,
                http.client.HTTPException) as exc:
            self.check_alive()
            raise WorkerUnreachable(f"{method} {path}: no answer on {self.base_url} "
                                    f"({exc})") from exc

    def _json(self, method: str, path: str, body: Any, timeout_s: float) -> Any:
        reply = self.request(method, path, body, timeout_s=timeout_s)
        if not reply.ok:
            raise WorkerRefused(f"{method} {path}: {reply.status} "
                                f"{reply.body[:500].decode(errors='replace')}", reply)
        return reply.json()

    def get_json(self, path: str, timeout_s: float = 20.0) -> Any:
        """GET and decode; :class:`WorkerRefused` unless the status is a success."""
        return self._json("GET", path, None, timeout_s)

    def post_json(self, path: str, body: Any, timeout_s: float = 20.0) -> Any:
        """POST ``body`` (JSON, or bytes as they are) and decode the answer;
        :class:`WorkerRefused` unless the status is a success."""
        return self._json("POST", path, body, timeout_s)

    def health(self) -> dict[str, Any] | None:
        """The ``/healthz`` body (metrics, partitions, ...), or None while nothing
        answers."""
        try:
            return dict(self.get_json("/healthz", timeout_s=5.0))
        except (WorkerUnreachable, WorkerRefused, ValueError):
            self.check_alive()
            return None

    def readiness(self) -> Reply | None:
        """The ``/readyz`` answer (200 ready, 503 with its parts), None while nothing
        answers."""
        try:
            return self.request("GET", "/readyz", timeout_s=5.0)
        except WorkerUnreachable:
            return None

    def query(self, sql: str, params: Iterable[Any] = (), timeout_s: float = 20.0
              ) -> list[dict[str, Any]]:
        """Rows of ``sql`` through ``/v1/query``, as dicts."""
        body = self.post_json("/v1/query", {"sql": sql, "params": list(params)}, timeout_s)
        return [dict(zip(body["columns"], r, strict=True)) for r in body["rows"]]

    # -------------------------------------------------------------- waits

    def wait_for(self, fact: Callable[[], T], timeout_s: float = 30.0,
                 what: str = "the fact", interval_s: float = 0.1) -> T:
        """:func:`wait_for` with this worker: it must stay alive, and a timeout's
        message ends with its log's tail."""
        return wait_for(fact, timeout_s, what, interval_s=interval_s, check=self.check_alive,
                        context=lambda: f"worker log {self.log_path}:\n{self.log_tail()}")

    def wait_rows(self, sql: str, timeout_s: float = 30.0, interval_s: float = 0.1
                  ) -> list[dict[str, Any]]:
        """The rows of ``sql`` once there are any."""
        return self.wait_for(lambda: self.query(sql), timeout_s, f"rows for {sql!r}",
                             interval_s)

    def wait_ready(self, timeout_s: float = 60.0) -> Self:
        """Until ``/readyz`` answers 200: every part of the worker's role is up (broker
        reachable, intake, detection holding its partitions, projection reading)."""
        def ready() -> bool:
            reply = self.readiness()
            return reply is not None and reply.status == 200

        self.wait_for(ready, timeout_s, "readiness (/readyz 200)")
        return self

    def wait_committed(self, stage: str = "detect", topic_field: str = "events",
                       timeout_s: float = 60.0) -> dict[int, int]:
        """Until consumer group ``<app id>-<stage>`` has committed every partition of its
        input topic (a topic setting) at that partition's end; the ends. With the
        default, detection has been through every event on the log and the broker has
        acknowledged every effect of it."""
        topic = self.names.topic(topic_field)
        group = f"{self.names.app_id}-{stage}"

        async def offsets(reader: AIOKafkaConsumer, tps: list[TopicPartition]
                          ) -> dict[tuple[str, int], int] | None:
            return {(tp.topic, tp.partition): (await reader.committed(tp)) or 0 for tp in tps}

        ends = self._wait_ends([topic], f"group {group} committed at the end of {topic}",
                               timeout_s, offsets, group)
        return {p: end for (_, p), end in ends.items()}

    def wait_caught_up(self, timeout_s: float = 60.0, topics: Iterable[str] | None = None
                       ) -> dict[tuple[str, int], int]:
        """Until the projection's positions in DuckDB are at the end of every partition
        of ``topics`` (default: every topic it projects); the ends, by (topic,
        partition). Ends are high watermarks seen after the call began: records
        published before it are in DuckDB when it returns."""
        if self.role == "detect":
            raise WorkerError("a worker of role detect keeps no DuckDB projection")
        wanted = list(topics) if topics is not None else self.names.projected()

        async def positions(_: AIOKafkaConsumer, __: list[TopicPartition]
                            ) -> dict[tuple[str, int], int] | None:
            try:
                rows = await asyncio.to_thread(
                    self.query, 'SELECT topic, "partition", next_offset FROM positions')
            except (WorkerUnreachable, WorkerRefused) as exc:
                if _retryable(exc):
                    return None
                raise
            return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

        return self._wait_ends(wanted, "DuckDB positions at the end of "
                               + ", ".join(wanted), timeout_s, positions, None)

    def wait_settled(self, timeout_s: float = 90.0) -> None:
        """Everything on the log is through: :meth:`wait_committed` for detection (unless
        the role is ``project``), then :meth:`wait_caught_up` (unless ``detect``). Span
        input is not covered: wait on its own facts."""
        deadline = time.monotonic() + timeout_s
        if self.role != "project":
            self.wait_committed("detect", "events", timeout_s)
            # Committed includes span events held for their sources' progress (they are
            # in the checkpoint): wait until the merges let them through.
            self.wait_for(lambda: (self.health() or {}).get("held_span_events", 1) == 0,
                          max(1.0, deadline - time.monotonic()),
                          "no span events held by detection")
        if self.role != "detect":
            self.wait_caught_up(max(1.0, deadline - time.monotonic()))

    def wait_triaged(self, timeout_s: float = 60.0, peers: Iterable[Worker] = ()
                     ) -> dict[tuple[str, int], int]:
        """Until the triage stage — on this worker and ``peers`` together, the workers
        sharing its group — has applied every incident, signal and trace summary on the
        log and every report version it made is acknowledged; the ends. Incidents come
        from detection: wait for it first (:meth:`wait_committed`)."""
        workers = [self, *peers]

        async def positions(_: AIOKafkaConsumer, __: list[TopicPartition]
                            ) -> dict[tuple[str, int], int] | None:
            at: dict[tuple[str, int], int] = {}
            for worker in workers:
                health = await asyncio.to_thread(worker.health)
                triage = (health or {}).get("triage")
                if triage is None:
                    return None
                if triage["catching_up"] or triage["outbox"]:
                    return None
                for key, offset in triage["summaries"].items():
                    topic, partition = key.rsplit(":", 1)
                    at[(topic, int(partition))] = offset
                for key, offset in triage["inputs"].items():
                    topic, partition = key.rsplit(":", 1)
                    k = (topic, int(partition))
                    at[k] = min(at.get(k, offset), offset)
            return at

        topics = [self.names.topic(t) for t in ("incidents", "signals", "summaries")]
        return self._wait_ends(topics, "triage through " + ", ".join(topics), timeout_s,
                               positions, None)

    def _wait_ends(self, topics: list[str], what: str, timeout_s: float,
                   done: Callable[[AIOKafkaConsumer, list[TopicPartition]], Any],
                   group: str | None) -> dict[tuple[str, int], int]:
        """Follow ``topics`` for their high watermarks until ``done`` (offsets by (topic,
        partition), or None: not known yet) equals them on every partition."""
        interval_s = 0.1

        async def run() -> dict[tuple[str, int], int]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            follower = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                auto_offset_reset="earliest", fetch_max_wait_ms=50)
            reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                      enable_auto_commit=False) if group else follower
            await follower.start()
            if reader is not follower:
                await reader.start()
            last: object = "nothing read yet"
            try:
                tps = [TopicPartition(t, p) for t in topics
                       for p in await wait_partitions(follower, t, timeout_s)]
                follower.assign(tps)
                # Read from where the stage is (its records are dropped): only the lag
                # is fetched, and every fetch answer carries the partition's end.
                start = await done(reader, tps) or {}
                for tp in tps:
                    follower.seek(tp, start.get((tp.topic, tp.partition), 0))
                while True:
                    self.check_alive()
                    round_end = loop.time() + interval_s
                    while (left := round_end - loop.time()) > 0:
                        await follower.getmany(timeout_ms=max(1, int(left * 1000)),
                                               max_records=10_000)
                    ends = {(tp.topic, tp.partition): follower.highwater(tp) for tp in tps}
                    if all(end is not None for end in ends.values()):
                        at = await done(reader, tps)
                        if at is not None:
                            behind = {k: (at.get(k, 0), end) for k, end in ends.items()
                                      if at.get(k, 0) != end}
                            if not behind:
                                return {k: int(end or 0) for k, end in ends.items()}
                            last = "(at, end) " + ", ".join(
                                f"{t}[{p}]: {a}/{e}" for (t, p), (a, e) in sorted(behind.items()))
                    if loop.time() >= deadline:
                        raise WaitTimeout(f"{what} not within {timeout_s:g}s; {last}\n"
                                          f"worker log {self.log_path}:\n{self.log_tail()}")
            finally:
                await stop_quietly(follower, None if reader is follower else reader)

        return asyncio.run(run())
