"""The Kubernetes manifests in deploy/kubernetes: valid against Kubernetes' schemas, consistent with one
another, and passing meshserve services only flags and settings they have.

Schemas come from the kubernetes-validate package (bundled, offline), in strict mode: a misspelt
field fails. The kustomization is rendered with `kubectl kustomize` when kubectl is installed.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshserve.tls import certs

from .helpers import DEPLOY, KUBERNETES, SERVICES, check_service, load_script, meshserve_module

# The oldest Kubernetes the manifests must apply to, and the newest the package knows.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
NAMESPACE = "meshserve"
make_tls = load_script(KUBERNETES / "make_tls.py")
healthcheck = load_script(DEPLOY / "healthcheck.py")


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = load_all()
KUSTOMIZATION = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] in kinds]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert found, f"no {kind} named {name!r}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any], *, init: bool = False) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers", [])) * init + list(spec["containers"])


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps and its own env list (plain values)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", f"x-{var['name'].lower()}")
    return env


def meshserve_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any], str, list[str]]]:
    """(workload, container, module, args) for every container running a meshserve service."""
    for workload in of_kind(*WORKLOADS):
        for container in containers(workload):
            found = meshserve_module([*container.get("command", []), *container.get("args", [])])
            if found:
                yield workload, container, *found


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workloads_selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    return [w for w in of_kind(*WORKLOADS) if labels_match(selector, w["spec"]["template"]["metadata"]["labels"])]


def test_the_kustomization_lists_every_manifest() -> None:
    assert sorted(KUSTOMIZATION["resources"]) == [p.name for p in manifest_files()]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    problems = []
    for path, doc in DOCS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            problems.append(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
    assert not problems, "\n".join(problems)
    assert {doc["kind"] for _, doc in DOCS} >= {
        "Namespace", "Deployment", "StatefulSet", "Service", "ConfigMap", "HorizontalPodAutoscaler",
        "NetworkPolicy", "PodDisruptionBudget", "Job",
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (which renders kustomizations) is not installed")
def test_the_kustomization_renders_to_valid_resources_with_generated_certificates(tmp_path: Path) -> None:
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree, ignore=shutil.ignore_patterns("tls"))
    make_tls.make(tree / "tls", NAMESPACE, "cluster.local")
    done = subprocess.run(["kubectl", "kustomize", str(tree)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    secrets = {doc["metadata"]["name"] for doc in rendered if doc["kind"] == "Secret"}
    for doc in rendered:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]
        if doc["kind"] in WORKLOADS:
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:  # generator names carry a hash; references must follow it
                    assert volume["secret"]["secretName"] in secrets
    assert len(secrets) == len(KUSTOMIZATION["secretGenerator"])
    assert "ca.key" not in done.stdout and "ca.key" not in str(KUSTOMIZATION)


def test_meshserve_containers_pass_real_flags_and_settings() -> None:
    problems, modules = [], set()
    for workload, container, module, args in meshserve_containers():
        modules.add(module)
        where = f"{workload['kind']}/{workload['metadata']['name']} container {container['name']}"
        problems += check_service(module, args, container_env(container), where)
    assert not problems, "\n".join(problems)
    assert modules == set(SERVICES)


def test_references_resolve() -> None:
    config_maps = {doc["metadata"]["name"] for doc in of_kind("ConfigMap")}
    secrets = {gen["name"] for gen in KUSTOMIZATION["secretGenerator"]}
    for workload in of_kind(*WORKLOADS):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in containers(workload, init=True):
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
            assert mounts <= {v["name"] for v in pod_spec(workload).get("volumes", [])} | set(claims)
    for service in of_kind("Service"):
        assert workloads_selected(service["spec"]["selector"]), f"Service {service['metadata']['name']} selects no pod"
    for stateful in of_kind("StatefulSet"):
        governing = named("Service", stateful["spec"]["serviceName"])
        assert governing["spec"].get("clusterIP") == "None", "a StatefulSet's Service must be headless"
    for hpa in of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        named(target["kind"], target["name"])
    for pdb in of_kind("PodDisruptionBudget"):
        assert workloads_selected(pdb["spec"]["selector"]["matchLabels"])


def test_containers_have_probes_and_resources() -> None:
    parser = healthcheck.build_parser()
    for workload in of_kind("Deployment", "StatefulSet"):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            if container["name"] == "registrar":  # serves nothing: it only writes to etcd
                continue
            ports = {p["containerPort"] for p in container["ports"]} | {p.get("name") for p in container["ports"]}
            for kind in ("readinessProbe", "livenessProbe"):
                probe = container[kind]
                command = probe.get("exec", {}).get("command", [])
                if command[:1] == ["meshserve-health"]:
                    args = parser.parse_args(command[1:])
                    assert int(args.address.rsplit(":", 1)[1]) in ports, where
                    mounts = {m["mountPath"] for m in container["volumeMounts"]}
                    assert str(args.tls_dir) in mounts, f"{where}: probe's --tls-dir is not mounted"
                elif "httpGet" in probe or "tcpSocket" in probe:
                    port = (probe.get("httpGet") or probe["tcpSocket"])["port"]
                    assert port in ports, where


def _cert_hosts(secret_name: str) -> tuple[str, ...]:
    hosts: dict[str, tuple[str, ...]] = make_tls.service_hosts(NAMESPACE, "cluster.local")
    return hosts[secret_name.removeprefix("tls-")]


def _tls_secret(workload: dict[str, Any]) -> str:
    names = [v["secret"]["secretName"] for v in pod_spec(workload)["volumes"] if v["name"] == "tls"]
    assert names, f"{workload['metadata']['name']} mounts no TLS Secret"
    return str(names[0])


def _covered(host: str, hosts: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(host, h) and host.count(".") == h.count(".") for h in hosts)


def test_certificates_cover_every_name_services_are_dialled_at() -> None:
    """TLS checks the name a client dials: the Service names in settings, and each runtime pod's own name."""
    dialled: list[tuple[str, str]] = []  # (host, Service whose pods answer there)
    for config in of_kind("ConfigMap"):
        for value in config.get("data", {}).values():
            for scheme in ("https://", "tls://", "postgresql://audit@"):
                if value.startswith(scheme):
                    host = value.removeprefix(scheme).split(":")[0]
                    dialled.append((host, host))
    for workload, container, _, args in meshserve_containers():
        for arg in args:  # a runtime listens on (and registers) its pod's name: $(POD_FQDN)
            if arg.startswith(("--host=$(POD_FQDN)", "--triton-address=$(POD_FQDN)")):
                governing = workload["spec"]["serviceName"]
                dialled.append((f"{workload['metadata']['name']}-0.{governing}.{NAMESPACE}.svc.cluster.local",
                                governing))
                fqdn = next(e["value"] for e in container["env"] if e["name"] == "POD_FQDN")
                assert fqdn == f"$(POD_NAME).{governing}.$(POD_NAMESPACE).svc.cluster.local"
    assert {"etcd", "nats", "postgres"} <= {host for host, _ in dialled}
    for host, service_name in dialled:
        for workload in workloads_selected(named("Service", service_name)["spec"]["selector"]):
            assert _covered(host, _cert_hosts(_tls_secret(workload))), f"{host} is not in {_tls_secret(workload)}"
    for member in ("etcd-2.etcd-headless", "nats-1.nats-headless"):  # peers dial each other by name
        assert _covered(member, _cert_hosts("tls-" + member.split("-")[0]))


def test_the_router_is_the_only_door_to_runtimes() -> None:
    policies = of_kind("NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies), "no default deny"
    runtimes = [w for w, _, module, _ in meshserve_containers() if module.startswith("meshserve.runtimes.")]
    assert {w["metadata"]["name"] for w in runtimes} == {"runtime-python", "runtime-r", "triton"}
    for workload in runtimes:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selecting = [p for p in policies if labels_match(p["spec"]["podSelector"].get("matchLabels", {}), labels)
                     and p["spec"]["podSelector"]]
        assert selecting, f"no NetworkPolicy selects {workload['metadata']['name']}"
        for policy in selecting:
            for rule in policy["spec"]["ingress"]:
                assert rule.get("from"), f"{policy['metadata']['name']} lets anyone reach {labels}"
                for peer in rule["from"]:
                    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "router"}}}


def test_scaling_and_the_gpu() -> None:
    router_hpa = named("HorizontalPodAutoscaler", "router")["spec"]
    pods_metric = next(m for m in router_hpa["metrics"] if m["type"] == "Pods")
    assert pods_metric["pods"]["metric"]["name"] == "meshserve_router_inflight_requests"
    assert router_hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "router"}
    python_hpa = named("HorizontalPodAutoscaler", "runtime-python")["spec"]
    assert python_hpa["scaleTargetRef"]["name"] == "runtime-python"
    assert named("Deployment", "router")["spec"]["replicas"] >= 2
    triton = named("StatefulSet", "triton")
    server, registrar = containers(triton)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert meshserve_module([*registrar["command"], *registrar["args"]]) is not None
    for name, size in (("etcd", 3), ("nats", 3)):
        assert named("StatefulSet", name)["spec"]["replicas"] == size
    etcd_args = " ".join(containers(named("StatefulSet", "etcd"))[0]["command"])
    assert all(f"etcd-{i}=https://etcd-{i}.etcd-headless" in etcd_args for i in range(3))
    nats_conf = named("ConfigMap", "nats-config")["data"]["nats.conf"]
    assert all(f"nats-{i}.nats-headless:6222" in nats_conf for i in range(3))


# -- the probe itself -----------------------------------------------------------------


@pytest.fixture
def health_server(tmp_path: Path) -> Iterator[tuple[int, health.HealthServicer, Path]]:
    """A gRPC health server on loopback with mutual TLS and a wildcard certificate, as a runtime's."""
    certs.init_ca(tmp_path)
    issued = certs.issue(tmp_path, "runtime", ("*.runtime.test",))
    tls_dir = tmp_path / "probe"
    tls_dir.mkdir()
    for source, target in ((tmp_path / "ca.crt", "ca.crt"), (issued.cert, "tls.crt"), (issued.key, "tls.key")):
        shutil.copy(source, tls_dir / target)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.cert.read_bytes())],
                                              root_certificates=(tmp_path / "ca.crt").read_bytes(),
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield port, servicer, tls_dir
    threading.Thread(target=server.stop, args=(0,)).start()


def test_meshserve_health_answers_for_a_tls_runtime(health_server: tuple[int, health.HealthServicer, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port, servicer, tls_dir = health_server
    # The runtime's name resolves to loopback here, as to the pod's address in a pod.
    monkeypatch.setenv("POD_ADDRESS", f"127.0.0.1:{port}")
    real_secure_channel = grpc.secure_channel

    def probe(tls: bool, server_name: str = "rt-0.runtime.test") -> int:
        """meshserve-health, dialling loopback but checking the certificate for the name a pod would dial."""
        def secure_channel(target: str, credentials: grpc.ChannelCredentials, options: Any = None) -> grpc.Channel:
            return real_secure_channel(target, credentials, [("grpc.ssl_target_name_override", server_name)])

        monkeypatch.setattr(grpc, "secure_channel", secure_channel)
        return int(healthcheck.main(["$POD_ADDRESS", "--timeout=2", *(["--tls-dir", str(tls_dir)] if tls else [])]))

    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(tls=True) == 0
    assert probe(tls=True, server_name="elsewhere.test") == 1  # not a name the certificate holds
    assert probe(tls=False) == 1  # plain text: refused
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe(tls=True) == 1
