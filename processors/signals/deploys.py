"""CI deploy notifications → deploy signals (source ``ci``).

Three shapes:

- **GitHub** ``deployment_status`` webhook (GitHub Actions environments send it too):
  ``deployment_status`` (``state``, ``environment``, ``created_at``, ``target_url``,
  ``log_url``, ``environment_url``, ``description``), ``deployment`` (``id``, ``sha``,
  ``ref``, ``environment``, ``payload``, ``creator``, ``created_at``), ``repository``
  (``name``, ``full_name``, ``html_url``), ``sender``, and, from Actions, ``workflow_run``
  (``html_url``, ``pull_requests[]``).
- **GitLab** deployment event (``X-Gitlab-Event: Deployment Hook``): ``object_kind:
  deployment``, ``status``, ``status_changed_at`` (``2021-04-28 21:50:00 +0200``),
  ``deployment_id``, ``deployable_url``, ``environment``, ``project``
  (``path_with_namespace``, ``name``), ``short_sha``, ``commit_url``, ``user``.
- **Generic CI JSON**, for any pipeline that can ``curl``: ``{"event": "deploy",
  "service": "checkout", "environment": "prod", "version": "1.8.0", "commit": "…",
  "pr_url": "…", "author": "…", "url": "…", "status": "success", "id": "…",
  "timestamp": "2026-11-20T10:00:00Z"}``; only ``event`` and ``service`` are required
  (``env``, ``sha``, ``finished_at`` / ``started_at`` are accepted as aliases).

Decisions (ADR 0007):

- Identity: the deployment (``github:{repo}:{deployment id}``, ``gitlab:{project}:{id}``,
  the generic ``id``, else service|env|version|commit), so queued → in progress → success
  of one deployment is one signal.
- State and severity from the status: success / pending / queued / in_progress / running /
  created → firing, info; failure / failed / error → firing, warning (a failed deploy may
  still have changed what runs); inactive (GitHub: superseded), canceled, skipped →
  resolved, info.
- Event time: the status's time (GitHub ``deployment_status.created_at``, GitLab
  ``status_changed_at``); start: the deployment's creation. A GitLab hook from before
  ``status_changed_at`` existed is dated by the intake's receive time.
- Service: GitHub ``deployment.payload.service``, else the repository name; GitLab the last
  segment of ``path_with_namespace``; env: the deployment's environment.
- Version: GitHub ``deployment.payload.version``, else the ``ref`` when it looks like a
  version (``v1.2.3``, ``1.2``), never a branch name (a branch would defeat the classifier's
  version matching); likewise GitLab's ``ref`` when it sends one (a tag ``1.0.0`` is a
  version, a branch is not). Commit: ``sha`` / the ``commit_url``'s last segment
  (``short_sha`` without it). PR: GitHub Actions' ``workflow_run.pull_requests[0]`` as
  ``{repository.html_url}/pull/{number}``. Author: the deployment's creator / GitLab user.
- GitHub's free-form ``deployment.payload`` becomes annotations, so a deployer can link the
  deploy to an incident with ``tocsin_incident_id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tocsin.processors.signals.fields import Obj, first_of
from tocsin.processors.signals.labels import correlation
from tocsin.processors.signals.model import IntakeError, IntakeResult, Severity, Signal, State

NAME = "ci"
SHAPE = ('a CI deploy notification (GitHub "deployment_status" webhook, GitLab '
         '"object_kind": "deployment", or {"event": "deploy", "service": …})')
GENERIC_EVENTS = ("deploy", "deployment")
_RESOLVED = ("inactive", "canceled", "cancelled", "skipped")
_FAILED = ("failure", "failed", "error", "errored")
_VERSION_LIKE = re.compile(r"^v?\d+(\.\d+)+([-+.][0-9A-Za-z.-]+)?$")


def matches(payload: Mapping[str, Any]) -> bool:
    if isinstance(payload.get("deployment_status"), Mapping):
        return True
    if payload.get("object_kind") == "deployment":
        return True
    return payload.get("event") in GENERIC_EVENTS


def parse(payload: object, received_ms: int | None = None) -> IntakeResult:
    root = Obj.root(payload, NAME)
    if root.has("deployment_status"):
        return IntakeResult(NAME, (_github(root),))
    if root.opt_str("object_kind") == "deployment":
        return IntakeResult(NAME, (_gitlab(root, received_ms),))
    if root.raw("event") in GENERIC_EVENTS:
        return IntakeResult(NAME, (_generic(root, received_ms),))
    raise IntakeError(f"expected {SHAPE}", provider=NAME)


def status_of(status: str) -> tuple[State, Severity]:
    """(state, severity) of a deployment status, whatever the CI's vocabulary."""
    s = status.lower()
    if s in _RESOLVED:
        return "resolved", "info"
    return "firing", ("warning" if s in _FAILED else "info")


def _deploy(*, dedup: str, status: str, service: str, env: str | None, event_ms: int,
            starts_ms: int | None, version: str | None = None, commit: str | None = None,
            pr_url: str | None = None, author: str | None = None,
            description: str | None = None, provider_url: str | None = None,
            labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
            incident_id: str | None = None) -> Signal:
    state, severity = status_of(status)
    what = version or (commit or "")[:12] or "?"
    return Signal(
        dedup_key=dedup, type="deploy", state=state, source=NAME, service=service, env=env,
        severity=severity,
        title=f"Deploy {service} {what}" + (f" to {env}" if env else "") + f": {status}",
        reason=status, description=description, event_time_ms=event_ms,
        starts_at_ms=starts_ms, ends_at_ms=event_ms if state == "resolved" else None,
        provider_url=provider_url, labels=labels or {}, annotations=annotations or {},
        incident_id=incident_id, version=version, commit=commit, pr_url=pr_url,
        author=author,
    )


def _github(root: Obj) -> Signal:
    status = root.obj("deployment_status")
    deployment = root.obj("deployment")
    repo = root.obj("repository")
    extra = deployment.str_map("payload") if isinstance(deployment.raw("payload"),
                                                        Mapping) else {}
    env = status.opt_str("environment") or deployment.opt_str("environment")
    ref = deployment.opt_str("ref")
    creator = deployment.opt_obj("creator") or root.opt_obj("sender")
    keys = correlation(extra)
    return _deploy(
        dedup=f"github:{repo.req_str('full_name')}:{deployment.req_str('id')}",
        status=status.req_str("state"), service=extra.get("service") or repo.req_str("name"),
        env=env, event_ms=status.req_time("created_at"),
        starts_ms=deployment.opt_time("created_at"),
        version=extra.get("version") or (ref if ref and _VERSION_LIKE.match(ref) else None),
        commit=deployment.opt_str("sha"), pr_url=_github_pr(root, repo),
        author=creator.opt_str("login") if creator else None,
        description=status.opt_str("description") or deployment.opt_str("description"),
        provider_url=(status.opt_str("target_url") or status.opt_str("log_url")
                      or status.opt_str("environment_url") or repo.opt_str("html_url")),
        labels={k: v for k, v in (("repository", repo.opt_str("full_name")), ("ref", ref),
                                  ("task", deployment.opt_str("task"))) if v},
        annotations=extra, incident_id=keys.incident_id,
    )


def _github_pr(root: Obj, repo: Obj) -> str | None:
    run = root.opt_obj("workflow_run")
    pulls = run.opt_objs("pull_requests") if run else []
    number = pulls[0].opt_int("number") if pulls else None
    base = repo.opt_str("html_url")
    return f"{base}/pull/{number}" if number is not None and base else None


def _gitlab(root: Obj, received_ms: int | None) -> Signal:
    project = root.obj("project")
    path = project.opt_str("path_with_namespace")
    service = path.rsplit("/", 1)[-1] if path else project.req_str("name")
    deployment = root.opt_str("deployment_id")
    commit_url = root.opt_str("commit_url")
    commit = commit_url.rstrip("/").rsplit("/", 1)[-1] if commit_url else None
    commit = commit or root.opt_str("short_sha")
    env = root.opt_str("environment")
    event_ms = first_of(root.opt_time("status_changed_at"), received_ms)
    if event_ms is None:
        raise root.error("status_changed_at", "required (or the intake's received_ms)")
    user = root.opt_obj("user")
    ref = root.opt_str("ref")
    return _deploy(
        dedup=f"gitlab:{path or service}:{deployment or f'{env}:{commit}'}",
        status=root.req_str("status"), service=service, env=env, event_ms=event_ms,
        starts_ms=None, version=ref if ref and _VERSION_LIKE.match(ref) else None,
        commit=commit, author=user.opt_str("username") if user else None,
        description=root.opt_str("commit_title"),
        provider_url=root.opt_str("deployable_url") or commit_url,
        labels={k: v for k, v in (("project", path), ("ref", ref), (
            "environment_tier", root.opt_str("environment_tier"))) if v},
    )


def _generic(root: Obj, received_ms: int | None) -> Signal:
    service = root.req_str("service")
    env = root.opt_str("environment") or root.opt_str("env")
    version = root.opt_str("version")
    commit = root.opt_str("commit") or root.opt_str("sha")
    started = root.opt_time("started_at")
    event_ms = (root.opt_time("timestamp") or root.opt_time("finished_at") or started
                or received_ms)
    if event_ms is None:
        raise root.error("timestamp", "required, an RFC 3339 time (or finished_at / "
                                      "started_at, or the intake's received_ms)")
    labels = root.str_map("labels")
    keys = correlation(labels, {k: v for k in ("incident_id",)
                                if (v := root.opt_str(k)) is not None})
    return _deploy(
        dedup=root.opt_str("id") or f"{service}|{env or ''}|{version or ''}|{commit or ''}",
        status=root.opt_str("status") or "success", service=service, env=env,
        event_ms=event_ms, starts_ms=started, version=version, commit=commit,
        pr_url=root.opt_str("pr_url"), author=root.opt_str("author"),
        description=root.opt_str("description"), provider_url=root.opt_str("url"),
        labels=labels, incident_id=keys.incident_id,
    )
