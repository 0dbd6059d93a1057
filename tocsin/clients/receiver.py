"""A local webhook receiver: an HTTP server on a free loopback port, in a thread, that
keeps every POST it takes and checks Tocsin's webhook signature (ADR 0017). The demo
points the worker's notifications at one; it is what a receiver of yours has to do."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tocsin.processors.notify import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

MAX_BODY = 4 << 20


class WebhookReceiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= MAX_BODY:
                    self.send_error(413)
                    return
                raw = self.rfile.read(length)
                receiver.take(raw, dict(self.headers.items()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tocsin"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self, raw: bytes, headers: dict[str, str]) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        signed = headers.get(SIGNATURE_HEADER)
        stamp = headers.get(TIMESTAMP_HEADER, "")
        valid = None
        if self.secret is not None:
            valid = bool(signed and stamp.isdigit() and verify(
                self.secret, int(stamp), raw, signed, int(time.time())))
        with self.arrived:
            self.received.append({"id": headers.get(ID_HEADER), "body": body,
                                  "signature_valid": valid})
            self.arrived.notify_all()

    def wait(self, enough: Callable[[list[dict[str, Any]]], bool], timeout_s: float
             ) -> list[dict[str, Any]]:
        """The deliveries once ``enough`` of them holds (what came, at the deadline)."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while not enough(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.received)
