"""The rules file's [runtime] rule (ADR 0022, processors/runtime_detection.py): a
CrashLoopBackOff that keeps firing for `persistent_after` opens `service:@runtime:REASON`
through the lifecycle every family has; off by default; read from the events topic in
log order, so a replay decides the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from tocsin.cli import main
from tocsin.clients.tlog import LogRecord, write_export
from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import PartitionDetector
from tocsin.processors.feed import feed
from tocsin.processors.lifecycle import IncidentEvent
from tocsin.processors.rules import RuleSet, load_rules
from tocsin.processors.signals.model import Signal
from tocsin.schemas.signal_wire import encode_signal

T0 = 1_793_610_000_000
MIN = 60_000
CFG = DetectorConfig()
ON = """version = 1
[runtime]
enabled = true
persistent_after = "10m"
"""


def rules(text: str = ON) -> RuleSet:
    return load_rules(text, "rules.toml", base=CFG)


def crash(t_ms: int, *, reason: str = "CrashLoopBackOff", subtype: str = "crashloop",
          state: str = "firing", service: str = "api") -> Signal:
    return Signal(dedup_key=f"k8s:{service}:{reason}:{t_ms}", type="runtime", state=state,
                  source="kubernetes", service=service, env="prod", severity="critical",
                  title=f"{service} {reason}", reason=reason, event_time_ms=t_ms,
                  runtime_subtype=subtype, restart_count=3)


def requests(minutes: int) -> list[dict[str, Any]]:
    return [{"event_time_ms": T0 + s * 1000, "service": "api", "env": "prod",
             "step": "GET /", "status": "ok"} for s in range(minutes * 60)]


def run(det: PartitionDetector, signals: list[Signal], minutes: int = 60
        ) -> list[IncidentEvent]:
    """Requests every second for ``minutes``, the signals among them in time order."""
    items: list[tuple[int, Any]] = [(e["event_time_ms"], e) for e in requests(minutes)]
    items += [(s.event_time_ms, s) for s in signals]
    out: list[IncidentEvent] = []
    for _, item in sorted(items, key=lambda x: (x[0], isinstance(x[1], dict))):
        out += det.runtime_signal(item) if isinstance(item, Signal) else feed(det, item)[1]
    return out


def crash_loop(first_min: int, last_min: int, **kw: Any) -> list[Signal]:
    return [crash(T0 + m * MIN + 500, **kw) for m in range(first_min, last_min + 1)]


def test_a_crash_loop_that_keeps_firing_opens_then_recovers_once_it_stops() -> None:
    changes = run(PartitionDetector(CFG, rules()), crash_loop(5, 25))
    assert [c.kind for c in changes][:3] == ["opened", "recovering", "resolved"]
    opened = changes[0]
    assert opened.family == "api:@runtime:CrashLoopBackOff" and opened.rule == "runtime.v1"
    assert opened.at_ms == T0 + 15 * MIN + 500  # the occurrence 10 min into the stretch
    assert opened.window_count == 11 and opened.rules_hash == rules().hash
    # Recovers once no occurrence came for 10 min (minute 35), resolves 2 min later.
    assert T0 + 35 * MIN <= changes[1].at_ms <= T0 + 36 * MIN
    assert changes[2].at_ms == changes[1].at_ms + CFG.resolve_after_ms


def test_off_by_default_and_short_loops_open_nothing() -> None:
    assert run(PartitionDetector(CFG, rules("version = 1\n")), crash_loop(5, 25)) == []
    assert run(PartitionDetector(CFG), crash_loop(5, 25)) == []
    assert run(PartitionDetector(CFG, rules()), crash_loop(5, 12)) == []  # 7 minutes


def test_backoff_and_crashloopbackoff_are_one_family_and_oom_is_not_named() -> None:
    signals = crash_loop(5, 10, reason="BackOff") + crash_loop(11, 16)
    signals += crash_loop(5, 30, reason="OOMKilled", subtype="oom_killed")
    changes = run(PartitionDetector(CFG, rules()), signals)
    assert {c.family for c in changes} == {"api:@runtime:CrashLoopBackOff"}


def test_a_resolved_signal_ends_the_stretch() -> None:
    signals = [*crash_loop(5, 12), crash(T0 + 13 * MIN, state="resolved")]
    signals += crash_loop(14, 20)
    assert run(PartitionDetector(CFG, rules()), signals) == []  # 7 + 6 minutes, not 10


def test_a_restore_mid_stretch_gives_the_same_changes() -> None:
    signals = crash_loop(5, 25)
    whole = run(PartitionDetector(CFG, rules()), signals)
    det = PartitionDetector(CFG, rules())
    first = run(det, [s for s in signals if s.event_time_ms < T0 + 10 * MIN], minutes=10)
    again = PartitionDetector.restore(CFG, det.snapshot(), rules())
    items = [(e["event_time_ms"], e) for e in requests(60)[600:]]
    items += [(s.event_time_ms, s) for s in signals if s.event_time_ms >= T0 + 10 * MIN]
    rest: list[IncidentEvent] = []
    for _, item in sorted(items, key=lambda x: (x[0], isinstance(x[1], dict))):
        rest += again.runtime_signal(item) if isinstance(item, Signal) \
            else feed(again, item)[1]
    assert first + rest == whole and whole


def test_replay_reads_runtime_signals_from_the_events_topic(tmp_path: Path) -> None:
    """As the intake writes them: on the signals topic, and with the header
    tocsin.runtime on the events topic (key = service); a damaged one is a dead letter and
    the rest goes on. Triage reads them from the signals topic: the cause is runtime."""
    items: list[tuple[int, bytes, tuple[tuple[str, bytes | None], ...]]] = [
        (e["event_time_ms"], orjson.dumps(e), ()) for e in requests(60)]
    items += [(s.event_time_ms, encode_signal(s), (("tocsin.runtime", b"1"),))
              for s in crash_loop(5, 25)]
    items.append((T0 + 1, b"\x00not a signal", (("tocsin.runtime", b"1"),)))
    items.sort(key=lambda x: x[0])
    signals = [("tocsin.signals", 0, LogRecord(i, s.event_time_ms, b"api", encode_signal(s)))
               for i, s in enumerate(crash_loop(5, 25))]
    write_export(tmp_path / "log", [*(("tocsin.events", 0, LogRecord(i, t, b"api", v, h))
                                      for i, (t, v, h) in enumerate(items)), *signals])
    (tmp_path / "rules.toml").write_text(ON)
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "log"), "--rules",
                                       str(tmp_path / "rules.toml"), "--json"])
    assert result.exit_code == 0, result.stderr
    out = orjson.loads(result.stdout)
    assert [r["family"] for r in out["incidents"]] == ["api:@runtime:CrashLoopBackOff"]
    assert out["incidents"][0]["cause"] == "runtime"
    assert out["counts"]["dead_letters"] == 1
    off = CliRunner().invoke(main, ["replay", str(tmp_path / "log"), "--json"])
    assert orjson.loads(off.stdout)["incidents"] == []  # the rule off: nothing opens
