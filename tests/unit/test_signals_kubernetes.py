"""Kubernetes Events and Pods, from the real objects in shared/fixtures/kubernetes."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests.fixtures_io import FIXTURES, ms
from tests.fixtures_io import load as load_fixture
from tocsin.processors.signals import IntakeError, intake, parse, signal_id, sniff

POD_UID = "63674389-f613-11e8-a057-fe5f49266390"


def load(name: str) -> dict[str, Any]:
    return load_fixture(f"kubernetes/{name}")




def rollout() -> list[dict[str, Any]]:
    path = FIXTURES / "kubernetes" / "events-v1-rollout-sequence-kspan-real-export.ndjson"
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def event_on_pod(reason: str, message: str, **extra: Any) -> dict[str, Any]:
    """A core/v1 Event about the crash-looping fixture pod's container ``main``."""
    event = load("event-v1-killing-kspan-real-export.json")
    event.update(reason=reason, message=message, type="Warning", **extra)
    event["involvedObject"].update(name="my-pod", namespace="argocd", uid=POD_UID,
                                   fieldPath="spec.containers{main}")
    return event


def test_crashloop_pod_fixture() -> None:
    pod = load("pod-v1-crashloopbackoff-argo-gitops-engine.json")
    assert sniff(pod) == "kubernetes"
    [sig] = parse(pod)
    assert (sig.type, sig.source, sig.state, sig.severity) == (
        "runtime", "kubernetes", "firing", "critical")
    assert (sig.runtime_subtype, sig.reason) == ("crashloop", "CrashLoopBackOff")
    assert (sig.service, sig.env, sig.pod, sig.container, sig.node) == (
        "my-pod", None, "my-pod", "main", "minikube")
    assert (sig.exit_code, sig.restart_count) == (1, 3)
    assert sig.event_time_ms == sig.starts_at_ms == ms("2018-12-02T09:20:25+00:00")
    assert sig.dedup_key == f"{POD_UID}|crashloop|main"
    assert sig.description is not None and sig.description.startswith("Back-off 40s")
    assert sig.labels["k8s.namespace.name"] == "argocd"


def test_oomkilled_last_state_snippet() -> None:
    """The docs' snippet is a container status, not a payload: refused on its own with a
    message naming what is expected, and read inside a Pod."""
    snippet = load("pod-status-lastState-oomkilled-k8s-docs.json")
    with pytest.raises(IntakeError, match=r"Expected one of:.*Kubernetes Event"):
        sniff(snippet)
    with pytest.raises(IntakeError, match="kubernetes payload: expected a Kubernetes"):
        parse(snippet, provider="kubernetes")
    pod = load("pod-v1-crashloopbackoff-argo-gitops-engine.json")
    pod["status"]["containerStatuses"][0]["lastState"] = snippet["lastState"]
    oom, loop = parse(pod)
    assert (oom.runtime_subtype, oom.severity, oom.exit_code) == ("oom_killed", "critical", 137)
    assert oom.event_time_ms == ms("2017-06-20T20:52:19+00:00")
    assert (loop.runtime_subtype, loop.exit_code) == ("crashloop", 137)
    assert oom.signal_id != loop.signal_id


def test_killing_during_a_rollout_is_not_a_signal() -> None:
    """A plain Killing ("Stopping container") is how every pod ends: not a runtime fault
    (it would decide "runtime" for every rollout) and not proof of a deploy."""
    event = load("event-v1-killing-kspan-real-export.json")
    assert sniff(event) == "kubernetes"
    result = intake(event)
    assert result.signals == ()
    assert "Killing" in result.skipped[0] and "not a runtime fault" in result.skipped[0]


def test_rollout_sequence_gives_no_runtime_signal() -> None:
    events = rollout()
    assert [e["reason"] for e in events] == [
        "ScalingReplicaSet", "SuccessfulCreate", "Scheduled", "Sync", "Pulling", "Pulled",
        "Created", "Started", "ScalingReplicaSet", "Killing", "SuccessfulDelete"]
    for event in events:
        assert sniff(event) == "kubernetes"
        result = intake(event)
        assert result.signals == ()
        assert event["reason"] in result.skipped[0]
    listed = intake({"kind": "EventList", "apiVersion": "v1", "items": events})
    assert (listed.signals, len(listed.skipped)) == ((), 11)


def test_describe_lines_from_the_docs_classify() -> None:
    """The verbatim kubectl describe lines: BackOff restarting → crashloop; the node's
    OOMKilling → oom_killed with no service (a Node has none) and the node's name."""
    lines = (FIXTURES / "kubernetes" / "k8s-docs-describe-event-lines.txt").read_text().splitlines()
    found = {}
    for line in lines:
        m = re.match(r"^(?:\.\.\. )?(Warning|Normal)\s+(\w+)\s+(.*)$", line)
        if m:
            found[m.group(2)] = m.group(3).strip()
    [loop] = parse(event_on_pod("BackOff", found["BackOff"]))
    assert (loop.runtime_subtype, loop.container) == ("crashloop", "main")
    node_event = load("event-v1-killing-kspan-real-export.json")
    node_event.update(reason="OOMKilling", message=found["OOMKilling"], type="Warning")
    node_event["involvedObject"] = {"kind": "Node", "name": "node2", "uid": "node2"}
    [oom] = parse(node_event)
    assert (oom.runtime_subtype, oom.severity, oom.service, oom.node, oom.pod) == (
        "oom_killed", "critical", None, "node2", None)


@pytest.mark.parametrize("reason,message,subtype,severity", [
    ("OOMKilling", "Memory cgroup out of memory: Kill process 4481 (stress)", "oom_killed",
     "critical"),
    ("SystemOOM", "System OOM encountered, victim process: stress, pid: 4481", "oom_killed",
     "critical"),
    ("BackOff", "Back-off restarting failed container", "crashloop", "critical"),
    ("BackOff", "Back-off restarting failed container main in pod my-pod_argocd(6367)",
     "crashloop", "critical"),
    ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503",
     "readiness_fail", "warning"),
    ("Unhealthy", "Liveness probe failed: HTTP probe failed with statuscode: 500",
     "liveness_fail", "warning"),
    ("Killing", "Container main failed liveness probe, will be restarted", "liveness_fail",
     "warning"),
    ("BackOff", 'Back-off pulling image "nginx:1.19.3-alpine"', None, None),
    ("Unhealthy", "Startup probe failed: connection refused", None, None),
    ("Killing", "Stopping container main", None, None),
    ("FailedScheduling", "0/3 nodes are available", None, None),
])
def test_event_reason_table(reason: str, message: str, subtype: str | None,
                            severity: str | None) -> None:
    result = intake(event_on_pod(reason, message))
    if subtype is None:
        assert result.signals == () and reason in result.skipped[0]
        return
    [sig] = result.signals
    assert (sig.runtime_subtype, sig.severity, sig.reason) == (subtype, severity, reason)
    assert sig.description == message


def test_the_kubelet_backoff_event_and_the_pod_status_are_one_signal() -> None:
    [from_event] = parse(event_on_pod("BackOff", "Back-off restarting failed container"))
    [from_pod] = parse(load("pod-v1-crashloopbackoff-argo-gitops-engine.json"))
    assert from_event.signal_id == from_pod.signal_id
    liveness = parse(event_on_pod("Unhealthy", "Liveness probe failed: timeout"))[0]
    killing = parse(event_on_pod("Killing", "Container main failed liveness probe, will be "
                                            "restarted"))[0]
    assert liveness.signal_id == killing.signal_id == signal_id(
        "kubernetes", f"{POD_UID}|liveness_fail|main")


def test_event_times_use_last_occurrence_and_first_as_start() -> None:
    event = event_on_pod("BackOff", "Back-off restarting failed container",
                         firstTimestamp="2021-02-17T14:20:00Z",
                         lastTimestamp="2021-02-17T14:24:10Z", count=7)
    [sig] = parse(event)
    assert (sig.starts_at_ms, sig.event_time_ms) == (ms("2021-02-17T14:20:00+00:00"),
                                                     ms("2021-02-17T14:24:10+00:00"))
    micro = rollout()[2]  # Scheduled: eventTime set, first/lastTimestamp null
    micro.update(reason="Unhealthy", message="Readiness probe failed: 503")
    [sig] = parse(micro)
    assert sig.event_time_ms == ms("2020-12-03T17:53:51.917+00:00")


@pytest.mark.parametrize("kind,name,service", [
    ("Pod", "hello-world-f77b4f6c8-6tcj2", "hello-world"),  # Deployment's pod
    ("Pod", "hello-world-779cbf9f67-nbwfm", "hello-world"),
    ("Pod", "ingester-2", "ingester"),  # StatefulSet's pod
    ("Pod", "node-exporter-x5k2z", "node-exporter"),  # DaemonSet's pod
    ("Pod", "my-pod", "my-pod"),
    ("Pod", "hello-world", "hello-world"),
    ("ReplicaSet", "hello-world-f77b4f6c8", "hello-world"),
    ("Deployment", "hello-world", "hello-world"),
])
def test_service_from_the_object_name(kind: str, name: str, service: str) -> None:
    event = event_on_pod("CrashLoopBackOff", "Back-off")
    event["involvedObject"].update(kind=kind, name=name)
    assert parse(event)[0].service == service


def test_service_from_labels_and_owner_before_the_name() -> None:
    pod = load("pod-v1-crashloopbackoff-argo-gitops-engine.json")
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-5d8f7b9c4d",
         "uid": "x", "controller": True}]
    assert parse(pod)[0].service == "checkout"
    pod["metadata"]["ownerReferences"][0].update(kind="Job", name="backup-28391234")
    assert parse(pod)[0].service == "backup"  # a CronJob's job
    pod["metadata"]["labels"] = {"app.kubernetes.io/name": "checkout-api"}
    assert parse(pod)[0].service == "checkout-api"
    event = event_on_pod("BackOff", "Back-off restarting failed container")
    event["involvedObject"]["labels"] = {"app": "payments"}  # kubernetes-event-exporter
    assert parse(event)[0].service == "payments"


def test_namespace_is_not_an_env() -> None:
    [sig] = parse(event_on_pod("BackOff", "Back-off restarting failed container"))
    assert sig.env is None and sig.labels["k8s.namespace.name"] == "argocd"


def test_lists_and_watch_events() -> None:
    pod = load("pod-v1-crashloopbackoff-argo-gitops-engine.json")
    listed = {"kind": "PodList", "apiVersion": "v1", "items": [pod, copy.deepcopy(pod)]}
    assert sniff(listed) == "kubernetes" and len(parse(listed)) == 2
    added = {"type": "ADDED", "object": pod}
    assert sniff(added) == "kubernetes" and len(parse(added)) == 1
    deleted = intake({"type": "DELETED", "object": pod})
    assert deleted.signals == () and "DELETED" in deleted.skipped[0]
    mixed = intake({"kind": "List", "items": [{"kind": "Service", "metadata": {}}, pod]})
    assert len(mixed.signals) == 1
    assert mixed.skipped == ("Service at items[0]: not an Event or a Pod; no signal",)


def test_a_healthy_pod_is_skipped_with_a_note() -> None:
    pod = load("pod-v1-crashloopbackoff-argo-gitops-engine.json")
    status = pod["status"]["containerStatuses"][0]
    status["state"] = {"running": {"startedAt": "2018-12-02T09:21:00Z"}}
    status["lastState"] = {}
    result = intake(pod)
    assert result.signals == () and "no container" in result.skipped[0]


@pytest.mark.parametrize("mutate,message", [
    (lambda e: e.pop("reason"), "expected a Kubernetes"),
    (lambda e: e.update(reason=""), "reason: required"),
    (lambda e: e.update(lastTimestamp=None, firstTimestamp=None,
                        metadata={"name": "x"}), "lastTimestamp: required"),
    (lambda e: e.update(lastTimestamp="17:53"), "lastTimestamp: not a time"),
])
def test_malformed_events_name_the_field(mutate: Any, message: str) -> None:
    event = event_on_pod("BackOff", "Back-off restarting failed container")
    mutate(event)
    with pytest.raises(IntakeError, match=message):
        parse(event, provider="kubernetes")
