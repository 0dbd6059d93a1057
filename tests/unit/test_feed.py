"""processors/feed.py: the detection stage's per-event rules, pure. ``feed`` gives what the
stage's loop computed inline before (same changes, same deploys, same state), a suppressed
event only tells time, and a version change's deploy signal keeps its identity."""

from __future__ import annotations

import random
from typing import Any

from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.detector_state import VersionChanged
from tocsin.processors.family import failing_downstream, family_of
from tocsin.processors.feed import TELLS_TIME_ONLY, deploy_delivery, deploy_signal, feed
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.signals.model import Signal

CONFIG = DetectorConfig()
T0 = 1_793_610_000_000


def inline(detector: PartitionDetector, event: dict[str, Any]
           ) -> tuple[VersionChanged | None, list[IncidentEvent]]:
    """What streams/stages/detect.py's loop did before the rules moved (kept verbatim as
    the reference)."""
    changed = None
    t_ms = event["event_time_ms"]
    service = event["service"]
    version = event.get("service_version")
    if version:
        changed = detector.version_seen(t_ms, event["env"], service, version)
    if event["status"] == "suppressed":
        changes = detector.tick(t_ms, service)
    else:
        family = family_of(event)
        changes = detector.observe(
            t_ms, event["env"], service, event["step"], family,
            failing_downstream(event) if family is not None else None,
            event.get("trace_id"))
    return changed, list(changes)


def events(seed: int, n: int = 4_000) -> list[dict[str, Any]]:
    """Validated-looking wide events: three services, spikes of one error family, some
    suppressed, versions that change (and roll back), downstreams, steps."""
    rng = random.Random(seed)
    out = []
    t = T0
    versions = {"checkout": "1.0", "payment": "0.9", "search": None}
    for i in range(n):
        t += rng.choice([0, 50, 200, 1_000, 5_000])
        service = rng.choice(list(versions))
        if rng.random() < 0.01:
            versions[service] = rng.choice(["1.0", "1.1", "0.9", "2.0", ""])
        spike = (i // 400) % 3 == 1
        status = rng.choices(["ok", "error", "suppressed", "timeout"],
                             [5, 8 if spike else 1, 1, 1])[0]
        event: dict[str, Any] = {
            "event_time_ms": t, "service": service, "env": rng.choice(["prod", "prod", "eu"]),
            "step": rng.choice(["GET /", "POST /pay"]), "status": status,
            "error_code": rng.choice([None, "PMT_502", "DB_TIMEOUT"]) if status != "ok"
            else None,
            "service_version": versions[service], "trace_id": f"{i:032x}",
            "downstream": rng.choice([None, {"service": "db", "endpoint": "/q",
                                             "kind": "sql"}]) if status != "ok" else None,
            "steps": [],
        }
        out.append(event)
    return out


def test_feed_gives_what_the_stage_computed_inline() -> None:
    for seed in range(4):
        old, new = PartitionDetector(CONFIG), PartitionDetector(CONFIG)
        opened = deploys = 0
        for event in events(seed):
            want = inline(old, event)
            changed, changes = feed(new, event)
            got = (changed, list(changes))
            assert got == want
            opened += sum(c.kind == "opened" for c in changes)
            deploys += changed is not None
        assert new.snapshot() == old.snapshot()
        assert new.drain_windows() == old.drain_windows()
        assert opened and deploys  # the stream exercised both


def test_a_suppressed_event_only_tells_time() -> None:
    detector = PartitionDetector(CONFIG)
    event = {"event_time_ms": T0, "service": "s", "env": "prod", "step": "GET /",
             "status": TELLS_TIME_ONLY, "error_code": "E", "service_version": None,
             "trace_id": None, "downstream": None, "steps": []}
    changed, changes = feed(detector, event)
    assert (changed, list(changes)) == (None, [])
    assert detector.clocks["s"] == T0
    assert detector.drain_windows() == ([], [])  # not a request, not an error
    assert detector.families == {}
    feed(detector, {**event, "status": "error"})
    fams, steps = detector.drain_windows()
    assert [w.errors for w in fams] == [1] and [(w.requests, w.errors) for w in steps] == [
        (1, 1)]


def test_a_suppressed_event_still_reports_a_version_change() -> None:
    detector = PartitionDetector(CONFIG)
    base = {"event_time_ms": T0, "service": "s", "env": "prod", "step": "x",
            "status": "ok", "service_version": "1"}
    assert feed(detector, base)[0] is None  # the first version seen is no deploy
    changed, _ = feed(detector, {**base, "event_time_ms": T0 + 1, "status": "suppressed",
                                 "service_version": "2"})
    assert changed == VersionChanged("s", "prod", "2", "1", T0 + 1)
    assert feed(detector, {**base, "service_version": ""})[0] is None  # empty: no version


def reference_signal(changed: VersionChanged) -> Signal:
    """The signal _register_deploy built inline before (verbatim)."""
    return Signal(
        dedup_key=f"version:{changed.service}|{changed.env}|{changed.version}|"
                  f"{changed.t_ms}",
        type="deploy", state="firing", source="native", service=changed.service,
        env=changed.env, severity="info", event_time_ms=changed.t_ms,
        starts_at_ms=changed.t_ms, version=changed.version,
        title=f"{changed.service} {changed.version} seen on events "
              f"(was {changed.previous})",
        reason="version_changed", annotations={"previous_version": changed.previous})


def test_deploy_signal_of_a_version_change() -> None:
    changed = VersionChanged("payment", "production", "0.9.5", "0.9.4", T0)
    signal = deploy_signal(changed)
    assert signal == reference_signal(changed)
    assert (signal.type, signal.state, signal.source, signal.service, signal.env,
            signal.version, signal.event_time_ms, signal.starts_at_ms, signal.reason) == (
        "deploy", "firing", "native", "payment", "production", "0.9.5", T0, T0,
        "version_changed")
    assert signal.annotations == {"previous_version": "0.9.4"}
    assert signal.title == "payment 0.9.5 seen on events (was 0.9.4)"
    # Identity: the same change gives the same id (a replay registers it once); another
    # time, version or env is another deploy.
    assert deploy_signal(changed).signal_id == signal.signal_id
    others = [VersionChanged("payment", "production", "0.9.5", "0.9.4", T0 + 1),
              VersionChanged("payment", "production", "0.9.6", "0.9.4", T0),
              VersionChanged("payment", "staging", "0.9.5", "0.9.4", T0)]
    assert len({deploy_signal(c).signal_id for c in others} | {signal.signal_id}) == 4
    assert deploy_delivery(signal) == f"registered:{signal.signal_id}"
