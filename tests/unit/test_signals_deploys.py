"""CI deploy notifications: GitHub deployment_status, GitLab deployment, generic JSON.

Payload sources:
- GITHUB_DEPLOYMENT_STATUS: octokit/webhooks
  ``payload-examples/api.github.com/deployment_status/payload.json``
  @ 0ec20b74bfc1939b2cab49ead31452f3be5db69a (GitHub's own example). Values unchanged; the
  ``*_url`` API templates and the user/repository objects' other keys are left out.
- GITLAB_DEPLOYMENT: gitlab ``doc/user/project/integrations/webhook_events.md``,
  "Deployment events" payload example (gitlabhq/gitlabhq, docs.gitlab.com "Webhook
  events"), verbatim.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tocsin.processors.signals import IntakeError, parse, signal_id, sniff
from tocsin.processors.signals.deploys import status_of

RECEIVED = 1_793_610_000_000
CODERTOCAT = {"login": "Codertocat", "id": 21031067, "type": "User", "site_admin": False,
              "html_url": "https://github.com/Codertocat"}

GITHUB_DEPLOYMENT_STATUS: dict[str, Any] = {
    "action": "created",
    "deployment_status": {
        "url": "https://api.github.com/repos/Codertocat/Hello-World/deployments/145988746/"
               "statuses/209916254",
        "id": 209916254,
        "node_id": "MDE2OkRlcGxveW1lbnRTdGF0dXMyMDk5MTYyNTQ=",
        "state": "success",
        "creator": CODERTOCAT,
        "description": "",
        "environment": "production",
        "target_url": "",
        "created_at": "2019-05-15T15:20:55Z",
        "updated_at": "2019-05-15T15:20:55Z",
        "deployment_url": "https://api.github.com/repos/Codertocat/Hello-World/deployments/"
                          "145988746",
        "repository_url": "https://api.github.com/repos/Codertocat/Hello-World",
    },
    "deployment": {
        "url": "https://api.github.com/repos/Codertocat/Hello-World/deployments/145988746",
        "id": 145988746,
        "node_id": "MDEwOkRlcGxveW1lbnQxNDU5ODg3NDY=",
        "sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
        "ref": "master",
        "task": "deploy",
        "payload": {},
        "original_environment": "production",
        "environment": "production",
        "description": None,
        "creator": CODERTOCAT,
        "created_at": "2019-05-15T15:20:53Z",
        "updated_at": "2019-05-15T15:20:55Z",
        "statuses_url": "https://api.github.com/repos/Codertocat/Hello-World/deployments/"
                        "145988746/statuses",
        "repository_url": "https://api.github.com/repos/Codertocat/Hello-World",
        "performed_via_github_app": None,
    },
    "repository": {
        "id": 186853002,
        "name": "Hello-World",
        "full_name": "Codertocat/Hello-World",
        "private": False,
        "owner": CODERTOCAT,
        "html_url": "https://github.com/Codertocat/Hello-World",
        "default_branch": "master",
    },
    "sender": CODERTOCAT,
}

GITLAB_DEPLOYMENT: dict[str, Any] = {
    "object_kind": "deployment",
    "status": "success",
    "status_changed_at": "2021-04-28 21:50:00 +0200",
    "deployment_id": 15,
    "deployable_id": 796,
    "deployable_url": "http://10.126.0.2:3000/root/test-deployment-webhooks/-/jobs/796",
    "environment": "staging",
    "environment_tier": "staging",
    "environment_slug": "staging",
    "environment_external_url": "https://staging.example.com",
    "project": {
        "id": 30,
        "name": "test-deployment-webhooks",
        "description": "",
        "web_url": "http://10.126.0.2:3000/root/test-deployment-webhooks",
        "avatar_url": None,
        "git_ssh_url": "ssh://vlad@10.126.0.2:2222/root/test-deployment-webhooks.git",
        "git_http_url": "http://10.126.0.2:3000/root/test-deployment-webhooks.git",
        "namespace": "Administrator",
        "visibility_level": 0,
        "path_with_namespace": "root/test-deployment-webhooks",
        "default_branch": "master",
        "ci_config_path": "",
        "homepage": "http://10.126.0.2:3000/root/test-deployment-webhooks",
        "url": "ssh://vlad@10.126.0.2:2222/root/test-deployment-webhooks.git",
        "ssh_url": "ssh://vlad@10.126.0.2:2222/root/test-deployment-webhooks.git",
        "http_url": "http://10.126.0.2:3000/root/test-deployment-webhooks.git",
    },
    "short_sha": "279484c0",
    "user": {
        "id": 1,
        "name": "Administrator",
        "username": "root",
        "avatar_url": "https://www.gravatar.com/avatar/e64c7d89f26bd1972efa854d13d7dd61?s=80"
                      "&d=identicon",
        "email": "admin@example.com",
    },
    "user_url": "http://10.126.0.2:3000/root",
    "commit_url": "http://10.126.0.2:3000/root/test-deployment-webhooks/-/commit/"
                  "279484c09fbe69ededfced8c1bb6e6d24616b468",
    "commit_title": "Add new file",
}

GENERIC = {"event": "deploy", "service": "checkout", "environment": "prod",
           "version": "1.8.0", "commit": "9f2c1a4e", "author": "alice",
           "pr_url": "https://github.com/acme/checkout/pull/42",
           "url": "https://ci.example.com/runs/123", "status": "success", "id": "run-123",
           "timestamp": "2026-11-20T10:00:00Z"}


def ms(iso: str) -> int:
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1)


def test_github_deployment_status() -> None:
    assert sniff(GITHUB_DEPLOYMENT_STATUS) == "ci"
    [sig] = parse(GITHUB_DEPLOYMENT_STATUS)
    assert (sig.type, sig.source, sig.state, sig.severity) == ("deploy", "ci", "firing", "info")
    assert (sig.service, sig.env, sig.reason) == ("Hello-World", "production", "success")
    assert sig.dedup_key == "github:Codertocat/Hello-World:145988746"
    assert (sig.commit, sig.version, sig.author) == (
        "f95f852bd8fca8fcc58a9a2d6c842781e32a215e", None, "Codertocat")  # ref is a branch
    assert sig.event_time_ms == ms("2019-05-15T15:20:55+00:00")
    assert sig.starts_at_ms == ms("2019-05-15T15:20:53+00:00")
    assert sig.provider_url == "https://github.com/Codertocat/Hello-World"  # target_url ""
    assert sig.labels == {"repository": "Codertocat/Hello-World", "ref": "master",
                          "task": "deploy"}


def test_every_status_of_one_github_deployment_is_one_signal() -> None:
    ids = set()
    for state in ("queued", "in_progress", "success", "inactive"):
        payload = copy.deepcopy(GITHUB_DEPLOYMENT_STATUS)
        payload["deployment_status"]["state"] = state
        [sig] = parse(payload)
        ids.add(sig.signal_id)
        assert sig.state == ("resolved" if state == "inactive" else "firing")
    assert len(ids) == 1


def test_github_version_pr_and_incident_link() -> None:
    payload = copy.deepcopy(GITHUB_DEPLOYMENT_STATUS)
    payload["deployment"]["ref"] = "v2.4.1"
    assert parse(payload)[0].version == "v2.4.1"
    payload["deployment"]["payload"] = {"version": "2.4.1-rc.1", "service": "hello",
                                        "tocsin_incident_id": "inc_0123456789abcdef"}
    payload["workflow_run"] = {"html_url": "https://github.com/Codertocat/Hello-World/"
                                           "actions/runs/1",
                               "pull_requests": [{"number": 7, "id": 1,
                                                  "url": "https://api.github.com/repos/"
                                                         "Codertocat/Hello-World/pulls/7"}]}
    [sig] = parse(payload)
    assert (sig.version, sig.service) == ("2.4.1-rc.1", "hello")
    assert sig.incident_id == "inc_0123456789abcdef"
    assert sig.pr_url == "https://github.com/Codertocat/Hello-World/pull/7"


def test_gitlab_deployment_event() -> None:
    assert sniff(GITLAB_DEPLOYMENT) == "ci"
    [sig] = parse(GITLAB_DEPLOYMENT)
    assert (sig.type, sig.state, sig.severity, sig.reason) == (
        "deploy", "firing", "info", "success")
    assert (sig.service, sig.env, sig.author) == ("test-deployment-webhooks", "staging",
                                                  "root")
    assert sig.commit == "279484c09fbe69ededfced8c1bb6e6d24616b468"
    assert sig.event_time_ms == ms("2021-04-28T21:50:00+02:00")
    assert sig.dedup_key == "gitlab:root/test-deployment-webhooks:15"
    assert sig.provider_url == GITLAB_DEPLOYMENT["deployable_url"]
    assert sig.description == "Add new file"


def test_gitlab_running_then_failed_is_one_signal_and_old_hooks_use_receive_time() -> None:
    running = dict(GITLAB_DEPLOYMENT, status="running")
    failed = dict(GITLAB_DEPLOYMENT, status="failed")
    assert parse(running)[0].signal_id == parse(failed)[0].signal_id
    assert parse(failed)[0].severity == "warning"
    old = {k: v for k, v in GITLAB_DEPLOYMENT.items()
           if k not in ("status_changed_at", "deployment_id", "commit_url")}
    [sig] = parse(old, received_ms=RECEIVED)
    assert (sig.event_time_ms, sig.commit) == (RECEIVED, "279484c0")
    with pytest.raises(IntakeError, match="status_changed_at: required"):
        parse(old)


def test_generic_ci_json() -> None:
    assert sniff(GENERIC) == "ci"
    [sig] = parse(GENERIC)
    assert (sig.type, sig.service, sig.env, sig.version, sig.commit) == (
        "deploy", "checkout", "prod", "1.8.0", "9f2c1a4e")
    assert (sig.author, sig.pr_url, sig.provider_url) == (
        "alice", "https://github.com/acme/checkout/pull/42", "https://ci.example.com/runs/123")
    assert sig.signal_id == signal_id("ci", "run-123")
    assert sig.event_time_ms == ms("2026-11-20T10:00:00+00:00")
    minimal = {"event": "deploy", "service": "checkout", "version": "1.8.1"}
    [sig] = parse(minimal, received_ms=RECEIVED)
    assert (sig.dedup_key, sig.event_time_ms, sig.state) == (
        "checkout||1.8.1|", RECEIVED, "firing")


@pytest.mark.parametrize("status,state,severity", [
    ("success", "firing", "info"), ("in_progress", "firing", "info"),
    ("queued", "firing", "info"), ("failure", "firing", "warning"),
    ("error", "firing", "warning"), ("failed", "firing", "warning"),
    ("inactive", "resolved", "info"), ("canceled", "resolved", "info"),
    ("skipped", "resolved", "info"), ("rolled_back", "firing", "info"),
])
def test_status_table(status: str, state: str, severity: str) -> None:
    assert status_of(status) == (state, severity)


@pytest.mark.parametrize("payload,message", [
    ({k: v for k, v in GITHUB_DEPLOYMENT_STATUS.items() if k != "deployment"},
     "deployment: required"),
    (dict(GITHUB_DEPLOYMENT_STATUS, repository={"name": "x"}), "repository.full_name"),
    ({"object_kind": "deployment", "status": "success"}, "project: required"),
    ({"event": "deploy", "version": "1"}, "service: required"),
    ({"event": "deploy", "service": "a", "timestamp": "soon"}, "timestamp: not a time"),
])
def test_malformed_deploys_name_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(IntakeError, match=message):
        parse(payload, provider="ci", received_ms=RECEIVED)


def test_forced_ci_on_something_else_says_what_it_expected() -> None:
    with pytest.raises(IntakeError, match="ci payload: expected a CI deploy notification"):
        parse({"type": "deploy", "service": "a"}, provider="ci")
