"""The local mesh: etcd, NATS, the audit service, the router, the Python and R runtimes and Triton.

``meshserve up`` runs one in the foreground; test fixtures use the same class::

    with LocalMesh(MeshConfig(model_repository=repo, router_port=0, etcd_port=0)) as mesh:
        call(mesh.router_address)

Children are started in order, each awaited until it serves (meshserve services write
an announce file), and stopped by PID in reverse order, also when a start fails half way.
Each can be started again on its own (:meth:`LocalMesh.restart`, what ``meshserve up``'s
supervisor does when one dies): on the same ports where callers rely on them (etcd, NATS,
the audit service, the routers, Triton) and with the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from meshserve import pipelines
from meshserve.auth import mesh as mesh_credential
from meshserve.errors import REFUSALS, MeshError, Unauthenticated
from meshserve.local import triton
from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.local.process import ManagedProcess, Service
from meshserve.registry import etcd_auth
from meshserve.registry.etcd import connect
from meshserve.registry.etcd_token import EtcdCredentials
from meshserve.secretfiles import read_or_make
from meshserve.tls import MeshTls, certs, from_paths

log = logging.getLogger(__name__)

DEFAULT_ROUTER_PORT = 8001
DEFAULT_AUDIT_PORT = 8003
DEFAULT_ROUTER_METRICS_PORT = 8002
DEFAULT_ETCD_PORT = 2379
DEFAULT_NATS_PORT = 4222
# Certificates a TLS mesh issues: one per service, and "operator" for commands run on this host.
TLS_NAMES = ("etcd", "nats", "audit", "router", "runtime", "r-runtime", "triton", "triton-registrar", "operator")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class MeshConfig:
    """Where and how the local mesh runs."""

    model_repository: Path
    host: str = "127.0.0.1"
    router_port: int = DEFAULT_ROUTER_PORT
    # Routers side by side on the same registry (stateless: any of them serves any call),
    # on consecutive ports from router_port (each on a free port when router_port is 0).
    routers: int = 1
    # None: the usual port (2379, 4222) when free, else any free port. 0: any free port.
    etcd_port: int | None = None
    nats_port: int | None = None
    runtime_port: int = 0
    audit_port: int = DEFAULT_AUDIT_PORT
    # The first router's Prometheus port (the others take free ports). None: 8002 when the
    # router port is fixed and 8002 is free and taken by no router or audit port, else free.
    router_metrics_port: int | None = None
    # Run NATS and the audit service, and have the router emit call events.
    audit: bool = True
    # Run the R runtime on the same model repository (when Rscript is installed).
    r_runtime: bool = True
    # Run NVIDIA Triton on this model repository (Triton's own layout), with its registrar,
    # when the tritonserver binary is installed. None: no Triton.
    triton_repository: Path | None = None
    # Pipeline files applied once every runtime is up (those whose models are missing are
    # skipped with a warning).
    pipelines: tuple[Path, ...] = ()
    # Dev mode: callers without a key may infer and read metadata of every model.
    dev_mode: bool = True
    # TLS on every link: a mesh CA and a certificate per service in <data_dir>/tls, etcd and
    # NATS requiring mesh certificates, runtimes taking calls from mesh services only.
    tls: bool = False
    # Where the audit service stores the trail; default: SQLite in the data directory.
    audit_database: str | None = None
    # Tracing (docs/tracing.md): every meshserve service samples this share of the calls that
    # start with it (0: off) and exports spans to the OTLP/gRPC collector at otlp_endpoint,
    # at most trace_export_s after they end.
    trace_sample_ratio: float = 0.0
    otlp_endpoint: str = ""
    trace_export_s: float = 1.0
    # Triton's own OpenTelemetry tracing: the OTLP/HTTP URL its spans go to ("" = Triton does
    # not trace). It joins the trace of each call the router sends it.
    triton_trace_url: str = ""
    # None: a temporary directory, removed on stop. Otherwise kept.
    data_dir: Path | None = None
    start_timeout_s: float = 60.0
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)


class Child(Protocol):
    """What the mesh starts, restarts and stops: a server of ours (etcd, NATS, Triton) or a :class:`Service`."""

    @property
    def process(self) -> ManagedProcess | None: ...

    def start(self, timeout: float) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Step:
    """One start-up step: a label for progress displays and the call that does it."""

    label: str
    run: Callable[[], str]


class LocalMesh:
    """The mesh's processes, started and stopped together."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self._tmp: Path | None = None
        self.data_dir = config.data_dir or Path(".")
        self.etcd: EtcdServer | None = None
        self.nats: NatsServer | None = None
        self.triton: triton.TritonServer | None = None
        # This process's own identity with TLS on (it applies pipelines through the router).
        self.mesh_tls: MeshTls | None = None
        # name -> child, in start order
        self._children: dict[str, Child] = {}
        # Stops every child started, in reverse order (also those that failed to start).
        self._stack = contextlib.ExitStack()
        self.addresses: dict[str, str] = {}
        # name -> host:port of the service's Prometheus /metrics, for those that serve one
        self.metrics_addresses: dict[str, str] = {}
        self.runtime_id = ""

    # -- addresses -------------------------------------------------------------

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint if self.etcd is not None else ""

    @property
    def nats_url(self) -> str:
        return self.nats.url if self.nats is not None else ""

    @property
    def router_address(self) -> str:
        return self.addresses.get("router", "")

    @property
    def router_addresses(self) -> list[str]:
        """Every router's address, the first (:attr:`router_address`) first."""
        return [self.addresses[name] for name in self.router_names() if name in self.addresses]

    def router_names(self) -> list[str]:
        """The routers' process names: ``router``, then ``router-2``, ``router-3``..."""
        return ["router", *(f"router-{i}" for i in range(2, max(1, self.config.routers) + 1))]

    @property
    def runtime_address(self) -> str:
        return self.addresses.get("runtime", "")

    @property
    def audit_address(self) -> str:
        return self.addresses.get("audit", "")

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def pids(self) -> dict[str, int]:
        """PIDs of the children that were started, by name, in start order (the last start's)."""
        return {name: process.pid for name, process in self.processes().items() if process.proc is not None}

    def processes(self) -> dict[str, ManagedProcess]:
        """The current process of each child started, by name, in start order."""
        return {name: child.process for name, child in self._children.items() if child.process is not None}

    # -- start -----------------------------------------------------------------

    def steps(self) -> list[Step]:
        """The start-up steps in order; run each (or call :meth:`start`)."""
        steps = [Step("etcd", self._start_etcd)]
        if self.config.audit:
            steps += [Step("NATS JetStream", self._start_nats), Step("audit service", self._start_audit)]
        steps += [Step(name.replace("-", " "), functools.partial(self._start_router, name))
                  for name in self.router_names()]
        steps.append(Step("python runtime", self._start_runtime))
        if self.config.r_runtime and shutil.which("Rscript"):
            steps.append(Step("R runtime", self._start_r_runtime))
        elif self.config.r_runtime:
            log.warning("Rscript not found: no R runtime (install Debian's r-base-core and r-cran-randomforest)")
        if self.config.triton_repository is not None and triton.available():
            steps += [Step("Triton", self._start_triton), Step("Triton registrar", self._start_triton_registrar)]
        elif self.config.triton_repository is not None:
            log.warning("no Triton: the tritonserver binary or Debian's python3-numpy is missing (%s)",
                        triton.INSTALL_HINT)
        if self.config.pipelines:
            steps.append(Step("pipelines", self._apply_pipelines))
        return steps

    def start(self) -> None:
        """Start every child; on failure stop what was started and re-raise."""
        try:
            for step in self.steps():
                step.run()
        except BaseException:
            self.stop()
            raise

    def _prepare_dir(self) -> None:
        if self.config.data_dir is None:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="meshserve-"))
            self.data_dir = self._tmp
        else:
            self.data_dir = self.config.data_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.config.tls:
            self._make_certificates()

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def _make_certificates(self) -> None:
        """The mesh CA (kept when the data directory already has one) and a certificate per service."""
        if not (self.tls_dir / "ca.crt").exists():
            certs.init_ca(self.tls_dir)
        for name in TLS_NAMES:
            certs.issue(self.tls_dir, name, (self.config.host, *certs.DEFAULT_HOSTS))
        # This process calls the router too (pipelines); it does so as "operator".
        self.mesh_tls = from_paths(*self.tls_files("operator"))

    def tls_files(self, name: str) -> tuple[Path, Path, Path]:
        """(CA, certificate, key) of the mesh service ``name``."""
        return self.tls_dir / "ca.crt", self.tls_dir / f"{name}.crt", self.tls_dir / f"{name}.key"

    @property
    def secrets_dir(self) -> Path:
        """The mesh's secrets (outside dev mode): the mesh credential, etcd passwords."""
        return self.data_dir / "secrets"

    @property
    def mesh_credential_file(self) -> Path | None:
        """The mesh credential's file that routers present and runtimes check (None in dev mode)."""
        return None if self.config.dev_mode else self.secrets_dir / "mesh-credential"

    def _mesh_credential(self) -> str | None:
        """The mesh credential, made on first use (kept with a kept data directory)."""
        path = self.mesh_credential_file
        if path is None:
            return None
        return mesh_credential.read(path) if path.exists() else mesh_credential.write(path)

    def mesh_flags(self, *, registrar: bool = False) -> list[str]:
        """How a router, a runtime or Triton's registrar takes part in the check of who calls runtimes."""
        if self.config.dev_mode:
            return [] if registrar else ["--dev-mode"]
        self._mesh_credential()
        return ["--mesh-credential-file", str(self.mesh_credential_file)]

    def _tls_flags(self, name: str) -> list[str]:
        if not self.config.tls:
            return []
        ca, cert, key = self.tls_files(name)
        return ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]

    def _trace_flags(self) -> list[str]:
        config = self.config
        if config.trace_sample_ratio <= 0:
            return []
        return ["--trace-sample-ratio", str(config.trace_sample_ratio), "--otlp-endpoint", config.otlp_endpoint,
                "--trace-export-s", str(config.trace_export_s)]

    def _port(self, wanted: int | None, usual: int) -> int:
        if wanted is None:
            return usual if port_is_free(self.config.host, usual) else 0
        return wanted

    def _start_etcd(self) -> str:
        self._prepare_dir()
        etcd = EtcdServer(self.data_dir, self.log_dir / "etcd.log", host=self.config.host,
                          tls_files=self.tls_files("etcd") if self.config.tls else None,
                          signed_tokens=not self.config.dev_mode)
        etcd.port = self._port(self.config.etcd_port, DEFAULT_ETCD_PORT)
        self.etcd = etcd
        self._run("etcd", etcd)
        if not self.config.dev_mode:
            asyncio.run(self._secure_etcd())
        return etcd.endpoint

    # -- etcd's users (outside dev mode; see meshserve.registry.etcd_auth) -------------

    def runtime_ids(self) -> dict[str, str]:
        """The registry id of each runtime this mesh starts, by process name (fixed outside dev mode,
        where each runtime's etcd user may write that runtime's records only)."""
        if self.config.dev_mode:
            return {}
        suffix = f"{socket.gethostname()}-{os.getpid()}"
        return {"runtime": f"python-{suffix}", "r-runtime": f"r-{suffix}", "triton-registrar": f"triton-{suffix}"}

    def _etcd_users(self) -> tuple[str, ...]:
        return (etcd_auth.OPERATOR, etcd_auth.ROUTER, etcd_auth.AUDIT, *self.runtime_ids())

    def _password_file(self, user: str) -> Path:
        return self.secrets_dir / f"etcd-{user}.password"

    def _password(self, user: str) -> str:
        """The etcd password of ``user`` (made on first use, kept with a kept data directory)."""
        return read_or_make(self._password_file(user))

    def etcd_credentials(self, user: str) -> EtcdCredentials | None:
        """How ``user`` connects to etcd: a password in plain text; under TLS its certificate names it."""
        if self.config.dev_mode or self.config.tls:
            return None
        return EtcdCredentials(user, self._password(user))

    def _etcd_flags(self, user: str) -> list[str]:
        if self.etcd_credentials(user) is None:
            return []
        return ["--etcd-user", user, "--etcd-password-file", str(self._password_file(user))]

    def operator_env(self) -> dict[str, str]:
        """Environment for meshserve commands run against this mesh as its operator (etcd's user)."""
        if self.etcd_credentials(etcd_auth.OPERATOR) is None:
            return {}
        return {"MESHSERVE_ETCD_USER": etcd_auth.OPERATOR,
                "MESHSERVE_ETCD_PASSWORD_FILE": str(self._password_file(etcd_auth.OPERATOR))}

    async def _secure_etcd(self) -> None:
        """Turn etcd's authentication on with one user per component (done already on a kept data directory)."""
        root = EtcdCredentials(etcd_auth.ROOT_USER, self._password(etcd_auth.ROOT_USER))
        try:
            client = await connect(self.etcd_endpoint, mesh_tls=self.mesh_tls, wait=self.config.start_timeout_s)
        except Unauthenticated:  # on already
            client = await connect(self.etcd_endpoint, mesh_tls=self.mesh_tls, wait=self.config.start_timeout_s,
                                   credentials=root)
        ids = self.runtime_ids()
        users = [etcd_auth.User(name, None if self.config.tls else self._password(name),
                                f"{etcd_auth.SHARED_RUNTIME}:{ids[name]}" if name in ids else name)
                 for name in self._etcd_users()]
        try:
            await etcd_auth.setup(client, users, root_password=root.password)
        finally:
            await client.close()

    def _start_nats(self) -> str:
        # The broker only carries the audit trail here: inference on this host comes first.
        nats = NatsServer(self.data_dir, self.log_dir / "nats.log", host=self.config.host,
                          port=self._port(self.config.nats_port, DEFAULT_NATS_PORT), nice=10,
                          tls_files=self.tls_files("nats") if self.config.tls else None)
        self.nats = nats
        self._run("nats", nats)
        return nats.url

    def _run(self, name: str, child: Child) -> None:
        """Start ``child``; :meth:`stop` stops it (registered first: also when it fails to start)."""
        self._stack.callback(self._stop_child, name, child)
        child.start(timeout=self.config.start_timeout_s)
        self._children[name] = child

    @staticmethod
    def _stop_child(name: str, child: Child) -> None:
        try:
            child.stop()
        except Exception:  # keep stopping the others
            log.exception("stopping %s failed", name)

    def _service(self, name: str, module: str, args: list[str], cert: str = "") -> Service:
        """Start a meshserve service and wait for its announce file.

        Under TLS it presents certificate ``cert`` (default ``name``); with etcd's authentication
        on it connects to etcd as the user of that name.
        """
        user = cert or name
        runtime_id = self.runtime_ids().get(name)
        service = Service(
            name, module, ["--host", self.config.host, "--log-level", self.config.log_level,
                           *self._tls_flags(user), *self._trace_flags(), *self._etcd_flags(user),
                           *(["--runtime-id", runtime_id] if runtime_id else []),
                           *args], self.data_dir,
            env=self.config.extra_env or None, log_path=self.log_dir / f"{name}.log",
        )
        self._run(name, service)
        self._announced(name, service)
        return service

    def _announced(self, name: str, service: Service) -> None:
        """Take the addresses (and runtime id) a service announced."""
        info = service.info
        self.addresses[name] = str(info["address"])
        if info.get("metrics_address"):
            self.metrics_addresses[name] = str(info["metrics_address"])
        if name == "runtime":
            self.runtime_id = str(info.get("runtime_id", ""))

    @staticmethod
    def _pin_ports(service: Service) -> None:
        """Restart ``service`` on the ports it got (callers were told them): ``--port 0`` is not free twice."""
        service.pin("--port", str(service.info["address"]).rpartition(":")[2])
        if service.info.get("metrics_address"):
            service.pin("--metrics-port", str(service.info["metrics_address"]).rpartition(":")[2])

    def _start_audit(self) -> str:
        database = self.config.audit_database or f"sqlite:///{self.data_dir / 'audit.db'}"
        dev = ["--dev-mode"] if self.config.dev_mode else []
        service = self._service("audit", "meshserve.services.audit",
                                ["--port", str(self.config.audit_port), "--nats-url", self.nats_url,
                                 "--database", database, "--etcd-endpoint", self.etcd_endpoint, *dev])
        self._pin_ports(service)
        return self.audit_address

    def _start_router(self, name: str = "router") -> str:
        """Start the router ``name`` (see :meth:`router_names`); every router uses the router certificate."""
        index = self.router_names().index(name)
        port = self.config.router_port + index if self.config.router_port else 0
        audit = ["--nats-url", self.nats_url, "--data-dir", str(self.data_dir / name)] if self.nats else []
        service = self._service(name, "meshserve.services.router",
                                ["--port", str(port), "--metrics-port", str(self._router_metrics_port(index)),
                                 "--etcd-endpoint", self.etcd_endpoint, *audit, *self.mesh_flags()], cert="router")
        self._pin_ports(service)
        return self.addresses[name]

    def _router_metrics_port(self, index: int) -> int:
        """The metrics port of the router at ``index`` (see MeshConfig.router_metrics_port); 0: a free one."""
        wanted = self.config.router_metrics_port
        if index:
            return 0
        if wanted is not None:
            return wanted
        config = self.config
        taken = {config.router_port + i for i in range(config.routers)} | {config.audit_port}
        usual = DEFAULT_ROUTER_METRICS_PORT
        return usual if config.router_port and usual not in taken and port_is_free(config.host, usual) else 0

    def _start_runtime(self) -> str:
        # On a free port unless told one: a restarted runtime registers its new address.
        self._service("runtime", "meshserve.runtimes.python", [
            "--port", str(self.config.runtime_port), "--etcd-endpoint", self.etcd_endpoint, *self.mesh_flags(),
            "--model-repository", str(self.config.model_repository.resolve()),
        ])
        return self.runtime_address

    def _start_r_runtime(self) -> str:
        self._service("r-runtime", "meshserve.runtimes.r", [
            "--etcd-endpoint", self.etcd_endpoint, *self.mesh_flags(),
            "--model-repository", str(self.config.model_repository.resolve()),
            "--worker-log", str(self.log_dir / "r-workers.log"),
        ])
        return self.addresses["r-runtime"]

    def _start_triton(self) -> str:
        assert self.config.triton_repository is not None
        server = triton.TritonServer(self.config.triton_repository.resolve(), self.data_dir / "triton",
                                     self.log_dir / "triton.log", host=self.config.host,
                                     tls_files=self.tls_files("triton") if self.config.tls else None,
                                     credential=self._mesh_credential(),
                                     extra_args=triton.trace_args(self.config.triton_trace_url,
                                                                  export_s=self.config.trace_export_s))
        self.triton = server
        self._run("triton", server)  # restarted on the same ports: its registrar follows that address
        self.addresses["triton"] = server.address
        return server.address

    def _start_triton_registrar(self) -> str:
        assert self.triton is not None
        self._service("triton-registrar", "meshserve.runtimes.triton", [
            "--etcd-endpoint", self.etcd_endpoint, "--triton-address", self.triton.address,
            *self.mesh_flags(registrar=True),
        ])
        return self.triton.address

    def _apply_pipelines(self) -> str:
        """Apply each pipeline file through the router once its step models are ready (give up on one after 15 s).

        The router applies them for a caller without a key: in dev mode it lets such callers
        change pipelines; without dev mode it refuses, and the pipelines are not applied.
        """
        applied = []
        for path in self.config.pipelines:
            pipeline = pipelines.load(path)
            # The runtimes announce themselves with their models loaded: a short wait suffices.
            deadline = time.monotonic() + min(self.config.start_timeout_s, 15.0)
            while True:
                try:
                    asyncio.run(pipelines.apply(pipeline, router=self.router_address, mesh_tls=self.mesh_tls))
                    applied.append(pipeline.name)
                    break
                except MeshError as e:
                    if e.code in REFUSALS or time.monotonic() > deadline:
                        log.warning("pipeline %s not applied: %s", path, e.message)
                        break
                    time.sleep(0.2)
        return f"the router ({', '.join(applied) or 'none applied'})"

    # -- stop ------------------------------------------------------------------

    def alive(self) -> dict[str, bool]:
        """Whether each started child is still running."""
        return {name: process.alive() for name, process in self.processes().items()}

    def restart(self, name: str) -> None:
        """Start the child ``name`` again (after it died): same ports where callers rely on them, same data.

        Raises :class:`~meshserve.local.process.ProcessFailed` when it does not come up.
        """
        child = self._children[name]
        child.stop()  # reaps what is left of it (Triton: its Python-backend stubs too)
        child.start(timeout=self.config.start_timeout_s)
        if isinstance(child, Service):
            self._announced(name, child)

    def stop(self) -> None:
        """Stop the children in reverse order of start; every one is tried."""
        self._stack.close()
        self._children.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DEFAULT_AUDIT_PORT", "DEFAULT_ETCD_PORT", "DEFAULT_ROUTER_PORT", "LocalMesh", "MeshConfig", "Step"]
