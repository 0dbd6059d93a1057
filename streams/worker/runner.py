"""Starting a worker: the embedded broker when none is given, the Faust worker, cleanup."""

from __future__ import annotations

import contextlib
import logging
import sys

import faust

from tocsin.processors.mapping import MappingError, load_mapping
from tocsin.processors.rules import RulesError
from tocsin.streams.kafka.broker import BrokerError, EmbeddedBroker
from tocsin.streams.web.auth import Access, ConfigError, is_loopback
from tocsin.streams.worker.announce import worker_file, write_worker_file
from tocsin.streams.worker.app import create_app
from tocsin.streams.worker.collector import stop_automatic_collection
from tocsin.streams.worker.settings import Settings, rules_of


def _redact(url: str) -> str:
    """A storage URL without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def check_exposure(settings: Settings) -> str | None:
    """Why this worker must not start as configured, or None (ADR 0014): tokens that
    cannot be honoured, or a non-loopback bind that would serve reads and intake to a
    network without tokens, unless ``--insecure`` says so."""
    try:
        access = Access(settings.api_tokens, settings.intake_tokens)
    except ConfigError as exc:
        return str(exc)
    if settings.http_port and not is_loopback(settings.http_bind) and not settings.insecure \
            and not (access.api_guarded and access.intake_guarded):
        return (f"--http-bind {settings.http_bind} is not a loopback address: set "
                "TOCSIN_API_TOKENS and TOCSIN_INTAKE_TOKENS, or pass --insecure")
    return None


def run_worker(settings: Settings, embedded_port: int | None = None,
               log_level: str = "warning") -> int:
    """Run until SIGINT/SIGTERM (Faust's worker handles both: services stop in order, the
    detector writes its last checkpoint, the projection commits). Returns the exit code."""
    if settings.event_mapping is not None:
        # Checked before anything starts, so a bad file is one line and exit code 2, not a
        # crashed worker (the detection compiles it for itself when it starts).
        try:
            load_mapping(settings.event_mapping)
        except MappingError as exc:
            print(f"tocsin: TOCSIN_EVENT_MAPPING: {exc}", file=sys.stderr, flush=True)
            return 2
    try:
        rules_of(settings)  # the same: a bad rules file is one line naming its line
    except RulesError as exc:
        print(f"tocsin: TOCSIN_RULES: {exc}", file=sys.stderr, flush=True)
        return 2
    broker: EmbeddedBroker | None = None
    bootstrap = settings.broker
    if bootstrap is None:
        try:
            broker = EmbeddedBroker(embedded_port, storage=settings.broker_storage).start()
        except BrokerError as exc:
            print(f"tocsin: the embedded broker did not start: {exc}", file=sys.stderr,
                  flush=True)
            return 2
        bootstrap = broker.bootstrap
        if broker.memory_only:
            print(f"tocsin: embedded broker (Tansu) on {bootstrap}, MEMORY ONLY: its topics "
                  "and offsets are lost when it stops; DuckDB keeps its history and reads a "
                  "restarted log as a new epoch (--broker-storage postgres://... persists)",
                  file=sys.stderr, flush=True)
        else:
            print(f"tocsin: embedded broker (Tansu) on {bootstrap}, storage "
                  f"{_redact(broker.storage)}", file=sys.stderr, flush=True)
    code = 0
    try:
        app, _ = create_app(settings, bootstrap)
        if settings.http_port:
            write_worker_file(settings.db, settings.http_port, bootstrap)
        # mode resolves level *names* with logging.getLevelName, which only knows upper case:
        # "warning" would silently become DEBUG for every library (measured: aiokafka then
        # formats a record per send and fetch).
        worker = faust.Worker(app, loglevel=log_level.upper(), quiet=True,
                              redirect_stdouts=False)
        worker.spinner = None  # no terminal spinner escapes in logs
        logging.getLogger("tocsin").setLevel(log_level.upper())
        # What exists now (the app, its libraries, settings) lives for the whole run: out
        # of the cycle collector's sight; from now on the worker collects on a timer, not
        # on the allocation counter (streams/worker/collector.py).
        stop_automatic_collection()
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        if settings.http_port:
            with contextlib.suppress(OSError):
                worker_file(settings.db).unlink()
        if broker is not None:
            broker.stop()
    return code
