"""The deployment files agree with the gateway they deploy.

Dockerfile, docker-compose.yml (with config/compose.yaml) and deploy/kubernetes/ are parsed and
checked against the gateway's own code: configs pass its validation, commands parse with its CLI,
probes hit its real health paths, grace periods cover its shutdown drain. The Kubernetes
manifests are rendered as `kubectl kustomize` would and validated with kubernetes-validate; no
Docker engine, Helm or cluster is needed.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

from gateway.api.app import GatewayApp, create_app
from gateway.cli import build_parser
from gateway.config import GatewayConfig, load_config, parse_config
from gateway.shutdown import SERVER_TAIL_S

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "kubernetes"
# The manifests every cluster can apply, and an overlay adding the Prometheus Operator's objects.
BASE = K8S / "base"
OPERATOR = K8S / "prometheus-operator"
# Kinds without a namespace (kustomize's namespace setting leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# The Prometheus Operator's custom resources: kubernetes-validate has no schema for them.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The Kubernetes versions the manifests are validated against (oldest and newest schemas used).
K8S_VERSIONS = ("1.30.0", "1.37.0")
# A template with placeholder values: listed nowhere, so `kubectl apply -k` never applies it.
SECRET_TEMPLATE = "secret.template.yaml"
# The Secrets it describes: the gateway's own, and static AWS keys (optional: IRSA needs none).
SECRETS = "bedrock-gateway-secrets"
AWS_SECRET = "bedrock-gateway-aws"
# The Kubernetes Service name and the compose service name the gateway's upstream calls.
SIMULATOR_SERVICE = "simulator"


# ---- helpers ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker also drops comment lines inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, rest = logical.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions (its FROM first), by stage name (``FROM … AS name``)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3, f"FROM {rest}: name every stage (FROM image AS name)"
            assert words[1].upper() == "AS"
            current = stages.setdefault(words[2], [])
        if current is not None:
            current.append((keyword, rest))
    return stages


def copy_sources(instructions: list[tuple[str, str]]) -> set[str]:
    """What the COPY/ADD instructions take from the build context (not from other stages)."""
    sources: set[str] = set()
    for keyword, rest in instructions:
        if keyword in {"COPY", "ADD"}:
            words = rest.split()
            if any(word.startswith("--from=") for word in words):
                continue
            sources.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return sources


def run_mount_stage(run: str) -> str | None:
    """The stage a ``RUN --mount=type=bind,from=STAGE,…`` reads from."""
    match = re.search(r"--mount=\S*\bfrom=([\w.-]+)", run)
    return match.group(1) if match else None


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def only(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for kw, rest in instructions if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def json_array(text: str) -> list[str]:
    """The exec form of CMD/ENTRYPOINT: a JSON array of strings (the shell form is not wanted)."""
    value = json.loads(text)
    assert isinstance(value, list), f"not a JSON array: {text}"
    assert all(isinstance(item, str) for item in value), text
    return value


def dockerfile_cmd() -> list[str]:
    return json_array(only(final_stage(), "CMD"))


def exposed_ports() -> set[int]:
    ports: set[int] = set()
    for keyword, rest in final_stage():
        if keyword == "EXPOSE":
            ports.update(int(port.split("/")[0]) for port in rest.split())
    return ports


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    value: dict[str, Any] = services[name]
    return value


def compose_command(svc: dict[str, Any]) -> list[str]:
    """What the container runs after the image's ENTRYPOINT: the service's command or the CMD."""
    command = svc.get("command", dockerfile_cmd())
    assert isinstance(command, list), "use the exec (list) form for compose commands"
    return command


def compose_mount(svc: dict[str, Any], target: str) -> tuple[Path, bool]:
    """(host path, read-only) of the short-syntax bind mount at ``target``."""
    for volume in svc.get("volumes", []):
        source, container_path, *options = volume.split(":")
        if container_path == target:
            return (ROOT / source).resolve(), "ro" in options
    raise AssertionError(f"nothing is mounted at {target}")


def duration_s(text: str) -> float:
    """A compose duration such as "40s", "1m30s", "500ms"."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def env_names(config: GatewayConfig) -> set[str]:
    """Every environment variable the gateway reads a secret from, for this config."""
    names: set[str] = set()
    for account in config.accounts.values():
        names.update(
            name
            for name in (
                account.access_key_id_env,
                account.secret_access_key_env,
                account.session_token_env,
                account.external_id_env,
            )
            if name
        )
    for tenant in config.tenants.values():
        names.update(key.secret_env for key in tenant.access_keys)
    if config.limiter.redis_url_env:
        names.add(config.limiter.redis_url_env)
    return names


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def k8s_documents(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if document is not None:
            assert isinstance(document, dict), f"{path.name}: a document is not a mapping"
            yield document


def kustomization(directory: Path = BASE) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def json_pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json6902(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """The JSON patch operations the kustomizations use (add, replace, remove on mappings)."""
    for operation in operations:
        *parents, last = json_pointer(operation["path"])
        node = document
        for part in parents:
            node = node[part]
        assert isinstance(node, dict), f"{operation['path']}: only mappings are patched here"
        if operation["op"] == "remove":
            assert last in node, f"{operation['path']}: nothing to remove"
            del node[last]
        elif operation["op"] in {"add", "replace"}:
            assert operation["op"] == "add" or last in node, operation["path"]
            node[last] = copy.deepcopy(operation["value"])
        else:
            raise AssertionError(f"unsupported patch operation {operation['op']}")


def pod_specs(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if document["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield document["spec"]["template"]["spec"]


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize DIRECTORY`` outputs, for the features these kustomizations use:
    resources (files and directories), namespace, images, and JSON 6902 patches."""
    spec = kustomization(directory)
    unknown = set(spec) - {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
    assert not unknown, f"{directory}: this renderer does not know {sorted(unknown)}"
    documents: list[dict[str, Any]] = []
    for entry in spec["resources"]:
        path = (directory / entry).resolve()
        assert path.is_relative_to(K8S), f"{entry}: outside deploy/kubernetes"
        documents.extend(
            render(path) if path.is_dir() else copy.deepcopy(list(k8s_documents(path)))
        )
    for patch in spec.get("patches", []):
        target = patch["target"]
        matched = [
            d
            for d in documents
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        assert len(matched) == 1, f"the patch for {target} matches {len(matched)} objects"
        apply_json6902(matched[0], yaml.safe_load(patch["patch"]))
    if "namespace" in spec:
        for document in documents:
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for document in documents:
            for pod in pod_specs(document):
                for c in pod.get("containers", []) + pod.get("initContainers", []):
                    if c["image"].split(":")[0] == image["name"]:
                        c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return documents


@cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(render(directory))


def manifest(kind: str, directory: Path = BASE) -> dict[str, Any]:
    """The one object of ``kind`` that ``kubectl apply -k DIRECTORY`` applies."""
    found = [document for document in rendered(directory) if document.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {directory.name}, found {len(found)}"
    return found[0]


def secret_template(name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_documents(BASE / SECRET_TEMPLATE) if d["metadata"]["name"] == name]
    return found


def configmap_config() -> GatewayConfig:
    text = manifest("ConfigMap")["data"]["gateway.yaml"]
    return parse_config(yaml.safe_load(text), "deploy/kubernetes ConfigMap gateway.yaml")


def container() -> dict[str, Any]:
    containers = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    value: dict[str, Any] = containers[0]
    return value


def named_port(port: str | int) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def dockerfile_uid() -> int:
    user = only(final_stage(), "USER").split(":")[0]
    assert user.isdigit(), f"USER {user!r}: use a numeric uid so runAsNonRoot can verify it"
    return int(user)


@cache
def gateway_app() -> GatewayApp:
    """The gateway built from the ConfigMap's config (the lifespan is not run: no AWS calls)."""
    config = configmap_config()
    environ = dict.fromkeys(env_names(config), "placeholder-secret")
    if config.limiter.redis_url_env:  # never dialled: the lifespan does not run
        environ[config.limiter.redis_url_env] = "redis://127.0.0.1:6379/0"
    return create_app(config, environ=environ)


def real_paths() -> set[str]:
    return {route.path for route in gateway_app().control.routes if isinstance(route, APIRoute)}


def not_yet_started_status(path: str) -> int:
    """The status the gateway answers ``path`` with before its start-up has finished."""
    return TestClient(gateway_app()).get(path).status_code


# ---- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    bases = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    assert len(bases) >= 2, "expected a builder stage and a runtime stage"
    assert set(bases) == {"python:3.11-slim"}


def test_dockerfile_builds_a_wheel_and_installs_only_it() -> None:
    instructions = dockerfile_instructions()
    builder = instructions[: len(instructions) - len(final_stage())]
    assert any(kw == "RUN" and "pip wheel" in rest for kw, rest in builder)
    runs = " ".join(rest for kw, rest in final_stage() if kw == "RUN")
    assert "pip install" in runs
    assert "--no-index" in runs, "the runtime stage installs from the builder's wheels only"
    assert ".whl" in runs or "bedrock-gateway" in runs
    all_runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "[dev]" not in all_runs, "no dev extras in the image"
    copies = [rest for kw, rest in final_stage() if kw in {"COPY", "ADD"}]
    assert not any("gateway" in rest.split() for rest in copies), "no source tree in the image"


def test_dockerfile_installs_dependencies_before_the_source_is_copied() -> None:
    # The dependency layers are cached: built from pyproject.toml alone, installed in a layer of
    # their own before the layer holding the gateway, so editing gateway/ reuses them.
    stages = dockerfile_stages()
    assert list(stages)[-1] == "runtime"
    deps = [
        name
        for name, body in stages.items()
        if any(kw == "RUN" and "pip wheel" in rest and " -r " in rest for kw, rest in body)
    ]
    assert len(deps) == 1, "one stage builds the dependencies' wheels from a requirements file"
    assert copy_sources(stages[deps[0]]) == {"pyproject.toml"}, "dependencies from pyproject only"
    assert stages[deps[0]][0][1].split()[0] == "${PYTHON_IMAGE}", "not built on a stage with source"
    sources = [name for name, body in stages.items() if "gateway" in copy_sources(body)]
    assert len(sources) == 1
    assert sources[0] != deps[0]
    runtime = stages["runtime"]
    assert not copy_sources(runtime), "the runtime stage copies nothing from the context"
    installs = [
        (i, rest) for i, (kw, rest) in enumerate(runtime) if kw == "RUN" and "pip install" in rest
    ]
    from_deps = [i for i, rest in installs if run_mount_stage(rest) == deps[0]]
    from_source = [i for i, rest in installs if run_mount_stage(rest) == sources[0]]
    assert len(from_deps) == len(from_source) == 1
    assert from_deps[0] < from_source[0], "dependencies are installed before the gateway"
    assert "--no-deps" in runtime[from_source[0]][1], "the gateway's layer holds only the gateway"
    assert " -r " in runtime[from_deps[0]][1]


def test_dockerfile_runs_as_non_root() -> None:
    assert dockerfile_uid() != 0
    assert only(final_stage(), "USER").split(":")[0] != "root"


def test_dockerfile_environment() -> None:
    env = " ".join(rest for kw, rest in final_stage() if kw == "ENV")
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)


def test_dockerfile_entrypoint_and_cmd_parse_with_the_cli() -> None:
    assert json_array(only(final_stage(), "ENTRYPOINT")) == ["bedrock-gateway"]
    args = build_parser().parse_args(dockerfile_cmd())
    assert args.command == "serve"
    assert args.config == "/etc/bedrock-gateway/gateway.yaml"
    assert args.host == "0.0.0.0"
    assert exposed_ports() == {args.port or 8080}


def test_dockerfile_healthcheck_uses_stdlib_against_live() -> None:
    healthcheck = only(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    argv = json_array(command)
    assert argv[0] == "python", "slim images have no curl: use Python's urllib"
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(argv))
    assert len(urls) == 1
    url = urlsplit(urls[0])
    assert url.path in real_paths()
    assert not_yet_started_status(url.path) == 200, "a liveness check must not wait on readiness"
    assert url.port in exposed_ports()
    assert "--timeout=" in options


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".env"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    for copied in ("pyproject.toml", "README.md", "gateway"):
        assert copied not in patterns, f"the Dockerfile copies {copied}"


# ---- docker-compose.yml ----------------------------------------------------------------------

# The gateway's config file inside its container: the image's CMD reads it from here.
COMPOSE_CONFIG_PATH = "/etc/bedrock-gateway/gateway.yaml"
# The files the other services' configuration comes from (mounted read-only by compose).
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bedrock-gateway.json"


def gateway_services() -> dict[str, dict[str, Any]]:
    """The compose services that run ``bedrock-gateway serve``, by name."""
    found = {}
    for name, svc in compose()["services"].items():
        if svc.get("build") == "." or svc.get("image", "").startswith("bedrock-gateway"):
            args = build_parser().parse_args(compose_command(svc))
            if args.command == "serve":
                found[name] = svc
    return found


def gateway_replicas() -> int:
    return sum(svc.get("deploy", {}).get("replicas", 1) for svc in gateway_services().values())


def compose_config_of(svc: dict[str, Any]) -> GatewayConfig:
    args = build_parser().parse_args(compose_command(svc))
    return load_config(compose_mount(svc, args.config)[0])


def compose_gateway_config() -> GatewayConfig:
    """The one config every gateway replica runs (checked to be one file below)."""
    return compose_config_of(next(iter(gateway_services().values())))


def bind_mounts(svc: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(source, target, options) of each short-syntax volume of a service."""
    mounts = []
    for volume in svc.get("volumes", []):
        assert isinstance(volume, str), "use the short syntax SOURCE:TARGET[:ro]"
        source, target, *options = volume.split(":")
        mounts.append((source, target, options))
    return mounts


def compose_config_content(name: str) -> Any:
    """A top-level ``configs:`` entry's inline content, parsed as YAML."""
    entry = compose()["configs"][name]
    assert "content" in entry, f"configs.{name}: expected inline content"
    return yaml.safe_load(entry["content"])


def service_config_target(svc: dict[str, Any], name: str) -> str:
    targets = [c["target"] for c in svc.get("configs", []) if c["source"] == name]
    assert len(targets) == 1, f"the service does not mount configs.{name} once"
    return str(targets[0])


def published(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each of a service's published ports."""
    mappings = []
    for mapping in svc.get("ports", []):
        assert isinstance(mapping, str), "use the short syntax IP:HOST:CONTAINER, quoted"
        host_ip, host_port, container_port = mapping.split(":")
        mappings.append((host_ip, int(host_port), int(container_port)))
    return mappings


def http_urls(healthcheck: dict[str, Any]) -> list[Any]:
    return [urlsplit(u) for u in re.findall(r"https?://[^'\"\s]+", " ".join(healthcheck["test"]))]


def test_compose_services() -> None:
    assert set(compose()["services"]) == {
        "redis",
        SIMULATOR_SERVICE,
        "gateway-1",
        "gateway-2",
        "prometheus",
        "grafana",
    }
    redis = service("redis")
    assert redis["image"] == "redis:7-alpine"
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    for name, svc in compose()["services"].items():
        if "image" in svc and "build" not in svc:
            image = svc["image"]
            assert ":" in image, f"{name}: pin {image}"
            assert not image.endswith(":latest"), f"{name}: pin {image}"


def test_compose_runs_two_gateway_replicas_on_one_config() -> None:
    assert set(gateway_services()) == {"gateway-1", "gateway-2"}
    assert gateway_replicas() == 2
    sources = {compose_mount(svc, COMPOSE_CONFIG_PATH) for svc in gateway_services().values()}
    assert sources == {((ROOT / "config" / "compose.yaml").resolve(), True)}, "one read-only file"
    # The local share (quota / replicas) of each replica while Redis is away must add up to the
    # quota: limiter.replicas counts the replicas the stack runs.
    assert compose_gateway_config().limiter.replicas == gateway_replicas()


def test_compose_gateway_config_is_mounted_and_valid() -> None:
    for name, svc in gateway_services().items():
        args = build_parser().parse_args(compose_command(svc))
        assert args.config == COMPOSE_CONFIG_PATH, name
        source, read_only = compose_mount(svc, args.config)
        assert read_only, f"{name}: mount the config read-only"
        assert source.is_file()
        load_config(source)  # raises ConfigError when the gateway would refuse it


def test_compose_gateways_share_the_stacks_redis() -> None:
    # A memory store per gateway process would let each one spend the whole quota.
    limiter = compose_gateway_config().limiter
    assert limiter.backend == "redis"
    assert limiter.redis_url_env, "the URL comes from the environment"
    for name, svc in gateway_services().items():
        value = str(svc["environment"][limiter.redis_url_env])
        default = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
        assert default, f"{name}: {value}: an overridable default"
        url = urlsplit(default.group(1))
        assert url.scheme == "redis"
        assert url.hostname == "redis"
        assert url.hostname in compose()["services"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_ports_are_published_on_loopback_only() -> None:
    host_ports: list[int] = []
    for name, svc in compose()["services"].items():
        for host_ip, host_port, _container_port in published(svc):
            assert host_ip == "127.0.0.1", f"{name}: publish on 127.0.0.1 only"
            host_ports.append(host_port)
        assert "network_mode" not in svc, f"{name}: host networking would bypass the mapping"
    assert len(host_ports) == len(set(host_ports)), "two services publish one host port"
    assert not published(service("redis")), "Redis holds the quota state: not published"
    assert not published(service(SIMULATOR_SERVICE))


def test_compose_gateway_ports_match_the_config() -> None:
    for name, svc in gateway_services().items():
        args = build_parser().parse_args(compose_command(svc))
        config = compose_config_of(svc)
        port = args.port if args.port is not None else config.server.port
        host = args.host if args.host is not None else config.server.host
        assert host == "0.0.0.0", "inside a container the gateway must listen on every interface"
        assert port in exposed_ports()
        mappings = published(svc)
        assert mappings, f"{name} is not published"
        assert all(container_port == port for _, _, container_port in mappings), name


def test_compose_every_service_has_a_healthcheck() -> None:
    for name, svc in compose()["services"].items():
        healthcheck = svc.get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert healthcheck["test"][0] == "CMD", f"{name}: exec form, no shell needed"
        assert duration_s(healthcheck["timeout"]) < duration_s(healthcheck["interval"]), name
    for name, svc in gateway_services().items():
        urls = http_urls(svc["healthcheck"])
        assert len(urls) == 1, name
        assert urls[0].path in real_paths()
        assert not_yet_started_status(urls[0].path) == 200, "liveness must not wait on readiness"
        assert urls[0].port == compose_config_of(svc).server.port
    for name in ("prometheus", "grafana"):
        svc = service(name)
        (url,) = http_urls(svc["healthcheck"])
        assert url.hostname == "127.0.0.1"
        assert url.port in {container for _, _, container in published(svc)}, name


def test_compose_every_mounted_file_exists() -> None:
    # Every file a service mounts is in the repository: a missing source would make Docker
    # create an empty directory in its place and the service fail at start.
    mounted = []
    for name, svc in compose()["services"].items():
        for source, target, options in bind_mounts(svc):
            assert source.startswith("./"), f"{name}: mount repository files by relative path"
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT)
            assert path.is_file(), f"{name} mounts {source}, which does not exist"
            assert "ro" in options, f"{name}: mount {source} read-only"
            assert target.startswith("/")
            mounted.append(path)
        for entry in svc.get("configs", []):
            assert entry["source"] in compose()["configs"], f"{name}: {entry['source']}"
    for name, entry in compose().get("configs", {}).items():
        if "file" in entry:
            assert (ROOT / entry["file"]).is_file(), f"configs.{name}: {entry['file']}"
    assert ALERTS.resolve() in mounted
    assert DASHBOARD.resolve() in mounted


def test_compose_simulator_is_the_gateways_upstream() -> None:
    simulator = service(SIMULATOR_SERVICE)
    args = build_parser().parse_args(compose_command(simulator))
    assert args.command == "simulator"
    assert args.host == "0.0.0.0"
    assert args.port == 9100
    for name, gateway in gateway_services().items():
        assert simulator.get("build") == gateway.get("build") == "."
        assert simulator.get("image") == gateway.get("image")
        assert gateway["depends_on"][SIMULATOR_SERVICE]["condition"] == "service_started", name
        endpoints = [a.endpoint_url for a in compose_config_of(gateway).accounts.values()]
        assert endpoints
        for endpoint in endpoints:
            assert endpoint is not None, "every compose account must call the simulator, not AWS"
            url = urlsplit(endpoint)
            assert (url.hostname, url.port) == (SIMULATOR_SERVICE, args.port)
    health = " ".join(simulator.get("healthcheck", {}).get("test", []))
    assert f":{args.port}/health" in health, "the image's HEALTHCHECK probes the gateway's port"


def test_compose_secrets_come_from_the_environment_with_fake_defaults() -> None:
    config = compose_gateway_config()
    # The Redis URL is the stack's own service, not a secret: checked in its own test above.
    names = env_names(config) - {config.limiter.redis_url_env}
    assert names, "the compose config should read its secrets from the environment"
    for svc_name, gateway in gateway_services().items():
        environment = gateway["environment"]
        assert isinstance(environment, dict)
        for name in names:
            assert name in environment, f"config/compose.yaml reads {name}; {svc_name} lacks it"
            match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", str(environment[name]))
            assert match, f"{name}: use ${{{name}:-fake-default}}"
            assert match.group(1) == name
            assert "FAKE" in match.group(2).upper(), f"{name}: the default must look fake"
    password = str(service("grafana")["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", password)
    assert match
    assert "FAKE" in match.group(2).upper()


def test_compose_stop_grace_covers_the_drain() -> None:
    for name, gateway in gateway_services().items():
        grace = duration_s(gateway["stop_grace_period"])
        assert grace > compose_config_of(gateway).server.shutdown_grace_s, name


def test_prometheus_scrapes_every_gateway_and_loads_the_alerts() -> None:
    prometheus = service("prometheus")
    target = service_config_target(prometheus, "prometheus")
    assert f"--config.file={target}" in prometheus["command"]
    config = compose_config_content("prometheus")
    jobs = config["scrape_configs"]
    gateway_jobs = [job for job in jobs if job["job_name"] == "bedrock-gateway"]
    assert len(gateway_jobs) == 1
    job = gateway_jobs[0]
    assert job.get("metrics_path", "/metrics") in real_paths()
    assert job.get("scheme", "http") == "http"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {
        f"{name}:{compose_config_of(svc).server.port}" for name, svc in gateway_services().items()
    }
    assert all(svc.get("deploy", {}).get("replicas", 1) == 1 for svc in gateway_services().values())
    # Every rule file Prometheus loads is mounted from deploy/prometheus/alerts.yml.
    mounts = {target: (ROOT / source).resolve() for source, target, _ in bind_mounts(prometheus)}
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert mounts.get(rule_file) == ALERTS.resolve(), rule_file


def test_grafana_reads_prometheus_and_provisions_the_dashboard() -> None:
    grafana = service("grafana")
    datasources = compose_config_content("grafana-datasource")["datasources"]
    assert service_config_target(grafana, "grafana-datasource").startswith(
        "/etc/grafana/provisioning/datasources/"
    )
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    url = urlsplit(prometheus["url"])
    assert url.hostname == "prometheus"
    assert url.port in {container for _, _, container in published(service("prometheus"))}
    providers = compose_config_content("grafana-dashboards")["providers"]
    assert service_config_target(grafana, "grafana-dashboards").startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    folders = {PurePosixPath(p["options"]["path"]) for p in providers if p["type"] == "file"}
    mounts = {
        PurePosixPath(target): (ROOT / source).resolve()
        for source, target, _ in bind_mounts(grafana)
    }
    dashboards = [target for target, source in mounts.items() if source == DASHBOARD.resolve()]
    assert len(dashboards) == 1
    assert dashboards[0].parent in folders, "the dashboard is mounted where the provider reads"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``"datasource": {...}`` object in a dashboard, its panels' and targets' included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_the_dashboard_reads_the_provisioned_data_source() -> None:
    (source,) = compose_config_content("grafana-datasource")["datasources"]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {
        v["name"]: v
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "datasource"
    }
    refs = list(datasource_refs(dashboard))
    assert refs, "the panels name their data source"
    for ref in refs:
        assert ref.get("type") == source["type"], ref
        uid = ref.get("uid", "")
        variable = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
        if variable:  # a data source variable: it offers the data sources of its type
            name = variable.group(1) or variable.group(2)
            assert variables[name]["query"] == source["type"], name
        else:
            assert uid == source["uid"], ref


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker binary")
def test_docker_compose_config_accepts_the_file() -> None:
    plugin = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if plugin.returncode != 0:
        pytest.skip(f"docker has no compose plugin: {plugin.stderr.strip()[:200]}")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ---- deploy/kubernetes -----------------------------------------------------------------------

ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"


def test_every_manifest_parses() -> None:
    files = k8s_files()
    assert files
    for path in files:
        documents = list(k8s_documents(path))
        assert documents, f"{path.name} is empty"
        for document in documents:
            assert document.get("apiVersion"), path.name
            assert document.get("kind"), path.name
            if document["kind"] != "Kustomization":
                assert document["metadata"]["name"], path.name


def test_kustomizations_list_every_manifest_but_the_secret_template() -> None:
    for directory in (BASE, OPERATOR):
        resources = kustomization(directory)["resources"]
        assert len(resources) == len(set(resources)), "a resource is listed twice"
        on_disk = {p.name for p in directory.glob("*.y*ml")} - {"kustomization.yaml"}
        assert {r for r in resources if (directory / r).is_file()} == on_disk - {SECRET_TEMPLATE}
    assert SECRET_TEMPLATE not in kustomization(BASE)["resources"], (
        "applying placeholders would overwrite real secrets"
    )
    assert (BASE / SECRET_TEMPLATE).is_file()
    assert kustomization(OPERATOR)["resources"][0] == "../base", "the overlay adds to the base"
    assert {p.parent for p in k8s_files()} == {BASE, OPERATOR}, "a manifest outside both"


def test_the_overlay_adds_only_the_operators_objects() -> None:
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    base = {key(d) for d in rendered(BASE)}
    overlay = {key(d) for d in rendered(OPERATOR)}
    assert overlay - base == {(kind, "bedrock-gateway") for kind in OPERATOR_KINDS}
    assert base <= overlay
    assert not {d["kind"] for d in rendered(BASE)} & OPERATOR_KINDS, (
        "the base must apply to clusters without the Operator's CRDs"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to compare with")
def test_the_renderer_agrees_with_kubectl_kustomize() -> None:
    # kubectl's built-in kustomize renders offline; where it is installed it checks the
    # renderer the other tests read the manifests through.
    for directory in (BASE, OPERATOR):
        result = subprocess.run(
            ["kubectl", "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        theirs = list(yaml.safe_load_all(result.stdout))
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(theirs, key=key) == sorted(rendered(directory), key=key), directory.name


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_passes_kubernetes_validate(version: str) -> None:
    documents = [
        *rendered(OPERATOR),
        *k8s_documents(BASE / SECRET_TEMPLATE),
    ]
    validated = set()
    for document in documents:
        if document["kind"] in OPERATOR_KINDS:
            continue  # custom resources: checked against the Operator's CRDs below
        # strict: an unknown or misspelt field fails too.
        kubernetes_validate.validate(document, version, strict=True)
        validated.add(document["kind"])
    assert validated >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }


def test_kubernetes_validate_refuses_a_misspelt_field() -> None:
    # The validation above is real: a typo in a probe is caught.
    deployment = copy.deepcopy(manifest("Deployment"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_manifests_share_the_kustomization_namespace() -> None:
    namespace = kustomization(BASE)["namespace"]
    assert kustomization(OPERATOR)["namespace"] == namespace
    assert manifest("Namespace")["metadata"]["name"] == namespace
    files = [BASE / SECRET_TEMPLATE, *(OPERATOR / r for r in kustomization(OPERATOR)["resources"])]
    files += [BASE / r for r in kustomization(BASE)["resources"]]
    for path in files:
        if path.is_dir():
            continue
        for document in k8s_documents(path):
            if document["kind"] != "Namespace":
                assert document["metadata"].get("namespace") == namespace, path.name


def test_configmap_config_is_valid() -> None:
    config = configmap_config()  # raises ConfigError when the gateway would refuse it
    assert config.server.host == "0.0.0.0"


def test_every_pod_shares_one_redis_limiter() -> None:
    # Several pods on the memory store would each enforce the whole quota by themselves.
    limiter = configmap_config().limiter
    assert limiter.backend == "redis"
    assert limiter.redis_url_env, "the URL (with its password) is a secret"
    assert not limiter.redis_url
    assert limiter.redis_url_env in secret_template(SECRETS)["stringData"]
    hpa = manifest("HorizontalPodAutoscaler")["spec"]
    assert manifest("Deployment")["spec"]["replicas"] <= hpa["maxReplicas"]
    # Local shares of quota / replicas add up to the quota at the HPA's largest scale, and no
    # lower: limiter.replicas is the HPA's maxReplicas.
    assert limiter.replicas == hpa["maxReplicas"]


def test_every_key_lives_in_one_cluster_hash_slot() -> None:
    # Redis Cluster (ElastiCache cluster mode) runs a script only on keys of one slot; the
    # braces of {prefix} make the prefix the hash tag of every key.
    prefix = configmap_config().limiter.key_prefix
    assert prefix == "bgw"
    assert "{bgw}" in (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")


def test_deployment_command_and_config_mount() -> None:
    spec = manifest("Deployment")["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    args = build_parser().parse_args(container().get("args", dockerfile_cmd()))
    assert args.command == "serve"
    config_path = PurePosixPath(args.config)
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    assert str(config_path.parent) in mounts
    mount = mounts[str(config_path.parent)]
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
    items = {item["path"]: item["key"] for item in volume["configMap"].get("items", [])}
    assert items.get(config_path.name, config_path.name) == "gateway.yaml"
    config = configmap_config()
    port = args.port if args.port is not None else config.server.port
    assert named_port("http") == port
    image = container()["image"]
    assert image == "{newName}:{newTag}".format(**kustomization(BASE)["images"][0])


def test_probes_use_the_gateways_health_paths() -> None:
    paths = real_paths()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe in container(), f"the Deployment has no {probe}"
    ready, live = container()["readinessProbe"], container()["livenessProbe"]
    assert ready["httpGet"]["path"] in paths
    assert live["httpGet"]["path"] in paths
    # readiness must wait for start-up (credentials); liveness must not, or pods never start
    assert not_yet_started_status(ready["httpGet"]["path"]) == 503
    assert not_yet_started_status(live["httpGet"]["path"]) == 200
    startup = container()["startupProbe"]
    assert not_yet_started_status(startup["httpGet"]["path"]) == 200
    # The startup probe gives the pod this long to start before liveness takes over.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    port = configmap_config().server.port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert named_port(container()[probe]["httpGet"]["port"]) == port, probe


def test_prestop_and_grace_period_match_the_drain() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 0 < pre_stop <= 15
    config = configmap_config()
    drain = pre_stop + config.server.shutdown_grace_s + SERVER_TAIL_S
    grace = pod["terminationGracePeriodSeconds"]
    # Longer than the preStop pause plus the drain and the server's stop after it, or the
    # kubelet kills requests the gateway is still finishing; not much longer, or a stuck pod
    # lingers.
    assert drain < grace <= drain + 15
    assert config.queue.max_wait_s < config.server.shutdown_grace_s


def test_deployment_security_context() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid() != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False


def test_deployment_resources_are_sized_for_one_core() -> None:
    resources = container()["resources"]
    assert 0.5 <= cpu_cores(resources["requests"]["cpu"]) <= 1.0
    assert 1.0 <= cpu_cores(resources["limits"]["cpu"]) <= 2.0
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert configmap_config().server.workers == 1, "one process per pod: scale with replicas"


def test_prometheus_annotations_name_the_metrics_endpoint() -> None:
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in real_paths()
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == configmap_config().server.port
    pod = manifest("Deployment", OPERATOR)["spec"]["template"]["metadata"]
    assert "annotations" not in pod, "the overlay scrapes through the ServiceMonitor only"


def test_servicemonitor_scrapes_every_pod() -> None:
    monitor = manifest("ServiceMonitor", OPERATOR)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    # The fields of the CRD's schema used here (monitoring.coreos.com/v1 ServiceMonitor).
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    services = [d for d in rendered(OPERATOR) if d["kind"] == "Service"]
    selected = [
        s
        for s in services
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [manifest("Service", OPERATOR)], "it selects the gateway's Service"
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] in real_paths()
        assert endpoint.get("scheme", "http") == (
            "https" if configmap_config().server.tls else "http"
        )
        assert duration_s(endpoint["scrapeTimeout"]) < duration_s(endpoint["interval"])


def test_prometheusrule_holds_the_alerts_files_groups() -> None:
    rule = manifest("PrometheusRule", OPERATOR)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    alerts = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    assert set(alerts) == {"groups"}
    assert rule["spec"]["groups"] == alerts["groups"], (
        "regenerate it: .venv/bin/python deploy/kubernetes/prometheus-operator/rules.py"
    )
    # The structure the CRD's schema asks for (monitoring.coreos.com/v1 PrometheusRule).
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names are unique"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["rules"], group["name"]
        for item in group["rules"]:
            assert set(item) <= {
                "alert",
                "record",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }
            assert ("alert" in item) != ("record" in item), item
            assert isinstance(item["expr"], str | int)
            for duration in ("for", "keep_firing_for"):
                if duration in item:
                    duration_s(item[duration])
            for mapping in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(mapping, {}).values()), item


def test_secrets_come_from_the_secret_template_keys() -> None:
    refs = [s["secretRef"] for s in container()["envFrom"] if "secretRef" in s]
    assert [r["name"] for r in refs] == [SECRETS, AWS_SECRET]
    config = configmap_config()
    required = secret_template(SECRETS)
    assert not refs[0].get("optional"), "the gateway's own secrets must be there"
    assert set(required["stringData"]) == env_names(config) | {config.admin.secrets_key_env}
    aws = secret_template(AWS_SECRET)
    assert refs[1]["optional"] is True, "with IRSA / Pod Identity there are no static keys"
    assert set(aws["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(
        not any(vars(a).get(f) for f in ("profile", "role_arn")) for a in config.accounts.values()
    )
    for secret in (required, aws):
        assert secret["kind"] == "Secret"
        for name, value in secret["stringData"].items():
            assert "REPLACE" in value.upper(), f"{name}: the template holds placeholders only"


def test_admin_keys_are_digests_only() -> None:
    # The gateway keeps only SHA-256 digests of admin keys: nothing secret in the ConfigMap.
    admin = configmap_config().admin
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in admin.key_sha256)


def test_pods_spread_across_zones() -> None:
    pod_template = manifest("Deployment")["spec"]["template"]
    labels = pod_template["metadata"]["labels"]
    constraints = pod_template["spec"]["topologySpreadConstraints"]
    zone = [c for c in constraints if c["topologyKey"] == "topology.kubernetes.io/zone"]
    assert len(zone) == 1
    assert zone[0]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_service_pdb_and_hpa_select_the_deployment() -> None:
    deployment = manifest("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port = configmap_config().server.port

    svc = manifest("Service")["spec"]
    assert svc["type"] == "ClusterIP"
    assert svc["selector"].items() <= labels.items()
    assert [(p["port"], named_port(p["targetPort"])) for p in svc["ports"]] == [(8080, port)]

    pdb = manifest("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1, "one pod at a time, at any scale"
    assert "minAvailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= labels.items()

    hpa = manifest("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] - pdb["maxUnavailable"] >= 2, "two pods serve through a drain"
    assert hpa["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["maxReplicas"] >= hpa["minReplicas"]
    cpu = [m["resource"] for m in hpa["metrics"] if m.get("resource", {}).get("name") == "cpu"]
    assert cpu == [{"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}]


def network_ports(rules: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(named_port(p["port"]), p.get("protocol", "TCP")) for r in rules for p in r["ports"]}


def test_networkpolicy_opens_only_what_the_gateway_uses() -> None:
    policy = manifest("NetworkPolicy")["spec"]
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    port = configmap_config().server.port
    assert network_ports(policy["ingress"]) == {(port, "TCP")}, "only the gateway's port"
    assert all("ports" in rule for rule in policy["egress"]), "no egress rule opens every port"
    egress = network_ports(policy["egress"])
    template_url = secret_template(SECRETS)["stringData"][configmap_config().limiter.redis_url_env]
    redis = urlsplit(template_url.removeprefix("REPLACE-ME-"))
    assert redis.scheme == "rediss", "ElastiCache in transit: TLS"
    assert (redis.port, "TCP") in egress, "Redis"
    assert {(443, "TCP"), (53, "UDP"), (53, "TCP")} <= egress, "AWS endpoints and DNS"


def alert_jobs() -> set[str]:
    """The scrape job names the alert rules select (``job="…"``)."""
    text = ALERTS_FILE.read_text(encoding="utf-8")
    return set(re.findall(r'\bjob\s*=\s*"([^"]+)"', text))


def test_the_alerts_select_the_job_both_stacks_scrape_as() -> None:
    jobs = alert_jobs()
    assert jobs, "GatewayDown reads up{job=...}"
    # compose: the job name of the scrape config.
    scrape = compose_config_content("prometheus")["scrape_configs"]
    assert jobs <= {job["job_name"] for job in scrape}
    # Prometheus Operator: without jobLabel, the job is the name of the Service scraped.
    assert "jobLabel" not in manifest("ServiceMonitor", OPERATOR)["spec"]
    assert jobs == {manifest("Service", OPERATOR)["metadata"]["name"]}
