"""``tocsin demo``: a broker, a worker, realistic traffic with a spike, the incident shown.

Two scenarios of the same failure (checkout's calls to payment fail): wide events plus
evidence signals over HTTP (the default), or ``--traces``, OTLP spans only, made with the
official OpenTelemetry SDK and published as the Collector's Kafka exporter would.
Traffic is generated from a fixed start time and seeds, so every run gives the same
incident id and report hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Container, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from rich.console import Console
from rich.status import Status

from tocsin.clients.otel_workload import proto, workload
from tocsin.clients.plot import plot_timeline
from tocsin.clients.produce import ProduceReport, publish
from tocsin.clients.receiver import WebhookReceiver
from tocsin.processors.render_text import text
from tocsin.streams.kafka.broker import EmbeddedBroker
from tocsin.streams.kafka.io import TopicSpec, ensure_topics
from tocsin.testing import Worker, WorkerError, WorkerRefused

DEMO_T0_MS = 1_793_610_000_000  # 2026-11-02T09:00:00Z
SERVICES: dict[str, list[str]] = {
    "frontend": ["GET /checkout", "GET /search", "GET /cart"],
    "checkout": ["payment.charge", "inventory.reserve", "cart.load"],
    "payment": ["POST /charge"],
    "inventory": ["POST /reserve"],
    "search": ["GET /query"],
    "cart": ["GET /cart"],
}


def _event(t_ms: int, service: str, step: str, n: int, **extra: Any) -> dict[str, Any]:
    event = {
        "event_time_ms": t_ms, "service": service, "step": step, "env": "prod",
        "status": "ok", "duration_ms": 20.0 + (n % 17), "service_version": "1.4.2",
        "trace_id": f"{n:032x}", "request_id": f"req-{n}", "user_id": f"user-{n % 500}",
    }
    event.update(extra)
    return event


def traffic(start_ms: int, seconds: int, spike: bool) -> Iterator[dict[str, Any]]:
    """Two requests a second per step; a background trickle of inventory 503s below any
    threshold; with ``spike``, checkout's payment.charge fails with PMT_502 on two of
    every three calls, each after waiting about 1.2 s for the gateway."""
    n = start_ms // 100
    for s in range(seconds):
        for service, steps in SERVICES.items():
            for i, step in enumerate(steps):
                for half in (0, 500):
                    n += 1
                    t = start_ms + s * 1000 + half + i * 7
                    if spike and service == "checkout" and step == "payment.charge" \
                            and n % 3 != 0:
                        yield _event(t, service, step, n, status="error", error_code="PMT_502",
                                     error_message="payment gateway answered 502",
                                     duration_ms=1200.0 + n % 50,
                                     downstream={"service": "payment",
                                                 "endpoint": "POST /charge", "kind": "http"})
                    elif service == "inventory" and half == 0 and s % 300 == 7:
                        yield _event(t, service, step, n, status="error", error_code="INV_503",
                                     error_message="inventory store unavailable")
                    else:
                        yield _event(t, service, step, n)


DEMO_ONSET_MS = DEMO_T0_MS + 2_403_000  # the 5th PMT_502 crosses MIN_COUNT
MINUTE_MS = 60_000


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def demo_signals() -> list[tuple[str, dict[str, Any]]]:
    """The reference acceptance demo's evidence, in the formats real systems send: a CI
    deploy of checkout, a dependency signal on payment, a Kubernetes OOMKill on checkout and
    an Alertmanager alert. Fixed times: two runs give the same report hash."""
    onset = DEMO_ONSET_MS
    return [
        ("/v1/signals/ci", {
            "event": "deploy", "service": "checkout", "environment": "prod",
            "version": "1.5.0", "commit": "8f2c1e0a", "author": "dana", "status": "success",
            "pr_url": "https://github.com/acme/checkout/pull/412",
            "timestamp": _rfc3339(onset - 6 * MINUTE_MS)}),
        ("/v1/signals/native", {
            "type": "dependency", "service": "payment", "env": "prod",
            "severity": "critical", "title": "payment gateway answers 502",
            "event_time_ms": onset - 2 * MINUTE_MS}),
        ("/v1/signals/native", {
            "type": "runtime", "runtime_subtype": "oom_killed", "service": "checkout",
            "env": "prod", "severity": "critical", "pod": "checkout-7d9f", "container": "api",
            "exit_code": 137, "reason": "OOMKilled", "title": "checkout-7d9f api OOMKilled",
            "event_time_ms": onset - MINUTE_MS}),
        ("/v1/signals", {
            "version": "4", "status": "firing", "receiver": "tocsin", "groupKey": "{}:{}",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0,
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "CheckoutErrorRate", "service": "checkout",
                           "env": "prod", "severity": "warning"},
                "annotations": {"summary": "checkout error rate above 5%"},
                "startsAt": _rfc3339(onset + 30_000), "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=checkout_errors",
                "fingerprint": "c0ffee0123456789"}]}),
    ]


def _post(worker: Worker, path: str, body: dict[str, Any]) -> list[str]:
    reply = worker.request("POST", path, body, timeout_s=10)
    if not reply.ok:
        raise DemoError(f"the intake refused {path}: {reply.body[:300]!r}")
    return list(reply.json()["signal_ids"])


def _encoded(events: Iterator[dict[str, Any]]) -> Iterator[tuple[bytes | None, bytes]]:
    for e in events:
        yield e["service"].encode(), orjson.dumps(e)


DEMO_ACK = {"action": "acknowledge", "by": "demo-oncall",
            "note": "looking at the payment gateway",
            # A fixed time, 90 s after onset: the report (with who acknowledged, when) keeps
            # its pinned hash on every run; a live acknowledgement takes the worker's clock.
            "at_ms": DEMO_ONSET_MS + 90_000}


def _acknowledge(worker: Worker, incident_id: str) -> dict[str, Any]:
    """The on-call's acknowledgement, through the actions API (ADR 0016), answered once
    detection decided it. One Idempotency-Key: the same action however often it is sent."""
    reply = worker.request("POST", f"/v1/incidents/{incident_id}/actions", DEMO_ACK,
                           headers={"Idempotency-Key": "demo-ack"}, timeout_s=30)
    if reply.status != 200:
        raise DemoError(f"the acknowledgement was answered {reply.status}: "
                        f"{reply.body[:300]!r}")
    return dict(reply.json())


class DemoError(RuntimeError):
    """The demo could not finish; the message says where, with the worker's last words."""


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Session:
    """A running demo: the broker and one worker (its HTTP port, DuckDB file and log)."""

    bootstrap: str
    worker: Worker

    def wait(self, sql: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        """The rows of ``sql`` once there are any."""
        try:
            return self.worker.wait_rows(sql, timeout_s, interval_s=0.05)
        except WorkerRefused as exc:
            raise DemoError(f"the worker refused {sql!r}: {exc}") from exc

    def query(self, sql: str) -> list[dict[str, Any]]:
        return self.worker.query(sql, timeout_s=10)

    def lifecycle(self, incident_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT seq, kind, at_ms FROM incident_events WHERE incident_id = "
                          f"'{incident_id}' ORDER BY seq")

    def final_report(self, incident_id: str) -> dict[str, Any]:
        """The report of the incident's complete timeline (ADR 0019): its last change."""
        seq = self.wait("SELECT seq FROM incident_events WHERE incident_id = "
                        f"'{incident_id}' AND kind = 'timeline'")[0]["seq"]
        row = self.wait("SELECT body FROM triage_reports WHERE incident_id = "
                        f"'{incident_id}' AND incident_seq = {int(seq)} "
                        "ORDER BY written_seq DESC LIMIT 1")[0]
        return dict(json.loads(row["body"]))


def run_demo(db: str | None = None, console: Console | None = None,
             traces: bool = False, export: Path | None = None) -> dict[str, Any]:
    """Start a broker and a worker and play a scenario: wide events and signals (the
    default), or, with ``traces``, the same failure sent only as OTLP spans. With
    ``export``, the input topics are written there afterwards (``tocsin export``'s
    files), for ``tocsin replay``."""
    console = console or Console(stderr=True)
    db_path = Path(db) if db else None
    workdir = db_path.parent if db_path else Path(tempfile.mkdtemp(prefix="tocsin-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = db_path or workdir / "tocsin.duckdb"
    if db_path.exists():
        db_path.unlink()
    worker: Worker | None = None
    try:
        with console.status("starting the embedded broker (Tansu)") as status, \
                EmbeddedBroker(log_path=workdir / "broker.log") as broker, \
                contextlib.ExitStack() as stack:
            status.update("creating topics")
            asyncio.run(ensure_topics(broker.bootstrap, [
                TopicSpec("tocsin.events", 6, 72 * 3600 * 1000),
                TopicSpec("otlp_spans", 6, 72 * 3600 * 1000)]))
            status.update("starting a worker")
            # A span partition that is caught up holds the merge back for 10 s, not 2:
            # the demo's pinned id and hash must survive a slow machine (ADR 0011).
            # Notifications go to a signed webhook on this machine (ADR 0017).
            receiver = stack.enter_context(WebhookReceiver(DEMO_SECRET))
            worker = Worker(broker.bootstrap, db_path, log_path=workdir / "worker.log",
                            env={"TOCSIN_SPANS_IDLE_MS": "10000",
                                 "TOCSIN_NOTIFY__WEBHOOK_URL": receiver.url,
                                 "TOCSIN_NOTIFY__WEBHOOK_SECRET": DEMO_SECRET}).start()
            worker.wait_ready(45)
            console.log(f"broker on {broker.bootstrap}, worker up, DuckDB at {db_path}")
            session = Session(broker.bootstrap, worker)
            scenario = _traces_scenario if traces else _events_scenario
            result = scenario(session, console, status)
            result["notifications"] = _told(receiver, result, console)
            status.update("stopping the worker")
            worker.stop(20)
            worker = None
            if export is not None:
                status.update(f"exporting the input topics to {export}")
                _export(broker.bootstrap, export)
    except WorkerError as exc:
        raise DemoError(str(exc)) from exc
    finally:
        if worker is not None:
            worker.kill()
        if db is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


DEMO_SECRET = "demo-webhook-secret"


def _export(bootstrap: str, out: Path) -> None:
    """The demo's input topics as ``tocsin export`` writes them (ADR 0021)."""
    from tocsin.clients.export import default_topics, export_topics
    from tocsin.clients.tlog import build_manifest, write_manifest

    result = asyncio.run(export_topics(bootstrap, out, default_topics(), explicit=False))
    write_manifest(out, build_manifest(broker=bootstrap, files=result.files, selection={
        "topics": default_topics(), "topics_given": False, "from": None, "from_ms": None,
        "to": None, "to_ms": None}, skipped=result.skipped))


def _told(receiver: WebhookReceiver, result: dict[str, Any], console: Console
          ) -> list[dict[str, Any]]:
    """What the local webhook receiver was told about the demo's incident, in order: one
    delivery per lifecycle change, each with its id and whether its signature held."""
    def about(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in received if r["body"]
                and r["body"]["event"]["incident_id"] == result["incident_id"]]

    def changes(received: list[dict[str, Any]]) -> int:  # news (`updated`) aside
        return sum(r["body"]["event"]["kind"] != "updated" for r in about(received))

    got = about(receiver.wait(lambda r: changes(r) >= len(result["lifecycle"]), 30))
    told = [{"kind": r["body"]["event"]["kind"], "notification_id": r["id"],
             "signature_valid": r["signature_valid"]}
            for r in sorted(got, key=lambda r: (r["body"]["event"]["seq"],
                                                 r["body"]["event"]["kind"] == "updated"))]
    console.log("webhook told: " + ", ".join(
        f"{t['kind']} ({'signed' if t['signature_valid'] else 'BAD SIGNATURE'})"
        for t in told))
    return told


def _show(console: Console, triage: dict[str, Any]) -> None:
    """The final report rendered for the terminal (as ``tocsin report`` prints it), and its
    timeline plotted. The text is printed as it is: no markup, highlighting or emoji codes
    read in it, no wrapping added (the terminal wraps a long line)."""
    console.print(text(triage), markup=False, highlight=False, emoji=False, soft_wrap=True)
    console.print(plot_timeline(triage["timeline"], width=max(60, min(console.width, 120)),
                                height=20), markup=False, highlight=False)


def _summary(incident: dict[str, Any], events: list[dict[str, Any]],
             triage: dict[str, Any]) -> dict[str, Any]:
    return {
        "incident_id": incident["incident_id"],
        "family": incident["family"],
        "env": incident["env"],
        "status": incident["status"],
        "onset": _iso(incident["onset_ms"]),
        "onset_ms": incident["onset_ms"],
        "window_count": incident["opened_window_count"],
        "baseline": incident["opened_baseline"],
        "lift": incident["opened_lift"],
        "lifecycle": [e["kind"] for e in events],
        "cause": triage["cause"]["kind"],
        "cause_confidence": triage["cause"]["confidence"],
        "cause_rule": triage["cause"]["rule_id"],
        "report_hash": triage["report_hash"],
        "evidence_fingerprint": triage["evidence_fingerprint"],
        "timeline": _timeline(triage["timeline"]),
    }


def _timeline(timeline: dict[str, Any]) -> dict[str, Any]:
    """The report's timeline in brief: its span, and before / peak / after of the error
    rate and the p95 (ADR 0019)."""
    summary = timeline["summary"]
    return {
        **{k: timeline[k] for k in ("from_ms", "to_ms", "complete", "truncated")},
        "points": len(timeline["points"]),
        **{name: {k: summary[name][k] for k in ("start", "max", "max_at_ms", "end")}
           for name in ("error_rate", "p95_ms")},
    }


def _events_scenario(session: Session, console: Console, status: Status) -> dict[str, Any]:
    """Wide events with a PMT_502 burst on checkout, and the evidence signals over HTTP."""
    status.update("sending a deploy, a dependency signal, an OOMKill and an alert")
    signal_ids = [_post(session.worker, path, body) for path, body in demo_signals()]
    console.log(f"accepted {len(signal_ids)} signals over HTTP")
    status.update("publishing 40 min of healthy traffic across 6 services")
    report = ProduceReport()
    asyncio.run(publish(session.bootstrap, "tocsin.events",
                        _encoded(traffic(DEMO_T0_MS, 2400, spike=False)), report))
    console.log(f"published {report.sent:,} healthy events")
    status.update("publishing a burst: checkout payment.charge fails with PMT_502")
    sent_at = time.monotonic()
    asyncio.run(publish(session.bootstrap, "tocsin.events",
                        _encoded(traffic(DEMO_T0_MS + 2_400_000, 180, spike=True)), report))
    status.update("waiting for the incident")
    incident = session.wait("SELECT * FROM incidents ORDER BY onset_ms LIMIT 1")[0]
    detect_s = time.monotonic() - sent_at
    console.log(f"incident {incident['incident_id']} opened on {incident['family']}")
    status.update("acknowledging it, as the person on call would")
    ack = _acknowledge(session.worker, incident["incident_id"])
    console.log(f"acknowledged by {ack['by']} (phase {ack['phase']}, seq {ack['seq']})")
    status.update("publishing 25 min of recovery traffic")
    asyncio.run(publish(session.bootstrap, "tocsin.events",
                        _encoded(traffic(DEMO_T0_MS + 2_580_000, 1500, spike=False)), report))
    status.update("waiting for the incident to resolve and its timeline to complete")
    incident = session.wait("SELECT * FROM incidents WHERE status = 'resolved' LIMIT 1")[0]
    triage = session.final_report(incident["incident_id"])
    events = session.lifecycle(incident["incident_id"])
    console.log("lifecycle: " + ", ".join(f"{e['kind']} at {_iso(e['at_ms'])}"
                                          for e in events))
    _show(console, triage)
    return {**_summary(incident, events, triage), "events_published": report.sent,
            "detect_seconds": round(detect_s, 3),
            "acknowledged_by": incident["acknowledged_by"], "mtta_ms": incident["mtta_ms"],
            "mttr_ms": incident["mttr_ms"]}


TRACE_FAMILY = "checkout:POST /api/checkout:HTTP_502"


def _trace_records(requests: int, failing: Container[int], t0_ms: int, seed: int
                   ) -> list[tuple[bytes | None, bytes]]:
    """SDK-made traces, one ``ExportTraceServiceRequest`` record per trace keyed by its
    trace id: what the Collector's Kafka exporter writes with ``partition_traces_by_id``."""
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in workload(requests, failing, t0_ms * 1_000_000, seed, every_ms=1000):
        by_trace.setdefault(span.context.trace_id, []).append(span)
    return [(f"{trace_id:032x}".encode(), proto(spans))
            for trace_id, spans in by_trace.items()]


def _traces_scenario(session: Session, console: Console, status: Status) -> dict[str, Any]:
    """The same checkout → payment failure, sent only as OTLP spans made with the official
    OpenTelemetry SDK (frontend → checkout → payment, one request a second; payment
    declines two of every three for 3 minutes and its callers answer 502)."""
    report = ProduceReport()
    status.update("making and publishing 40 min of healthy traces (OpenTelemetry SDK)")
    asyncio.run(publish(session.bootstrap, "otlp_spans",
                        _trace_records(2400, (), DEMO_T0_MS, seed=1), report))
    console.log(f"published {report.sent:,} healthy traces on otlp_spans (otlp_proto)")
    status.update("publishing a burst: payment declines, checkout and frontend answer 502")
    sent_at = time.monotonic()
    burst = [i for i in range(180) if i % 3 != 0]
    asyncio.run(publish(session.bootstrap, "otlp_spans",
                        _trace_records(180, burst, DEMO_T0_MS + 2_400_000, seed=2), report))
    status.update("waiting for the incident")
    incident = session.wait(f"SELECT * FROM incidents WHERE family = '{TRACE_FAMILY}' "
                            "ORDER BY onset_ms LIMIT 1")[0]
    detect_s = time.monotonic() - sent_at
    console.log(f"incident {incident['incident_id']} opened on {incident['family']}")
    status.update("publishing 25 min of recovery traces")
    asyncio.run(publish(session.bootstrap, "otlp_spans",
                        _trace_records(1500, (), DEMO_T0_MS + 2_580_000, seed=3), report))
    status.update("waiting for the incident to resolve and its timeline to complete")
    incident = session.wait(f"SELECT * FROM incidents WHERE family = '{TRACE_FAMILY}' "
                            "AND status = 'resolved' LIMIT 1")[0]
    triage = session.final_report(incident["incident_id"])
    events = session.lifecycle(incident["incident_id"])
    console.log("lifecycle: " + ", ".join(f"{e['kind']} at {_iso(e['at_ms'])}"
                                          for e in events))
    opened = session.query("SELECT family FROM incidents ORDER BY family")
    console.log("incidents opened: " + ", ".join(r["family"] for r in opened))
    _show(console, triage)
    propagation = triage["snapshots"]["propagation"]
    blast = triage["snapshots"]["blast"]
    origin = propagation.get("origin") or {}
    return {**_summary(incident, events, triage), "traces_published": report.sent,
            "detect_seconds": round(detect_s, 3),
            "incidents": [r["family"] for r in opened],
            "origin": {"service": origin.get("service"), "step": origin.get("step")},
            "path": [h["service"] for h in propagation.get("path") or ()],
            "propagation_capture": propagation["capture"],
            "affected_requests": blast["affected_requests"],
            "distinct_users": blast.get("distinct_users"),
            "sample_trace": propagation.get("sample_trace")}
