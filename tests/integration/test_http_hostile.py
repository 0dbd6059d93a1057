"""Hostile HTTP input against a running worker: compression bombs, nesting, bad bytes,
oversized heads and slow clients get 4xx or a closed connection, and the worker goes on."""

from __future__ import annotations

import functools
import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import T0_MS, Names, WorkerProc
from tests.integration.test_http_api import call

MB = 1024 * 1024
REFUSED = (b"HTTP/1.1 400", b"HTTP/1.0 400", b"HTTP/1.1 431")
SIGNAL = {"type": "alert", "service": "checkout", "env": "prod", "title": "x",
          "event_time_ms": T0_MS}


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProc]:
    names = Names.fresh("hostile")
    w = WorkerProc(broker, names, tmp_path_factory.mktemp("hostile") / "h.duckdb", extra_env={
        "TOCSIN_HTTP_BODY_TIMEOUT_MS": "1000", "TOCSIN_HTTP_HEADER_TIMEOUT_MS": "1000",
        "TOCSIN_INTAKE_RATE_PER_S": "1000", "TOCSIN_INTAKE_BURST": "1000",
        **names.side_topics()}).start()
    w.wait_ready(90)
    yield w
    assert w.stop() == 0


def peak_rss_mb(worker: WorkerProc) -> float:
    assert worker.proc is not None
    for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@functools.cache
def bomb(inflated: int, layers: int) -> bytes:
    """``inflated`` zero bytes under ``layers`` of gzip, compressed as a stream."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\x00" * MB
    parts = [packer.compress(chunk) for _ in range(inflated // MB)]
    parts.append(packer.compress(b"\x00" * (inflated % MB)))
    body = b"".join(parts) + packer.flush()
    for _ in range(layers - 1):
        body = gzip.compress(body, 9)
    return body


def post(worker: WorkerProc, path: str, body: bytes, headers: dict[str, str]
         ) -> tuple[int, bytes, dict[str, str]]:
    return call(worker, "POST", path, body, None, headers)


@pytest.mark.parametrize(("path", "ctype"), [("/v1/traces", "application/x-protobuf"),
                                             ("/v1/traces", "application/json"),
                                             ("/v1/signals", "application/json")])
def test_compression_bombs_are_413_and_memory_stays_bounded(worker: WorkerProc, path: str,
                                                           ctype: str) -> None:
    before = peak_rss_mb(worker)
    cases = [
        (bomb(2 * 1024 * MB, 2), {"Content-Encoding": "gzip"}),  # gzip in gzip, ~2 KB
        (bomb(64 * MB, 1), {"Content-Encoding": "gzip"}),
        (bomb(64 * MB, 1), {}),  # gzip without saying so
        (bomb(64 * MB, 2), {"Content-Encoding": "gzip, gzip"}),
        (zlib.compress(b"\x00" * 64 * MB), {"Content-Encoding": "deflate"}),
        (bomb(1024, 5), {}),  # too many layers
        # Inflates to 6 MB: under what the old limit checked (the wire size), over the
        # limit that now holds for the inflated body.
        (gzip.compress(b" " * 6 * MB), {"Content-Encoding": "gzip"}),
    ]
    for body, headers in cases:
        status, data, _ = post(worker, path, body, {"Content-Type": ctype, **headers})
        assert status == 413, (len(body), headers, status, data[:200])
    assert peak_rss_mb(worker) - before < 80, "inflation is bounded by the body limit"
    status, _, _ = post(worker, path, b"\x1f\x8b garbage", {"Content-Type": ctype})
    assert status == 400


def test_unknown_content_encoding_is_415(worker: WorkerProc) -> None:
    status, data, _ = post(worker, "/v1/signals", b"{}", {"Content-Encoding": "br"})
    assert status == 415 and b"br" in data


def test_a_good_gzipped_signal_is_taken(worker: WorkerProc) -> None:
    body = gzip.compress(json.dumps(SIGNAL).encode())
    status, data, _ = post(worker, "/v1/signals", body, {"Content-Encoding": "gzip",
                                                         "Content-Type": "application/json"})
    assert status == 202, data


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"type": "alert", "title": "\xff\xfe bad utf-8"}',
    b"\xff" * 1000,
    b"",
])
def test_nesting_and_bad_bytes_are_4xx(worker: WorkerProc, body: bytes) -> None:
    for path, ctype in (("/v1/signals", "application/json"),
                        ("/v1/traces", "application/json")):
        status, data, _ = post(worker, path, body, {"Content-Type": ctype})
        assert 400 <= status < 500, (path, status, data[:200])
    assert worker.health() is not None


def raw(worker: WorkerProc, data: bytes, then: bytes = b"", pause_s: float = 0.0) -> bytes:
    """Send ``data``, wait, send ``then``, and read what the server answers until it closes
    (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", worker.http_port), timeout=10) as sock:
        sock.sendall(data)
        if pause_s:
            time.sleep(pause_s)  # the slow client under test, not a wait for the server
            try:
                sock.sendall(then)
            except OSError:
                return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_oversized_heads_are_refused(worker: WorkerProc) -> None:
    answer = raw(worker, b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 +
                 b"\r\n\r\n")
    assert answer[:12] in REFUSED, answer[:100]
    assert b"a" * 100 not in answer, "header values are never echoed"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    answer = raw(worker, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer[:12] in REFUSED, answer[:100]


def test_slow_clients_are_cut_off(worker: WorkerProc) -> None:
    started = time.monotonic()
    # A head that never ends: the connection is closed after the header timeout (1 s).
    answer = raw(worker, b"POST /v1/signals HTTP/1.1\r\nHost: x\r\n")
    assert answer == b"" or answer[:12] in REFUSED, answer[:100]
    # A body that never arrives in full: 408 after the body timeout (1 s).
    answer = raw(worker, b"POST /v1/signals HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                         b"Content-Type: application/json\r\n\r\n{")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.monotonic() - started < 9
    status, _, _ = call(worker, "GET", "/livez")
    assert status == 200
