"""The container files (Dockerfile, docker-compose.yml) agree with the code and the README.

No Docker engine or Kafka is needed: the files are parsed and cross-checked.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tocsin.streams.runner import check_exposure
from tocsin.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"


# ---------------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    svc: dict[str, Any] = services[name]
    return svc


def env(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, whether written as a mapping or a list."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)://([^:,]*):(\d+)\s*", item)
        assert m, f"cannot parse listener {item!r}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def worker_tocsin_env() -> dict[str, str]:
    return {k: v for k, v in env(service("worker")).items() if k.startswith("TOCSIN_")}


def volume_targets(svc: dict[str, Any]) -> list[str]:
    targets = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            targets.append(v["target"])
        else:
            parts = str(v).split(":")
            targets.append(parts[1] if len(parts) > 1 else parts[0])
    return targets


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines()
             if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return shlex.split(args)  # shell form: good enough to compare the words
    assert isinstance(value, list)
    return [str(v) for v in value]


# ---------------------------------------------------------------------- compose: kafka


def test_services_kafka_and_worker_exist() -> None:
    services = compose()["services"]
    assert {"kafka", "worker"} <= set(services)


def test_no_zookeeper_anywhere() -> None:
    for name, svc in compose()["services"].items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(svc.get("image", "")).lower()
        assert not [k for k in env(svc) if "ZOOKEEPER" in k.upper()], name


def test_kafka_runs_kraft_single_node() -> None:
    e = env(service("kafka"))
    assert {r.strip() for r in e["KAFKA_PROCESS_ROLES"].split(",")} == {"broker", "controller"}
    node_id = e["KAFKA_NODE_ID"]
    controller = e["KAFKA_CONTROLLER_LISTENER_NAMES"]
    ls = listeners(e["KAFKA_LISTENERS"])
    assert controller in ls, "the controller listener must be one of KAFKA_LISTENERS"
    # One voter: this node, at its own controller listener.
    voter = re.fullmatch(r"(\d+)@([^:]+):(\d+)", e["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert voter, e["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voter.group(1) == node_id
    assert voter.group(2) in {"kafka", service("kafka").get("hostname", "kafka")}
    assert int(voter.group(3)) == ls[controller][1]
    # Every listener has a security protocol, and internal topics fit on one broker.
    protocols = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(ls) <= set(protocols)
    assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_kafka_has_a_healthcheck() -> None:
    assert service("kafka").get("healthcheck", {}).get("test")


# ---------------------------------------------------------------------- compose: worker


def test_worker_waits_for_healthy_kafka() -> None:
    depends = service("worker").get("depends_on")
    assert depends and "kafka" in depends
    if isinstance(depends, dict):
        assert depends["kafka"].get("condition") == "service_healthy"


def test_worker_broker_is_kafkas_in_network_listener() -> None:
    e = env(service("kafka"))
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(e["KAFKA_LISTENERS"])
    host, port = worker_tocsin_env()["TOCSIN_BROKER"].rsplit(":", 1)
    assert host in {"kafka", service("kafka").get("hostname", "kafka")}
    matching = [name for name, hp in advertised.items() if hp == (host, int(port))]
    assert matching, f"TOCSIN_BROKER {host}:{port} is not advertised: {advertised}"
    # ... and Kafka actually listens on that port under the same listener name.
    assert bound[matching[0]][1] == int(port)


def test_worker_db_is_on_a_volume() -> None:
    db = worker_tocsin_env()["TOCSIN_DB"]
    targets = volume_targets(service("worker"))
    assert any(db.startswith(t.rstrip("/") + "/") for t in targets), (db, targets)


def test_worker_publishes_its_http_port() -> None:
    port = worker_tocsin_env()["TOCSIN_HTTP_PORT"]
    published = [str(p).rsplit(":", 1)[-1] for p in service("worker").get("ports", [])]
    assert port in published


@pytest.mark.parametrize("name", sorted(worker_tocsin_env()))
def test_worker_env_var_is_a_setting(name: str) -> None:
    """pydantic-settings silently ignores unknown TOCSIN_* variables, so check each name
    against the model's fields (``__`` = nesting)."""
    model: Any = Settings
    for part in name.removeprefix("TOCSIN_").lower().split("__"):
        fields = getattr(model, "model_fields", {})
        assert part in fields, f"{name}: Settings has no field {part!r} (add it or drop the var)"
        model = fields[part].annotation


def test_worker_env_builds_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TOCSIN_"):
            monkeypatch.delenv(key)
    values = worker_tocsin_env()
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # validates every value
    for key, value in values.items():
        got: Any = settings
        for part in key.removeprefix("TOCSIN_").lower().split("__"):
            got = getattr(got, part)
        if isinstance(got, dict):
            assert got == json.loads(value), key
        else:
            assert str(got) == value, key


def test_worker_bound_beyond_loopback_has_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker binds 0.0.0.0 in the compose file: it must start without --insecure."""
    for key in list(os.environ):
        if key.startswith("TOCSIN_"):
            monkeypatch.delenv(key)
    for key, value in worker_tocsin_env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.http_bind == "0.0.0.0"
    assert check_exposure(settings) is None
    assert settings.api_tokens and settings.intake_tokens


def test_demo_producer_is_opt_in() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        if name not in {"kafka", "worker"}:
            assert svc.get("profiles"), f"{name} would start with a plain `docker compose up`"


# ---------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_and_non_root_user() -> None:
    ins = dockerfile_instructions()
    bases = [args.split()[0] for word, args in ins if word == "FROM"]
    assert bases and bases[-1].startswith("python:3.11-slim"), bases
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_installs_the_project() -> None:
    ins = dockerfile_instructions()
    runs = " && ".join(args for word, args in ins if word == "RUN")
    assert re.search(r"pip install (-\S+ )*\.(\s|$|&)", runs), runs
    # Everything the build reads is copied in: pyproject, readme, each package-dir.
    copied = {p.rstrip("/") for word, args in ins if word == "COPY"
              for p in args.split()[:-1] if not p.startswith("--")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"],
              *project["tool"]["setuptools"]["package-dir"].values()}
    assert "." in copied or needed <= copied, needed - copied


def test_dockerfile_runs_tocsin_run() -> None:
    ins = dockerfile_instructions()
    entry = [exec_form(a) for w, a in ins if w == "ENTRYPOINT"]
    cmd = [exec_form(a) for w, a in ins if w == "CMD"]
    argv = (entry[-1] if entry else []) + (cmd[-1] if cmd else [])
    assert argv[:2] == ["tocsin", "run"], argv


def test_image_installs_every_runtime_dependency() -> None:
    """The image gets exactly pyproject's dependencies (and theirs): every third-party
    module the package imports must come from one of them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in project["project"]["dependencies"]]
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in closure or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        closure.add(name)
        todo += [Requirement(r) for r in md.requires(req.name) or []]

    dirs = project["tool"]["setuptools"]["package-dir"].values()
    imported = set()
    for path in (p for d in dirs for p in (ROOT / d).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"tocsin"}
    providers = md.packages_distributions()
    missing = sorted(m for m in third_party
                     if not {canonicalize_name(d) for d in providers.get(m, [m])} & closure)
    assert not missing, f"imported but not in pyproject dependencies: {missing}"


# ---------------------------------------------------------------------- README

COMPOSE_SUBCOMMANDS = {"up", "run", "exec", "logs", "start", "stop", "restart", "rm",
                       "build", "pull", "ps", "create", "kill", "attach", "top"}
ONE_SERVICE = {"run", "exec", "attach"}  # the words after the service are its command
# Options that take a value, before the subcommand (compose's own) and after it.
GLOBAL_VALUE_FLAGS = {"-f", "--file", "-p", "--project-name", "--profile", "--env-file",
                      "--project-directory"}
VALUE_FLAGS = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--entrypoint", "--name",
               "--index", "--tail", "--scale", "-v", "--volume", "-p", "--publish", "-l",
               "--label", "--pull"}


def readme_compose_services(text: str) -> set[str]:
    """Service names used in ``docker compose <subcommand> ... <service>`` commands
    written as code (fenced blocks or inline backticks; prose is not parsed)."""
    code = "\n".join(re.findall(r"```[^\n]*\n(.*?)```", text, re.DOTALL)
                     + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL)))
    names: set[str] = set()
    for m in re.finditer(r"\bdocker[ -]compose\s+([^\n`]*)", code):
        line = re.split(r"&&|\|\||[|;#]", m.group(1))[0]
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        sub = None
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word in (VALUE_FLAGS if sub else GLOBAL_VALUE_FLAGS):
                skip = True
            elif word.startswith("-") or word == "\\":
                continue
            elif sub is None:
                if word not in COMPOSE_SUBCOMMANDS:
                    break
                sub = word
            elif re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", word):
                names.add(word)
                if sub in ONE_SERVICE:
                    break
            else:
                break
    return names


def readme_compose_section(text: str) -> str:
    """The Markdown section (heading to next heading of the same or a higher level)
    around the first mention of docker compose; the whole file when it has no heading."""
    first = re.search(r"docker[ -]compose", text, re.IGNORECASE)
    assert first
    headings = list(re.finditer(r"^(#{1,6})\s", text, re.MULTILINE))
    before = [h for h in headings if h.start() <= first.start()]
    if not before:
        return text
    level = len(before[-1].group(1))
    after = [h for h in headings if h.start() > first.start() and len(h.group(1)) <= level]
    return text[before[-1].start(): after[0].start() if after else len(text)]


def test_readme_uses_the_compose_service_names() -> None:
    assert README.exists(), "README.md is missing (it should document docker compose)"
    text = README.read_text()
    if not re.search(r"docker[ -]compose", text, re.IGNORECASE):
        return  # the README does not document compose: nothing to keep consistent
    services = set(compose()["services"])
    section = readme_compose_section(text)
    for name in ("kafka", "worker"):
        assert re.search(rf"\b{name}\b", section), f"README's compose section omits {name}"
    unknown = readme_compose_services(text) - services
    assert not unknown, f"README runs compose services that do not exist: {sorted(unknown)}"


def test_readme_helpers_find_service_names() -> None:
    sample = ("Start it with docker compose up and open the page.\n"
              "```sh\ndocker compose up -d --build\n"
              "docker compose exec worker tocsin incidents\n"
              "docker compose --profile demo run --rm demo-producer\n```\n"
              "Then `docker compose logs -f kafka worker | less`.\n")
    assert readme_compose_services(sample) == {"worker", "demo-producer", "kafka"}
