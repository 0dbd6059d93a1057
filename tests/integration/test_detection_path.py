"""Spike in, exactly one `opened` out, one DuckDB row; quiet traffic opens nothing."""

from __future__ import annotations

from pathlib import Path

from tests.integration.harness import (
    T0_MS,
    Names,
    WorkerProc,
    event,
    incident_records,
    produce_events,
    spike_log,
    steady,
)


def test_spike_opens_exactly_one_incident(broker: str, tmp_path: Path) -> None:
    names = Names.fresh("spike")
    log = spike_log()
    produce_events(broker, names.events, log)
    worker = WorkerProc(broker, names, tmp_path / "spike.duckdb").start()
    try:
        worker.wait_projected(len(log))
        rows = worker.query("SELECT incident_id, family, env, status, onset_ms, "
                            "opened_window_count, opened_baseline FROM incidents")
    finally:
        assert worker.stop() == 0
    records = incident_records(broker, names.incidents)
    opened = [r for r in records if r["kind"] == "opened"]
    assert len(opened) == 1
    assert opened[0]["family"] == "checkout:payment.charge:PMT_502"
    # The fifth error inside the window crosses MIN_COUNT with a zero baseline.
    assert opened[0]["onset_ms"] == T0_MS + 2_400_000 + 4_000
    assert opened[0]["window_count"] == 5 and opened[0]["lift"] is None
    assert opened[0]["downstream"] == "payment", "the failing step's downstream travels along"
    assert [r["kind"] for r in records] == ["opened", "recovering", "resolved"]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert len(rows) == 1
    assert rows[0]["incident_id"] == opened[0]["incident_id"]
    assert rows[0]["status"] == "resolved"


def test_steady_traffic_and_low_traffic_noise_open_nothing(broker: str, tmp_path: Path
                                                           ) -> None:
    names = Names.fresh("quiet")
    log = steady(T0_MS, 3600, ("api", "cart"))
    # Low traffic: a service with 4 requests, 3 of them failing (the peers' false positive).
    for i in range(4):
        log.append(event(T0_MS + 1_000_000 + i * 1000, "tiny", "GET /",
                         error="E500" if i < 3 else None))
    # Noise: 4 errors of one family in every 10 minutes, forever below MIN_COUNT.
    for k in range(24):
        log.append(event(T0_MS + k * 150_000 + 17, "api", "GET /", error="API_500"))
    log.sort(key=lambda e: e["event_time_ms"])
    produce_events(broker, names.events, log)
    worker = WorkerProc(broker, names, tmp_path / "quiet.duckdb").start()
    try:
        worker.wait_projected(len(log))
        assert worker.query("SELECT count(*) AS n FROM incidents") == [{"n": 0}]
        errors = worker.query("SELECT sum(errors)::INT AS n FROM family_windows")
        assert errors == [{"n": 27}]
    finally:
        assert worker.stop() == 0
    assert incident_records(broker, names.incidents) == []


def test_a_version_change_on_wide_events_registers_a_deploy_signal(broker: str,
                                                                   tmp_path: Path) -> None:
    from tests.integration.harness import read_topic
    from tocsin.schemas.signal_wire import decode_signal

    names = Names.fresh("ver")
    log = [event(T0_MS + k * 1000, "checkout", "GET /", service_version="1.4.2")
           for k in range(60)]
    log += [event(T0_MS + 60_000 + k * 1000, "checkout", "GET /",
                  service_version="1.5.0" if k % 2 else "1.4.2") for k in range(60)]
    produce_events(broker, names.events, log)
    signals_topic = f"sig-{names.app_id}"
    worker = WorkerProc(broker, names, tmp_path / "ver.duckdb",
                        extra_env={"TOCSIN_TOPICS__SIGNALS": signals_topic}).start()
    try:
        worker.wait_projected(len(log))
    finally:
        assert worker.stop() == 0
    deploys = [decode_signal(r.value) for r in read_topic(broker, signals_topic)]
    assert [(d.type, d.service, d.version, d.event_time_ms) for d in deploys] == [
        ("deploy", "checkout", "1.5.0", T0_MS + 61_000)]
