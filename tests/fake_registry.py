"""A minimal Confluent Schema Registry over real HTTP, for tests.

A fake, and said so: the real registry is a Java service that cannot be installed here.
It implements the two endpoints Tocsin calls, with the registry's own paths and shapes:
``POST /subjects/{subject}/versions`` -> ``{"id": N}`` and ``GET /schemas/ids/{id}`` ->
``{"schema": "..."}`` (404 with error_code 40403 for an unknown id).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Registry:
    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()

    def register(self, text: str) -> int:
        canonical = json.dumps(json.loads(text), sort_keys=True)
        with self.lock:
            if canonical not in self.ids:
                new_id = len(self.ids) + 1
                self.ids[canonical] = new_id
                self.schemas[new_id] = text
            return self.ids[canonical]


def _handler(registry: _Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(200, {"id": registry.register(body["schema"])})
            else:
                self._send(404, {"error_code": 404, "message": "not found"})

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                text = registry.schemas.get(int(parts[2]))
                if text is not None:
                    self._send(200, {"schema": text})
                    return
                self._send(404, {"error_code": 40403, "message": "Schema not found"})
            else:
                self._send(404, {"error_code": 404, "message": "not found"})

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@contextmanager
def fake_registry() -> Iterator[tuple[str, _Registry]]:
    registry = _Registry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", registry
    finally:
        server.shutdown()
        server.server_close()
