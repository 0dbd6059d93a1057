"""The container files (Dockerfile, docker-compose.yml) agree with the code and the README.

No Docker engine or Kafka is needed: the files are parsed and cross-checked. The compose
file is the production layout: three KRaft nodes, ``--role detect`` workers scaled with
``deploy.replicas``, and one ``--role project`` worker that owns the DuckDB file.
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

from tocsin.streams.worker.runner import check_exposure
from tocsin.streams.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"

KAFKA_IMAGE = "apache/kafka:3.9.1"
WORKER_ROLES = {"detect", "project"}  # "all" would be a second DuckDB writer


# ---------------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose()["services"]
    return svcs


def service(name: str) -> dict[str, Any]:
    svcs = services()
    assert name in svcs, f"docker-compose.yml has no service {name!r}"
    return svcs[name]


def env(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, whether written as a mapping or a list."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def tocsin_env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in env(svc).items() if k.startswith("TOCSIN_")}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)://([^:,]*):(\d+)\s*", item)
        assert m, f"cannot parse listener {item!r}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def is_tocsin(svc: dict[str, Any]) -> bool:
    """Built from this repository (the worker image)."""
    return "build" in svc or str(svc.get("image", "")).startswith("tocsin")


def kafka_nodes() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items()
            if str(s.get("image", "")).startswith("apache/kafka")}


def workers() -> dict[str, dict[str, Any]]:
    """Services that run ``tocsin run`` (the image's default command)."""
    return {n: s for n, s in services().items()
            if is_tocsin(s) and argv(s.get("command"))[:1] in ([], ["run"])}


def role(svc: dict[str, Any]) -> str:
    """The worker's role: ``--role`` on the command line wins over ``TOCSIN_ROLE``."""
    words = argv(svc.get("command"))
    for i, word in enumerate(words):
        if word == "--role" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--role="):
            return word.split("=", 1)[1]
    return env(svc).get("TOCSIN_ROLE", str(Settings.model_fields["role"].default))


def replicas(svc: dict[str, Any]) -> int:
    deploy = svc.get("deploy") or {}
    return int(deploy.get("replicas", svc.get("scale", 1)))


def node_names(name: str, svc: dict[str, Any]) -> set[str]:
    """The names a service is reached by on the compose network."""
    return {name, str(svc.get("hostname", name))}


def mounts(svc: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(source, target) of each ``volumes`` entry; source None for an anonymous volume."""
    out: list[tuple[str | None, str]] = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append((v.get("source"), v["target"]))
        else:
            parts = str(v).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    return out


def named_volume(source: str | None) -> bool:
    return bool(source) and not str(source).startswith((".", "/", "~", "$"))


def published(svc: dict[str, Any]) -> list[tuple[str | None, int | None, int]]:
    """(host ip, host port, container port) of each ``ports`` entry."""
    out: list[tuple[str | None, int | None, int]] = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            host = p.get("published")
            out.append((p.get("host_ip"), int(host) if host else None, int(p["target"])))
            continue
        parts = str(p).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append((None, int(parts[0]), int(parts[1])))
        else:
            out.append((None, None, int(parts[0])))
    return out


def voters(value: str) -> dict[int, tuple[str, int]]:
    """``id@host:port,...`` -> {id: (host, port)}."""
    out: dict[int, tuple[str, int]] = {}
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)@([^:,]+):(\d+)\s*", item)
        assert m, f"cannot parse quorum voter {item!r}"
        assert int(m.group(1)) not in out, f"voter id {m.group(1)} listed twice"
        out[int(m.group(1))] = (m.group(2), int(m.group(3)))
    return out


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


def settings_from(svc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service's TOCSIN_* environment makes them (nothing else set)."""
    for key in list(os.environ):
        if key.startswith("TOCSIN_"):
            monkeypatch.delenv(key)
    for key, value in tocsin_env(svc).items():
        monkeypatch.setenv(key, value)
    return Settings()  # validates every value


def _tocsin_vars() -> list[tuple[str, str]]:
    return sorted((n, k) for n, s in services().items() if is_tocsin(s) for k in tocsin_env(s))


# ---------------------------------------------------------------------- compose: kafka


def test_no_zookeeper_anywhere() -> None:
    for name, svc in services().items():
        assert "zookeeper" not in name.lower()
        assert "zookeeper" not in str(svc.get("image", "")).lower()
        assert not [k for k in env(svc) if "ZOOKEEPER" in k.upper()], name


def test_kafka_is_three_kraft_nodes_each_broker_and_controller() -> None:
    nodes = kafka_nodes()
    assert len(nodes) == 3, sorted(nodes)
    for name, svc in nodes.items():
        assert svc["image"] == KAFKA_IMAGE, name
        e = env(svc)
        roles = {r.strip() for r in e["KAFKA_PROCESS_ROLES"].split(",")}
        assert roles == {"broker", "controller"}, name
        ls = listeners(e["KAFKA_LISTENERS"])
        assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] in ls, name
        protocols = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(ls) <= set(protocols), name
        # Every advertised listener is one the node binds, on the same port.
        for lname, (_, port) in listeners(e["KAFKA_ADVERTISED_LISTENERS"]).items():
            assert ls.get(lname, (None, None))[1] == port, (name, lname)


def test_kafka_quorum_voters_are_the_three_nodes() -> None:
    nodes = kafka_nodes()
    envs = {name: env(svc) for name, svc in nodes.items()}
    lists = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"].replace(" ", "") for e in envs.values()}
    assert len(lists) == 1, f"nodes disagree on the quorum: {lists}"
    quorum = voters(lists.pop())
    ids = [int(e["KAFKA_NODE_ID"]) for e in envs.values()]
    assert len(set(ids)) == len(ids), f"node ids are not unique: {ids}"
    assert set(quorum) == set(ids), (quorum, ids)
    for name, e in envs.items():
        host, port = quorum[int(e["KAFKA_NODE_ID"])]
        assert host in node_names(name, nodes[name]), (name, host)
        controller = listeners(e["KAFKA_LISTENERS"])[e["KAFKA_CONTROLLER_LISTENER_NAMES"]]
        assert port == controller[1], (name, port, controller)


def test_kafka_nodes_share_one_fixed_cluster_id() -> None:
    ids = {env(svc).get("CLUSTER_ID", "") for svc in kafka_nodes().values()}
    assert len(ids) == 1, ids
    (cluster,) = ids
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster), cluster


def test_kafka_replicates_internal_topics_three_times_min_isr_two() -> None:
    for name, svc in kafka_nodes().items():
        e = env(svc)
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            assert e.get(key) == "3", (name, key, e.get(key))
        for key in ("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
            assert e.get(key) == "2", (name, key, e.get(key))


def test_replication_factor_is_3_everywhere_it_is_set() -> None:
    seen = {(name, k): v for name, svc in services().items()
            for k, v in env(svc).items() if k.upper().endswith("REPLICATION_FACTOR")}
    assert seen
    assert {v for v in seen.values()} == {"3"}, seen
    for name, svc in workers().items():
        assert tocsin_env(svc).get("TOCSIN_REPLICATION_FACTOR") == "3", name


def test_kafka_node_has_its_own_volume_on_its_log_dir() -> None:
    declared = set(compose().get("volumes") or {})
    sources = []
    for name, svc in kafka_nodes().items():
        log_dir = env(svc)["KAFKA_LOG_DIRS"]
        on_log_dir = [src for src, target in mounts(svc) if target == log_dir]
        assert len(on_log_dir) == 1 and named_volume(on_log_dir[0]), (name, mounts(svc))
        assert on_log_dir[0] in declared, (name, on_log_dir[0])
        sources.append(on_log_dir[0])
    assert len(set(sources)) == len(sources), f"brokers share a volume: {sources}"


def test_kafka_nodes_have_healthchecks_and_no_start_order() -> None:
    nodes = kafka_nodes()
    for name, svc in nodes.items():
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name
        # A quorum needs 2 of 3 controllers: waiting for each other would never start.
        assert not set(svc.get("depends_on") or []) & set(nodes), name


def test_kafka_host_listeners_are_published_on_loopback() -> None:
    host_ports = []
    for name, svc in kafka_nodes().items():
        e = env(svc)
        bound = listeners(e["KAFKA_LISTENERS"])
        advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
        external = {ln: port for ln, (host, port) in advertised.items()
                    if host in {"localhost", "127.0.0.1"}}
        assert len(external) == 1, (name, external)
        ((lname, port),) = external.items()
        ports = published(svc)
        assert ports, name
        for host_ip, host_port, target in ports:
            assert (host_ip, host_port) == ("127.0.0.1", port), (name, host_ip, host_port)
            assert target == bound[lname][1], (name, target, bound[lname])
        host_ports.append(port)
    assert sorted(host_ports) == [29092, 29093, 29094], host_ports


# ---------------------------------------------------------------------- compose: workers


def test_workers_are_one_project_and_at_least_two_detect() -> None:
    ws = workers()
    roles = {name: role(svc) for name, svc in ws.items()}
    assert set(roles.values()) <= WORKER_ROLES, roles
    project = [n for n, r in roles.items() if r == "project"]
    assert len(project) == 1, roles
    assert replicas(ws[project[0]]) == 1, "DuckDB takes one writer: one project worker"
    detect = sum(replicas(ws[n]) for n, r in roles.items() if r == "detect")
    assert detect >= 2, f"{detect} detect worker(s)"


def test_workers_share_one_app_id_and_topics() -> None:
    """Same app id and topic names = the same consumer groups and inputs."""
    default = Settings.model_fields["app_id"].default
    ids = {n: tocsin_env(s).get("TOCSIN_APP_ID", default) for n, s in workers().items()}
    assert len(set(ids.values())) == 1, ids
    topics = {n: {k: v for k, v in tocsin_env(s).items() if k.startswith("TOCSIN_TOPICS__")}
              for n, s in workers().items()}
    assert len({json.dumps(t, sort_keys=True) for t in topics.values()}) == 1, topics


def test_project_worker_alone_holds_the_duckdb_volume() -> None:
    ws = workers()
    (name,) = [n for n, s in ws.items() if role(s) == "project"]
    db = tocsin_env(ws[name])["TOCSIN_DB"]
    holding = [(src, t) for src, t in mounts(ws[name]) if db.startswith(t.rstrip("/") + "/")]
    assert len(holding) == 1, (db, mounts(ws[name]))
    volume = holding[0][0]
    assert named_volume(volume) and volume in (compose().get("volumes") or {}), volume
    others = [n for n, s in services().items()
              if n != name and volume in {src for src, _ in mounts(s)}]
    assert not others, f"{others} also mount the DuckDB volume {volume!r}"


def test_detect_workers_do_not_mount_the_duckdb_volume() -> None:
    ws = workers()
    (project,) = [s for s in ws.values() if role(s) == "project"]
    db = tocsin_env(project)["TOCSIN_DB"]
    volume = next(src for src, t in mounts(project) if db.startswith(t.rstrip("/") + "/"))
    for name, svc in ws.items():
        if role(svc) == "detect":
            assert volume not in {src for src, _ in mounts(svc)}, name


def test_workers_wait_for_every_healthy_broker() -> None:
    nodes = set(kafka_nodes())
    for name, svc in workers().items():
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for node in nodes:
            assert (depends.get(node) or {}).get("condition") == "service_healthy", (name, node)


def test_broker_list_is_every_nodes_in_network_listener() -> None:
    inner = set()
    for name, svc in kafka_nodes().items():
        e = env(svc)
        lname = e["KAFKA_INTER_BROKER_LISTENER_NAME"]
        host, port = listeners(e["KAFKA_ADVERTISED_LISTENERS"])[lname]
        assert host in node_names(name, svc), (name, host)
        inner.add(f"{host}:{port}")
    users = {n: s for n, s in services().items() if "TOCSIN_BROKER" in tocsin_env(s)}
    assert set(workers()) <= set(users)
    for name, svc in users.items():
        given = [b.strip() for b in tocsin_env(svc)["TOCSIN_BROKER"].split(",")]
        assert len(given) == len(set(given)) and set(given) == inner, (name, given, inner)


def test_workers_serve_http_and_check_readyz(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in workers().items():
        assert settings_from(svc, monkeypatch).http_port > 0, name
        check = svc.get("healthcheck") or {}
        assert not check.get("disable") and "/readyz" in " ".join(argv(check.get("test"))), name


def test_project_worker_publishes_its_http_port() -> None:
    (svc,) = [s for s in workers().values() if role(s) == "project"]
    port = int(tocsin_env(svc)["TOCSIN_HTTP_PORT"])
    assert port in [target for _, _, target in published(svc)]


def test_ports_are_published_on_loopback_only() -> None:
    for name, svc in services().items():
        for host_ip, host_port, target in published(svc):
            assert host_ip == "127.0.0.1", f"{name}: port {target} published on {host_ip!r}"
            assert host_port, f"{name}: port {target} gets a random host port on all addresses"


def test_replicated_services_can_scale() -> None:
    """Replicas (and ``--scale``) clash on a fixed container name or host port."""
    for name, svc in services().items():
        if replicas(svc) > 1:
            assert "container_name" not in svc, name
            assert not published(svc), name


@pytest.mark.parametrize(("service_name", "name"), _tocsin_vars())
def test_worker_env_var_is_a_setting(service_name: str, name: str) -> None:
    """pydantic-settings silently ignores unknown TOCSIN_* variables, so check each name
    against the model's fields (``__`` = nesting)."""
    model: Any = Settings
    for part in name.removeprefix("TOCSIN_").lower().split("__"):
        fields = getattr(model, "model_fields", {})
        assert part in fields, (f"{service_name}: {name}: Settings has no field {part!r} "
                                "(add it or drop the var)")
        model = fields[part].annotation


@pytest.mark.parametrize("name", sorted(workers()))
def test_worker_env_builds_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(name)
    values = tocsin_env(svc)
    settings = settings_from(svc, monkeypatch)
    for key, value in values.items():
        got: Any = settings
        for part in key.removeprefix("TOCSIN_").lower().split("__"):
            got = getattr(got, part)
        if isinstance(got, dict):
            assert got == json.loads(value), key
        else:
            assert str(got) == value, key


@pytest.mark.parametrize("name", sorted(workers()))
def test_worker_bound_beyond_loopback_has_tokens(name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers bind 0.0.0.0 in the compose file: they must start without --insecure."""
    settings = settings_from(service(name), monkeypatch)
    assert settings.http_bind == "0.0.0.0"
    assert not settings.insecure
    assert check_exposure(settings) is None
    assert settings.api_tokens and settings.intake_tokens


def test_only_brokers_and_workers_start_by_default() -> None:
    always = set(kafka_nodes()) | set(workers())
    assert "demo-producer" in services()
    for name, svc in services().items():
        if name not in always:
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
