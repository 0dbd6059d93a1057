"""The fault campaign's input log and kill plan, every byte of both a function of the seed.

Built from the other benchmarks' generators, not copies of them:

- wide events: :func:`bench.workload.generate` (20 services round-robin, 5% background
  errors below the thresholds, four spikes of a fresh family, 4 h of event time), with
  three changes: the services that share an events partition with the span services are
  renamed (see :data:`RENAMED`), two spike services and one other service deploy a new
  ``service_version`` (a version change on events registers a deploy signal), and a few
  undecodable records are mixed in (dead letters);
- OTLP spans: :func:`tocsin.clients.otel_workload.workload` (frontend -> checkout ->
  payment, made with the OpenTelemetry SDK, seeded ids) in two segments, payment's
  version changing between them, a failure burst in the second; two traces a record,
  ``otlp_proto`` and every fourth record ``otlp_json``, one record on each of the six
  ``otlp_spans`` partitions per step, plus two records that are not OTLP at all;
- signals: :func:`bench.intake.native_payload` (alert, runtime, dependency, deploy) and
  :func:`bench.intake.alertmanager_payload` (two firing alerts), and a real Kubernetes Pod
  dump in CrashLoopBackOff (the shared fixtures, found as ``tests/fixtures_io.py`` finds
  them), each naming a service and an event time of the workload (most of them near an
  incident, so they correlate and reports change).

Why the renaming: ``tocsin.events`` is written by two producers, this one and the worker's
span intake (translated spans). On an events partition the two interleave by wall-clock
timing, and the detector's partition watermark (ADR 0002, idle grace) lets one service's
events move another's open incidents; kept on separate partitions, each partition's log is
a function of the input alone, as the comparison with an uninterrupted run requires.

The workload is cut into ``steps``: step k publishes its events and span records, then
its signals are POSTed. A kill happens right after a step's records were acknowledged:
"after k records published" is the seeded, reproducible part of a kill's instant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from tocsin.clients.otel_workload import otlp_json, proto, workload
from tocsin.processors.signals import intake

from .intake import alertmanager_payload, native_payload
from .workload import (
    DURATION_MS,
    PARTITIONS,
    REPLAY_SPIKES,
    SERVICES,
    SPIKE_LENGTH,
    T0_MS,
    generate,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
POD_FIXTURE = FIXTURES / "kubernetes" / "pod-v1-crashloopbackoff-argo-gitops-engine.json"
SPAN_SERVICES = ("frontend", "checkout", "payment")
SPAN_ENV = "production"  # deployment.environment.name of the SDK workload
TRACES_PER_RECORD = 2
SPAN_VERSION_AFTER = "0.9.5"  # payment's version in the second span segment
NEW_VERSION = "2.4.0"
CORRELATION_MS = 15 * 60_000  # ADR 0009's window: signals this close to an incident


def partition_of(key: bytes) -> int:
    """Where Kafka's default partitioner (and the worker's) puts a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % PARTITIONS


SPAN_PARTITIONS = frozenset(partition_of(s.encode()) for s in SPAN_SERVICES)


def _renamed(service: str) -> str:
    if partition_of(service.encode()) not in SPAN_PARTITIONS:
        return service
    for k in itertools.count(1):
        name = f"{service}-{k}"
        if partition_of(name.encode()) not in SPAN_PARTITIONS:
            return name
    raise AssertionError("unreachable")


RENAMED = {s: _renamed(s) for s in SERVICES}
EVENT_SERVICES = tuple(RENAMED[s] for s in SERVICES)


@dataclass(frozen=True)
class Config:
    seed: int = 1
    steps: int = 150
    events: int = 60_000
    signals: int = 300
    kills: int = 20

    @property
    def traces(self) -> int:
        return self.steps * PARTITIONS * TRACES_PER_RECORD


Record = tuple[int, bytes | None, bytes]  # (partition, key, value)


@dataclass(frozen=True)
class SignalRequest:
    """One webhook POST: its Idempotency-Key, path, body and the signal ids it must give."""

    index: int
    step: int
    key: str
    path: str
    body: bytes
    expected_ids: tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class Kill:
    """One kill instant, armed once step ``step``'s records were acknowledged.

    ``trigger``: ``instant`` — SIGKILL ``victims`` ``delay_ms`` later; ``effect`` — the
    first worker of role ``victims[0]`` (``detect`` or ``project``) whose effect counters
    move next (a lifecycle event, deploy or dead letter sent by detection; a report
    version published by the projection), ``delay_ms`` after it is seen: its checkpoint
    or DuckDB transaction is then most likely not written yet; ``webhook`` — ``victims``
    while a webhook request to it is in flight, ``delay_ms`` after it was sent. A trigger
    that does not fire in time kills anyway (and says so)."""

    step: int
    victims: tuple[str, ...]
    delay_ms: int
    trigger: str = "instant"


@dataclass
class Workload:
    config: Config
    events: list[list[Record]] = field(default_factory=list)  # per step
    spans: list[list[Record]] = field(default_factory=list)  # per step
    signals: list[list[SignalRequest]] = field(default_factory=list)  # per step
    kills: list[Kill] = field(default_factory=list)
    incidents_expected: list[str] = field(default_factory=list)  # what should open (info)
    bad_events: int = 0
    bad_spans: int = 0
    deploys: dict[str, int] = field(default_factory=dict)  # service -> first event index

    @property
    def event_records(self) -> int:
        return sum(len(s) for s in self.events)

    @property
    def span_records(self) -> int:
        return sum(len(s) for s in self.spans)

    @property
    def signal_requests(self) -> int:
        return sum(len(s) for s in self.signals)

    @property
    def signal_ids(self) -> int:
        return sum(len(r.expected_ids) for s in self.signals for r in s)


def _split(items: list[Record], steps: int) -> list[list[Record]]:
    out = []
    for k in range(steps):
        out.append(items[len(items) * k // steps:len(items) * (k + 1) // steps])
    return out


def _spike_window(spike_index: int, events: int) -> tuple[int, int]:
    """Event-time range of a bench spike (start of its burst, end of its burst)."""
    spike = REPLAY_SPIKES[spike_index]
    count = len(SERVICES)
    k0 = int(events * spike.fraction) // count
    start = T0_MS + (k0 * count + spike.service_index) * DURATION_MS // events
    end = T0_MS + ((k0 + SPIKE_LENGTH) * count + spike.service_index) * DURATION_MS // events
    return start, end


def wide_events(cfg: Config, rng: random.Random) -> tuple[list[Record], dict[str, int], int]:
    """The events, keyed by (renamed) service, with deploys and undecodable records."""
    deploy_services = {RENAMED[REPLAY_SPIKES[0].service]: REPLAY_SPIKES[0].fraction - 0.02,
                       RENAMED[REPLAY_SPIKES[2].service]: REPLAY_SPIKES[2].fraction - 0.02}
    spiky = {RENAMED[s.service] for s in REPLAY_SPIKES}
    other = rng.choice(sorted(set(EVENT_SERVICES) - spiky))
    deploy_services[other] = rng.uniform(0.2, 0.8)
    deploy_from = {s: int(f * cfg.events) for s, f in deploy_services.items()}
    bad_count = max(2, cfg.events // 10_000)
    bad_at = set(rng.sample(range(10, cfg.events), bad_count))
    first_deploy: dict[str, int] = {}
    out: list[Record] = []
    for n, event in enumerate(generate(cfg.events)):
        original = event["service"]
        service = RENAMED[original]
        if service != original:
            event["service"] = service
            event["step"] = event["step"].replace(original, service)
        if n >= deploy_from.get(service, cfg.events):
            event["service_version"] = NEW_VERSION
            first_deploy.setdefault(service, n)
        key = service.encode()
        out.append((partition_of(key), key, orjson.dumps(event)))
        if n in bad_at:
            bad = orjson.dumps({"service": service, "step": "GET /", "env": "prod",
                                "event_time_ms": "not a time", "seq": n})
            out.append((partition_of(key), key, bad))
    return out, first_deploy, bad_count


def _span_window(cfg: Config) -> tuple[int, int, int]:
    """(first failing trace, length of the burst, ms between traces)."""
    every_ms = DURATION_MS // cfg.traces
    first = int(cfg.traces * 0.62)
    return first, max(45, cfg.traces // 40), every_ms


def span_records(cfg: Config, rng: random.Random) -> tuple[list[list[Record]], int]:
    """Six records a step (two traces each, round-robin over the partitions), built from
    two SDK segments; two records that are not OTLP, at seeded steps."""
    first, burst, every_ms = _span_window(cfg)
    half = cfg.traces // 2
    failing = {i for i in range(first, first + burst) if i % 3}
    spans = workload(half, failing, T0_MS * 1_000_000, seed=cfg.seed, every_ms=every_ms)
    spans += workload(cfg.traces - half, {i - half for i in failing},
                      (T0_MS + half * every_ms) * 1_000_000, seed=cfg.seed + 1,
                      every_ms=every_ms, versions={"payment": SPAN_VERSION_AFTER})
    per_record = 5 * TRACES_PER_RECORD
    records: list[Record] = []
    for j in range(0, len(spans), per_record):
        chunk = spans[j:j + per_record]
        n = j // per_record
        body = otlp_json(chunk) if n % 4 == 3 else proto(chunk)
        records.append((n % PARTITIONS, None, body))
    steps = [records[k * PARTITIONS:(k + 1) * PARTITIONS] for k in range(cfg.steps)]
    for k in sorted(rng.sample(range(1, cfg.steps - 1), 2)):
        steps[k].append((rng.randrange(PARTITIONS), None, b"{not otlp at all"))
    return steps, 2


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _hot(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(service, env, from, to): where signals correlate with an incident of the log."""
    hot = []
    for i, spike in enumerate(REPLAY_SPIKES):
        start, end = _spike_window(i, cfg.events)
        hot.append((RENAMED[spike.service], "prod", start - CORRELATION_MS,
                    end + CORRELATION_MS))
    first, burst, every_ms = _span_window(cfg)
    start, end = T0_MS + first * every_ms, T0_MS + (first + burst) * every_ms
    hot += [(s, SPAN_ENV, start - CORRELATION_MS, end + CORRELATION_MS)
            for s in SPAN_SERVICES]
    return hot


def _pod(service: str, t_ms: int, rng: random.Random) -> dict[str, Any]:
    if not POD_FIXTURE.exists():
        raise FileNotFoundError(f"the Kubernetes Pod fixture is missing: {POD_FIXTURE}")
    pod: dict[str, Any] = json.loads(POD_FIXTURE.read_text())
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    pod["metadata"].update(
        name=f"{service}-{rng.getrandbits(40):010x}-{suffix}",
        uid=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        labels={"app": service})
    status = pod["status"]["containerStatuses"][0]
    status["lastState"]["terminated"].update(startedAt=_iso(t_ms - 2000),
                                             finishedAt=_iso(t_ms))
    status["restartCount"] = rng.randint(1, 9)
    pod["status"]["startTime"] = _iso(t_ms - 120_000)
    return pod


def signal_requests(cfg: Config, rng: random.Random) -> list[list[SignalRequest]]:
    """``cfg.signals`` requests spread over the steps; each body's signal ids are computed
    here (the same pure parser the intake runs) to check the 202 answers against."""
    salt = f"chaos{cfg.seed}"
    hot = _hot(cfg)
    everyone = [(s, "prod") for s in EVENT_SERVICES] + [(s, SPAN_ENV) for s in SPAN_SERVICES]
    out: list[list[SignalRequest]] = [[] for _ in range(cfg.steps)]
    for i in range(cfg.signals):
        step = i * cfg.steps // cfg.signals
        center = T0_MS + (2 * step + 1) * DURATION_MS // (2 * cfg.steps)
        t = min(T0_MS + DURATION_MS, max(T0_MS, center + rng.randint(-600_000, 600_000)))
        near = [(s, env) for s, env, lo, hi in hot if lo <= t <= hi]
        service, env = rng.choice(near) if near and rng.random() < 0.75 \
            else rng.choice(everyone)
        roll = rng.random()
        payload: dict[str, Any]
        if roll < 0.6:
            kind, path = "native", "/v1/signals"
            payload = native_payload(i, t, salt)
            payload.update(service=service, env=env)
            if "labels" in payload:
                payload["labels"]["service"] = service
        elif roll < 0.8:
            kind, path = "alertmanager", "/v1/signals/alertmanager"
            payload = alertmanager_payload(i, t, salt)
            for alert in payload["alerts"]:
                alert["labels"].update(service=service, env=env, host=f"{service}-{i % 7}")
                alert["annotations"]["topic"] = service
        else:
            kind, path = "kubernetes", "/v1/signals/kubernetes"
            payload = _pod(service, t, rng)
        provider = path.rsplit("/", 1)[1] if path != "/v1/signals" else None
        ids = tuple(s.signal_id for s in intake(payload, provider).signals)
        if not ids:
            raise AssertionError(f"signal body {i} ({kind}) gives no signal")
        key = hashlib.sha256(f"{salt}:{i}".encode()).hexdigest()[:24]
        out[step].append(SignalRequest(i, step, f"chaos-{key}", path, orjson.dumps(payload),
                                       ids, kind))
    return out


VICTIMS = ("detect-1", "detect-2", "project")
ROLES = {"detect-1": "detect", "detect-2": "detect", "project": "project"}


def kill_plan(cfg: Config, rng: random.Random, effect_steps: dict[str, list[int]],
              step_ms: int = 1000, victims: tuple[str, ...] = VICTIMS) -> list[Kill]:
    """``cfg.kills`` SIGKILLs at distinct seeded steps. Each is, by a seeded draw,
    triggered by a worker's next effect (detection: 2 in 5, armed one step before a step
    known to make it emit — a deploy, a dead letter, a spike; projection: 3 in 5, armed
    one step before a step that opens an incident, so its next report version follows),
    or sent while a webhook is in flight (1 in 5), or at a seeded delay into the step (the
    rest; one in six of those hits two workers at once). Every role is hit at least once
    when kills >= 3."""
    names = list(victims) if cfg.kills >= len(victims) else []
    names += [rng.choice(victims) for _ in range(cfg.kills - len(names))]
    rng.shuffle(names)
    room = list(range(2, cfg.steps - 2))
    targets = {role: [s - 1 for s in sorted(set(steps)) if s - 1 in room]
               for role, steps in effect_steps.items()}
    drafts: list[tuple[int | None, tuple[str, ...], str]] = []
    used: set[int] = set()
    while names:
        first = names.pop()
        roll = rng.random()
        role = ROLES[first]
        effect = 0.6 if role == "project" else 0.4
        if roll < effect:
            free = [s for s in targets.get(role, []) if s not in used]
            step = rng.choice(free) if free else None
            drafts.append((step, (role,), "effect"))
            if step is not None:
                used.add(step)
        elif roll < effect + 0.2:
            drafts.append((None, (first,), "webhook"))
        elif names and names[-1] != first and rng.random() < 1 / 6:
            drafts.append((None, (first, names.pop()), "instant"))
        else:
            drafts.append((None, (first,), "instant"))
    free = [s for s in room if s not in used]
    need = sum(1 for step, _, _ in drafts if step is None)
    if need > len(free):
        raise ValueError(f"{cfg.kills} kills do not fit in {cfg.steps} steps")
    spare = iter(rng.sample(free, need))
    plan = []
    for step, who, kind in drafts:
        delay = {"instant": rng.randint(0, step_ms - 1),
                 "effect": rng.randint(0, 3) if who == ("project",) else rng.randint(0, 20),
                 "webhook": rng.randint(0, 8)}[kind]
        plan.append(Kill(next(spare) if step is None else step, who, delay, kind))
    return sorted(plan, key=lambda k: k.step)


def effect_steps(cfg: Config, events: list[list[Record]]) -> dict[str, list[int]]:
    """By role, the steps whose records make a worker emit something. Detection: a dead
    letter, a new version (deploy), the start of a spike, and the span deploy (payment's
    new version). Projection: the steps that open an incident (a spike's start, the span
    failure burst's start), whose report versions follow."""
    detect, project = [], []
    seen: set[bytes] = set()
    spikes = {RENAMED[s.service].encode(): s for s in REPLAY_SPIKES}
    per_step = PARTITIONS * TRACES_PER_RECORD  # traces a step
    for step, records in enumerate(events):
        for _, key, value in records:
            if b'"not a time"' in value:
                detect.append(step)
            elif NEW_VERSION.encode() in value and key not in seen:
                seen.add(key or b"")
                detect.append(step)
            elif key in spikes and b".spike" in value and key + b"!" not in seen:
                seen.add((key or b"") + b"!")
                detect.append(step)
                project.append(step)
    detect.append((cfg.traces // 2) // per_step)
    first, _, _ = _span_window(cfg)
    project.append(first // per_step)
    return {"detect": sorted(set(detect)), "project": sorted(set(project))}


def build(cfg: Config, step_ms: int = 1000) -> Workload:
    """The whole input log and kill plan (independent random streams per part, so that
    changing one part's size does not move the others)."""
    events, deploys, bad = wide_events(cfg, random.Random(f"{cfg.seed}:events"))
    spans, bad_spans = span_records(cfg, random.Random(f"{cfg.seed}:spans"))
    steps = _split(events, cfg.steps)
    return Workload(
        config=cfg,
        events=steps,
        spans=spans,
        signals=signal_requests(cfg, random.Random(f"{cfg.seed}:signals")),
        kills=kill_plan(cfg, random.Random(f"{cfg.seed}:kills"), effect_steps(cfg, steps),
                        step_ms),
        bad_events=bad, bad_spans=bad_spans, deploys=deploys,
    )


def fingerprint(w: Workload) -> str:
    """sha256 over every record and body of the log, in order: the same seed and sizes
    give the same value on every machine."""
    h = hashlib.sha256()
    for step in range(w.config.steps):
        for p, key, value in itertools.chain(w.events[step], w.spans[step]):
            h.update(f"{p}:{key!r}:{len(value)}:".encode())
            h.update(value)
        for r in w.signals[step]:
            h.update(r.key.encode() + r.path.encode() + r.body)
    return h.hexdigest()[:16]
