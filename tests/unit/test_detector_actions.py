"""The detector deciding operator actions (ADR 0016): commands read in log order among a
family's events, on fake event times, no broker. Acknowledge and the other phase moves,
a person's resolve that disarms the family, a reopen that holds the incident open, notes
on resolved incidents, refusals, the closed incidents kept and forgotten, and state that
survives a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TypeAlias

import pytest

from tests.unit.test_detector import MIN, PAY, T0, Ev, errors, healthy, merged, run
from tocsin.processors import detector as detector_module
from tocsin.processors.actions import Command, Refusal, action_id
from tocsin.processors.config import DetectorConfig
from tocsin.processors.detector import CLOSED_KEPT_MS, PartitionDetector
from tocsin.processors.family import Family
from tocsin.processors.lifecycle import IncidentEvent, incident_id
from tocsin.processors.windows import bucket_index

SEARCH = Family("prod", "search", "GET /", "S1")
SPIKE_AT = T0 + 40 * MIN + 500  # the first error of the first spike
EVICT = "evict"  # a script step: det.evict_idle()

Step: TypeAlias = Ev | Command | str
Outcome: TypeAlias = IncidentEvent | Refusal


def command(incident: str, action: str, at_ms: int, actor: str = "ana", *,
            service: str = "checkout", env: str = "prod", note: str | None = None,
            title: str | None = None, status: str | None = None,
            key: str | None = None) -> Command:
    """A command as the API writes it; its id from a key naming the action and time."""
    fields: dict[str, str | None] = {"action": action, "by": actor, "note": note,
                                     "title": title, "status": status}
    act_id = action_id(incident, key or f"{action}@{at_ms}:{actor}", fields, 0)
    return Command(act_id, incident, action, actor, at_ms, service, env, note, title, status)


def applied(det: PartitionDetector, cmd: Command) -> IncidentEvent:
    """The one lifecycle event an applied command publishes."""
    out = det.act(cmd)
    assert isinstance(out, list), out
    assert len(out) == 1
    return out[0]


def refused(det: PartitionDetector, cmd: Command) -> Refusal:
    before = det.snapshot()
    out = det.act(cmd)
    assert isinstance(out, Refusal), out
    assert det.snapshot() == before, "a refused command changes nothing"
    return out


def feed(det: PartitionDetector, events: Iterable[Ev]) -> list[IncidentEvent]:
    return run(events, detector=det)


def play(det: PartitionDetector, steps: Sequence[Step]) -> list[Outcome | str]:
    """Events, commands and evictions in order; what each produced."""
    out: list[Outcome | str] = []
    for s in steps:
        if isinstance(s, Command):
            got = det.act(s)
            out += [got] if isinstance(got, Refusal) else got
        elif s == EVICT:
            det.evict_idle()
            out.append(json.dumps(det.counters.as_dict(), sort_keys=True))
        else:
            assert not isinstance(s, str)
            out += feed(det, [s])
    return out


def quiet(service: str, start: int, minutes: int) -> list[Ev]:
    """Ok traffic, one request a second, on the step the service's family fails on."""
    step = PAY.step if service == PAY.service else SEARCH.step
    return healthy(service, start, minutes, step=step)


def spike(det: PartitionDetector, family: Family = PAY, start: int = SPIKE_AT, n: int = 10
          ) -> IncidentEvent:
    """``n`` errors a second apart from ``start``: the incident they open."""
    out = feed(det, errors(family, start, n))
    assert [e.kind for e in out] == ["opened"]
    return out[0]


def opened(det: PartitionDetector) -> IncidentEvent:
    """A fresh detector: 40 quiet minutes on checkout, then a spike of 10 errors."""
    assert feed(det, quiet("checkout", T0, 40)) == []
    return spike(det)


def machine_resolved(det: PartitionDetector) -> tuple[IncidentEvent, IncidentEvent]:
    """The first spike, then quiet until the machine resolved it: (opened, resolved)."""
    first = opened(det)
    out = feed(det, quiet("checkout", SPIKE_AT + 10_000, 20))
    assert [e.kind for e in out] == ["recovering", "resolved"]
    return first, out[1]


# ------------------------------------------------------------------ phase moves


def test_acknowledge_moves_the_phase_and_the_machine_still_recovers_and_resolves() -> None:
    det = PartitionDetector(DetectorConfig())
    first = opened(det)
    at = SPIKE_AT + 10_000
    ack = command(first.incident_id, "acknowledge", at, "ana")
    event = applied(det, ack)
    assert event.kind == "acknowledged"
    assert (event.incident_id, event.seq) == (first.incident_id, first.seq + 1)
    assert (event.phase, event.status) == ("acknowledged", "active")
    assert (event.actor, event.action_id, event.at_ms) == ("ana", ack.action_id, at)
    assert event.error_count == 10 and event.window_count == 10
    incident = det.families[PAY].incident
    assert incident is not None and incident.phase == "acknowledged"
    assert incident.actions == [ack.action_id]

    out = feed(det, quiet("checkout", at, 20))
    assert [(e.kind, e.seq, e.phase, e.status) for e in out] == [
        ("recovering", 3, "acknowledged", "recovering"),
        ("resolved", 4, "resolved", "resolved"),
    ]
    assert all(e.actor is None and e.action_id is None for e in out)
    assert det.open_incidents() == []
    assert list(det.closed) == [first.incident_id]


def test_phases_move_along_the_table_and_notes_leave_them_alone() -> None:
    det = PartitionDetector(DetectorConfig())
    inc = opened(det).incident_id
    at = SPIKE_AT + 10_000
    steps = [
        (command(inc, "investigate", at, "ana"), "investigating", "investigating"),
        (command(inc, "annotate", at + 1, "bo", note="gateway 502s"), "annotated",
         "investigating"),
        (command(inc, "mitigate", at + 2, "bo"), "mitigated", "mitigated"),
        (command(inc, "hypothesis", at + 3, "cy", title="bad deploy", status="proposed"),
         "hypothesis", "mitigated"),
        (command(inc, "investigate", at + 4, "ana"), "investigating", "investigating"),
    ]
    for seq, (cmd, kind, phase) in enumerate(steps, start=2):
        event = applied(det, cmd)
        assert (event.kind, event.phase, event.seq, event.status) == (kind, phase, seq,
                                                                        "active")
        assert (event.note, event.title, event.hypothesis_status) == (
            cmd.note, cmd.title, cmd.hypothesis_status)


# ------------------------------------------------------------------ idempotence, refusals


def test_a_command_read_twice_applies_once() -> None:
    det = PartitionDetector(DetectorConfig())
    inc = opened(det).incident_id
    ack = command(inc, "acknowledge", SPIKE_AT + 10_000)
    assert applied(det, ack).seq == 2
    assert det.act(ack) == []
    assert det.counters.actions_repeated == 1
    incident = det.families[PAY].incident
    assert incident is not None and incident.seq == 2
    # Still recognised once the incident is resolved and kept closed.
    feed(det, quiet("checkout", SPIKE_AT + 10_000, 20))
    assert inc in det.closed
    assert det.act(ack) == []
    assert det.counters.actions_repeated == 2
    assert det.closed[inc][1].seq == 4


def test_refusals_name_the_rule_and_change_nothing() -> None:
    det = PartitionDetector(DetectorConfig())
    inc = opened(det).incident_id
    at = SPIKE_AT + 10_000
    applied(det, command(inc, "acknowledge", at, "ana"))

    again = refused(det, command(inc, "acknowledge", at + 1, "bo"))
    assert again.rule == "lifecycle.acknowledge"
    assert "this one is acknowledged" in again.message
    assert refused(det, command(inc, "reopen", at + 1)).rule == "lifecycle.reopen"

    unknown = refused(det, command("inc_0000000000000000", "annotate", at, note="n"))
    assert unknown.rule == "incident.unknown"
    assert "inc_0000000000000000" in unknown.message
    # Open, but not on the service the command names: not found there.
    assert refused(det, command(inc, "mitigate", at, service="search")).rule == \
        "incident.unknown"
    wrong_env = refused(det, command(inc, "mitigate", at, env="staging"))
    assert wrong_env.rule == "incident.env"
    assert "staging" in wrong_env.message and "prod" in wrong_env.message

    feed(det, quiet("checkout", at, 20))
    assert inc in det.closed
    wrong_service = refused(det, command(inc, "annotate", at + 2, service="search", note="n"))
    assert wrong_service.rule == "incident.service"
    assert "checkout" in wrong_service.message
    assert refused(det, command(inc, "annotate", at + 2, env="dev", note="n")).rule == \
        "incident.env"
    assert refused(det, command(inc, "resolve", at + 2)).rule == "lifecycle.resolve"


# ------------------------------------------------------------------ a person's resolve


def test_a_persons_resolve_disarms_the_family_until_its_window_stops_qualifying() -> None:
    cfg = DetectorConfig()
    det = PartitionDetector(cfg)
    first = opened(det)
    at = SPIKE_AT + 10_000
    event = applied(det, command(first.incident_id, "resolve", at, "cy", note="rolled back"))
    assert (event.kind, event.status, event.phase) == ("resolved", "resolved", "resolved")
    assert (event.actor, event.note, event.seq) == ("cy", "rolled back", 2)
    assert det.open_incidents() == [] and first.incident_id in det.closed
    fs = det.families[PAY]
    assert fs.incident is None and not fs.armed

    # The errors go on at the same rate: the window qualifies, and nothing opens.
    assert feed(det, merged(quiet("checkout", at, 2), errors(PAY, at + 500, 60))) == []
    qualifies, count, _ = det.evaluate(fs, bucket_index(det.clocks["checkout"], cfg.bucket_ms))
    assert qualifies and count >= cfg.min_count
    assert not fs.armed
    assert det.closed[first.incident_id][1].error_count == 10, "closed: counts no more"

    # Quiet until the window drained; the next error evaluates as not qualifying ...
    drained = feed(det, quiet("checkout", at + 2 * MIN, 18))
    assert [(e.kind, e.incident_id) for e in drained] == [("timeline", first.incident_id)]
    second_at = T0 + 61 * MIN
    assert feed(det, errors(PAY, second_at, 1)) == []
    assert fs.armed
    # ... and a new spike opens a new incident.
    out = feed(det, errors(PAY, second_at + 1000, 9))
    assert [e.kind for e in out] == ["opened"]
    assert out[0].incident_id != first.incident_id
    assert out[0].incident_id == incident_id(PAY, second_at + 4000)
    assert (out[0].seq, out[0].phase) == (1, "triggered")


# ------------------------------------------------------------------ reopen


def test_a_reopened_incident_is_held_open_until_a_person_resolves_it() -> None:
    det = PartitionDetector(DetectorConfig())
    first, resolved = machine_resolved(det)
    inc = first.incident_id
    at = T0 + 61 * MIN
    event = applied(det, command(inc, "reopen", at, "dan", note="customers still fail"))
    assert (event.kind, event.status, event.phase) == ("reopened", "active", "triggered")
    assert (event.seq, event.actor, event.incident_id) == (resolved.seq + 1, "dan", inc)
    assert inc not in det.closed
    assert [i.incident_id for _, i in det.open_incidents()] == [inc]
    incident = det.families[PAY].incident
    assert incident is not None and incident.held

    # An hour of ok traffic, then half an hour of silence from checkout while another
    # service moves the partition's watermark: the machine neither recovers nor resolves.
    assert feed(det, quiet("checkout", at, 60)) == []
    assert feed(det, quiet("search", at + 60 * MIN, 30)) == []
    assert incident.status == "active" and det.families[PAY].incident is incident

    # The family's errors count on it, and open nothing else.
    before = incident.error_count
    assert feed(det, errors(PAY, at + 91 * MIN, 8)) == []
    assert incident.error_count == before + 8
    assert incident.peak_count >= 8

    done = applied(det, command(inc, "resolve", at + 92 * MIN, "eve"))
    assert (done.kind, done.status, done.phase, done.actor) == ("resolved", "resolved",
                                                                "resolved", "eve")
    assert done.error_count == before + 8 and done.seq == event.seq + 1
    assert det.open_incidents() == [] and inc in det.closed
    assert not det.closed[inc][1].held


def test_reopen_is_refused_while_the_family_has_another_open_incident() -> None:
    det = PartitionDetector(DetectorConfig())
    first, _ = machine_resolved(det)
    second = spike(det, start=T0 + 61 * MIN)
    assert second.incident_id != first.incident_id
    refusal = refused(det, command(first.incident_id, "reopen", T0 + 62 * MIN))
    assert refusal.rule == "lifecycle.one_open_per_family"
    assert second.incident_id in refusal.message
    assert det.closed[first.incident_id][1].phase == "resolved"


def test_reopen_after_the_family_was_forgotten_starts_it_again() -> None:
    det = PartitionDetector(DetectorConfig())
    first, _ = machine_resolved(det)
    feed(det, quiet("checkout", T0 + 61 * MIN, 45))
    det.evict_idle()
    assert PAY not in det.families and first.incident_id in det.closed
    event = applied(det, command(first.incident_id, "reopen", T0 + 106 * MIN))
    assert (event.kind, event.status, event.window_count) == ("reopened", "active", 0)
    fs = det.families[PAY]
    assert fs.incident is not None and fs.incident.held
    assert feed(det, errors(PAY, T0 + 107 * MIN, 3)) == []
    assert fs.incident.error_count == 13


# ------------------------------------------------------------------ notes on resolved


def test_notes_and_hypotheses_on_a_machine_resolved_incident() -> None:
    det = PartitionDetector(DetectorConfig())
    first, resolved = machine_resolved(det)
    inc = first.incident_id
    at = T0 + 70 * MIN
    note = applied(det, command(inc, "annotate", at, "ana", note="postmortem on Monday"))
    assert (note.kind, note.status, note.phase) == ("annotated", "resolved", "resolved")
    assert (note.note, note.actor, note.seq) == ("postmortem on Monday", "ana",
                                                 resolved.seq + 1)
    idea = applied(det, command(inc, "hypothesis", at + 1, "bo", title="bad deploy",
                                status="confirmed"))
    assert (idea.kind, idea.status, idea.title, idea.hypothesis_status) == (
        "hypothesis", "resolved", "bad deploy", "confirmed")
    assert idea.seq == resolved.seq + 2
    kept = det.closed[inc][1]
    assert (kept.status, kept.phase, kept.seq) == ("resolved", "resolved", idea.seq)
    assert det.open_incidents() == []


# ------------------------------------------------------------------ checkpoints


def build_state(det: PartitionDetector) -> dict[str, str]:
    """Two closed incidents on checkout (one machine-resolved, one resolved by a person
    while its window qualified, so the family is disarmed) and a held one on search."""
    assert feed(det, merged(quiet("checkout", T0, 40), quiet("search", T0, 40))) == []
    out = feed(det, merged(errors(PAY, SPIKE_AT, 10), errors(SEARCH, SPIKE_AT + 200, 10)))
    assert [e.kind for e in out] == ["opened", "opened"]
    a, b = out[0].incident_id, out[1].incident_id
    applied(det, command(a, "acknowledge", SPIKE_AT + 10_000, "ana"))
    out = feed(det, merged(quiet("checkout", SPIKE_AT + 10_000, 14),
                           quiet("search", SPIKE_AT + 10_000, 14)))
    assert sorted(e.kind for e in out) == ["recovering", "recovering", "resolved",
                                           "resolved"]
    applied(det, command(b, "reopen", T0 + 55 * MIN, "dan", service="search"))
    c = spike(det, start=T0 + 55 * MIN).incident_id
    applied(det, command(c, "resolve", T0 + 55 * MIN + 10_000, "cy"))
    return {"a": a, "b": b, "c": c}


def continuation(ids: dict[str, str]) -> list[Step]:
    a, b, c = ids["a"], ids["b"], ids["c"]
    t = T0 + 55 * MIN + 10_500
    return [
        *errors(PAY, t, 20),  # disarmed: opens nothing
        command(a, "acknowledge", SPIKE_AT + 10_000, "ana"),  # read again
        command(a, "annotate", t + 20_000, "bo", note="same as last week"),
        command(c, "hypothesis", t + 21_000, "bo", title="gateway", status="proposed"),
        command(a, "reopen", t + 22_000, "dan"),
        command(c, "reopen", t + 23_000, "dan"),  # refused: a is open for the family
        *errors(SEARCH, t + 24_000, 5),  # count on the held b
        *merged(quiet("checkout", t + 30_000, 30), quiet("search", t + 30_000, 30)),
        EVICT,
        command(b, "resolve", t + 31 * MIN, "eve", service="search"),
        command(a, "resolve", t + 31 * MIN, "eve"),
        *errors(PAY, t + 32 * MIN, 10),  # re-armed by the first, opens with the fifth
        *errors(SEARCH, t + 32 * MIN, 10),
        EVICT,
    ]


def test_snapshot_and_restore_carry_closed_disarmed_and_held_incidents() -> None:
    cfg = DetectorConfig()
    det = PartitionDetector(cfg)
    ids = build_state(det)
    snap = det.snapshot()
    assert [row[4][0] for row in snap["closed"]] == [ids["a"], ids["c"]]
    pay_row = next(r for r in snap["families"] if r[:4] == list(PAY))
    search_row = next(r for r in snap["families"] if r[:4] == list(SEARCH))
    assert pay_row[-1] is False and pay_row[6] is None  # disarmed, nothing open
    assert search_row[-1] is True and search_row[6][0] == ids["b"]
    assert search_row[6][10] is True  # held

    restored = PartitionDetector.restore(cfg, json.loads(json.dumps(snap)))
    assert restored.snapshot() == snap
    assert not restored.families[PAY].armed
    held = restored.families[SEARCH].incident
    assert held is not None and held.held and held.incident_id == ids["b"]

    steps = continuation(ids)
    expected = play(det, steps)
    assert play(restored, steps) == expected
    assert restored.snapshot() == det.snapshot()

    # The continuation exercised what the state carries.
    kinds = [(o.incident_id, o.kind) for o in expected
             if isinstance(o, IncidentEvent) and o.kind != "timeline"]
    refusals = [o.rule for o in expected if isinstance(o, Refusal)]
    assert refusals == ["lifecycle.one_open_per_family"]
    assert kinds[:3] == [(ids["a"], "annotated"), (ids["c"], "hypothesis"),
                         (ids["a"], "reopened")]
    assert kinds[3:5] == [(ids["b"], "resolved"), (ids["a"], "resolved")]
    new = kinds[5:]
    assert [k for _, k in new] == ["opened", "opened"]
    assert not {i for i, _ in new} & set(ids.values())
    assert det.counters.actions_repeated == 1


# ------------------------------------------------------------------ forgetting


def test_closed_incidents_are_forgotten_after_a_week_of_watermark_time() -> None:
    det = PartitionDetector(DetectorConfig())
    first, resolved = machine_resolved(det)
    second = spike(det, start=T0 + 61 * MIN)
    by_person = applied(det, command(second.incident_id, "resolve", T0 + 62 * MIN, "cy"))
    assert list(det.closed) == [first.incident_id, second.incident_id]

    feed(det, quiet("search", resolved.at_ms + CLOSED_KEPT_MS, 1)[:1])
    det.evict_idle()
    assert list(det.closed) == [first.incident_id, second.incident_id], "a week: still kept"
    assert det.counters.closed_forgotten == 0

    feed(det, quiet("search", resolved.at_ms + CLOSED_KEPT_MS + 1, 1)[:1])
    det.evict_idle()
    assert list(det.closed) == [second.incident_id]
    assert det.counters.closed_forgotten == 1

    feed(det, quiet("search", by_person.at_ms + CLOSED_KEPT_MS + 1, 1)[:1])
    det.evict_idle()
    assert det.closed == {}
    assert det.counters.closed_forgotten == 2

    for inc in (first.incident_id, second.incident_id):
        late = refused(det, command(inc, "annotate", T0 + 8 * 24 * 60 * MIN, note="n"))
        assert late.rule == "incident.unknown"
        assert "168 h" in late.message
    assert refused(det, command(first.incident_id, "reopen", T0 + 8 * 24 * 60 * MIN)).rule \
        == "incident.unknown"


def test_at_most_max_closed_are_kept_the_oldest_resolved_go_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detector_module, "MAX_CLOSED", 2)
    det = PartitionDetector(DetectorConfig())
    assert feed(det, quiet("checkout", T0, 40)) == []
    ids: list[str] = []
    for k in range(3):
        start = SPIKE_AT + k * 25 * MIN
        ids.append(spike(det, start=start).incident_id)
        applied(det, command(ids[-1], "resolve", start + 10_000, "cy"))
        # Disarmed: the next spike opens once the window drained (its first error
        # re-arms the family), with the earlier spikes out of its baseline's median.
        feed(det, quiet("checkout", start + 10_000, 24))
    assert len(set(ids)) == 3
    assert list(det.closed) == ids[1:]
    assert det.counters.closed_forgotten == 1
    assert refused(det, command(ids[0], "annotate", T0 + 100 * MIN, note="n")).rule == \
        "incident.unknown"
