"""Analysts query while the worker writes: a second process, the CLI, gets answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import Names, WorkerProc, produce_events, spike_log


def tocsin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "tocsin", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))


def test_cli_queries_the_database_a_running_worker_holds(broker: str, tmp_path: Path) -> None:
    names = Names.fresh("query")
    log = spike_log()
    produce_events(broker, names.events, log)
    db = tmp_path / "q.duckdb"
    worker = WorkerProc(broker, names, db).start()
    try:
        worker.wait_projected(len(log))
        out = tocsin("query", "SELECT family, status FROM incidents", "--db", str(db),
                     "--format", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [
            {"family": "checkout:payment.charge:PMT_502", "status": "resolved"}]
        listed = tocsin("incidents", "--db", str(db), "--format", "csv")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0].startswith("incident_id,family,env,status")
        assert "checkout:payment.charge:PMT_502" in listed.stdout
        refused = tocsin("query", "DELETE FROM incidents", "--db", str(db))
        assert refused.returncode == 2
        assert "only SELECT" in refused.stderr and "Traceback" not in refused.stderr
        broken = tocsin("query", "SELECT nope FROM incidents", "--db", str(db))
        assert broken.returncode == 2 and "nope" in broken.stderr
    finally:
        assert worker.stop() == 0
    # With the worker gone, the CLI opens the file read-only itself.
    out = tocsin("query", "SELECT count(*) AS n FROM incident_events", "--db", str(db),
                 "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 3}]


def test_bad_http_requests_get_4xx_with_a_message(broker: str, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    names = Names.fresh("http")
    worker = WorkerProc(broker, names, tmp_path / "h.duckdb").start()
    try:
        worker.wait_ready(90)
        url = f"http://127.0.0.1:{worker.http_port}/v1/query"
        for body, expected in [(b"{nope", "body must be JSON"),
                               (b'{"query": "SELECT 1"}', "body must be"),
                               (b'{"sql": "SELECT 1", "params": 3}', "params"),
                               (b'{"sql": "DROP TABLE incidents"}', "only SELECT"),
                               (b'{"sql": "SELEC 1"}', "syntax error")]:
            req = urllib.request.Request(url, data=body, method="POST")
            try:
                urllib.request.urlopen(req, timeout=10)
            except urllib.error.HTTPError as exc:
                assert exc.code == 400
                assert expected in json.loads(exc.read())["error"]
            else:
                raise AssertionError(f"{body!r} was accepted")
        assert worker.query("SELECT count(*) AS n FROM incidents") == [{"n": 0}]
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/metrics") as resp:
            assert b"tocsin_events_total" in resp.read()
    finally:
        assert worker.stop() == 0
