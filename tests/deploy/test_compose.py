"""compose/docker-compose.yml and compose/Dockerfile, checked without a Docker engine.

There is no engine here (and no `docker compose` plugin), and no package reachable from
this machine ships the compose-spec JSON schema, so the file is checked structurally:
what Compose itself would refuse (a dependency or volume that does not exist, a service
with nothing to run), and that every meshserve service gets only flags and settings it has.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .helpers import COMPOSE_FILE, DEPLOY, ROOT, SERVICES, check_service, load_script, meshserve_module

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
DOCKERFILE = COMPOSE_FILE.parent / "Dockerfile"
healthcheck = load_script(DEPLOY / "healthcheck.py")


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with the defaults (the environment here is not the deployment's)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = COMPOSE["services"]
    return found


def test_every_service_has_something_to_run_and_known_dependencies() -> None:
    names = set(services())
    assert {"etcd", "nats", "postgres", "audit", "router", "runtime-r", "triton", "triton-registrar"} <= names
    assert any(n.startswith("runtime-python") for n in names)
    for name, service in services().items():
        assert "image" in service or "build" in service, name
        depends = service.get("depends_on", {})
        assert set(depends) <= names, f"{name} depends on {set(depends) - names}"
        for dependency, condition in (depends.items() if isinstance(depends, dict) else []):
            assert condition["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services()[dependency], f"{name} waits for {dependency}'s health check"
        assert set(service.get("networks", [])) <= set(COMPOSE.get("networks", {})), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], f"{name}: volume {source} is not declared"
            else:
                assert (COMPOSE_FILE.parent / source).resolve().exists(), f"{name}: {source} does not exist"
        for profile_dependency in depends:
            if "profiles" in services()[profile_dependency]:
                assert services()[profile_dependency]["profiles"] == service.get("profiles"), name


def test_meshserve_services_pass_real_flags_and_settings() -> None:
    problems, modules = [], set()
    for name, service in services().items():
        found = meshserve_module(service.get("command", []))
        if not found:
            continue
        module, args = found
        modules.add(module)
        env = {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}
        problems += check_service(module, [interpolate(a) for a in args], env, f"compose service {name}")
    assert not problems, "\n".join(problems)
    assert modules == set(SERVICES)


def test_runtimes_listen_on_the_name_the_router_reaches_them_at() -> None:
    """A runtime registers the address it listens on: its service name, resolvable on the network."""
    for name, service in services().items():
        found = meshserve_module(service.get("command", []))
        if found and found[0] in {"meshserve.runtimes.python", "meshserve.runtimes.r"}:
            assert f"--host={name}" in found[1], name
        if found and found[0] == "meshserve.runtimes.triton":
            assert "--triton-address=triton:8001" in found[1]
            assert any(a.startswith("--etcd-endpoint=") for a in found[1])


def test_triton_reserves_a_gpu_and_publishing_stays_on_loopback_by_default() -> None:
    devices = services()["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name, service in services().items():
        for port in service.get("ports", []):
            assert interpolate(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_health_checks_use_real_commands() -> None:
    parser = healthcheck.build_parser()
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["meshserve-health"]:
            args = parser.parse_args(test[2:])
            assert args.address.split(":")[0] in {"127.0.0.1", name}, name


def test_the_dockerfile_builds_the_targets_compose_names_from_files_that_exist() -> None:
    text = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE))
    for name, service in services().items():
        if "build" in service:
            assert service["build"]["target"] in stages, name
            assert (COMPOSE_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: no such file"
    ignored = (COMPOSE_FILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and "deploy/kubernetes/tls" in ignored


def test_the_image_runs_the_health_check_it_copies() -> None:
    assert "COPY deploy/healthcheck.py /usr/local/bin/meshserve-health" in DOCKERFILE.read_text()
    assert Path(DEPLOY / "healthcheck.py").read_text().startswith("#!/usr/bin/env python3")
