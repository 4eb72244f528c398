"""The local mesh: etcd, the router and the Python runtime as child processes on loopback.

``meshserve up`` runs one in the foreground; test fixtures use the same class::

    with LocalMesh(MeshConfig(model_repository=repo, router_port=0, etcd_port=0)) as mesh:
        call(mesh.router_address)

Children are started in order (etcd, router, runtime), each awaited on its announce
file, and stopped by PID in reverse order, also when a start fails half way.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from meshserve.local.etcd import EtcdServer
from meshserve.local.process import ManagedProcess

log = logging.getLogger(__name__)

DEFAULT_ROUTER_PORT = 8001
DEFAULT_ETCD_PORT = 2379


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    # None: 2379 when free, else any free port. 0: any free port.
    etcd_port: int | None = None
    runtime_port: int = 0
    # None: a temporary directory, removed on stop. Otherwise kept.
    data_dir: Path | None = None
    start_timeout_s: float = 60.0
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One start-up step: a label for progress displays and the call that does it."""

    label: str
    run: Callable[[], str]


class LocalMesh:
    """etcd, the router and the Python runtime, started and stopped together."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self._tmp: Path | None = None
        self.data_dir = config.data_dir or Path(".")
        self.etcd: EtcdServer | None = None
        self.router: ManagedProcess | None = None
        self.runtime: ManagedProcess | None = None
        self.router_address = ""
        self.runtime_address = ""
        self.runtime_id = ""

    # -- addresses -------------------------------------------------------------

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint if self.etcd is not None else ""

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def pids(self) -> dict[str, int]:
        """PIDs of the children that were started, by name."""
        found: dict[str, int] = {}
        if self.etcd is not None and self.etcd.process is not None:
            found["etcd"] = self.etcd.process.pid
        for name, proc in (("router", self.router), ("runtime", self.runtime)):
            if proc is not None and proc.proc is not None:
                found[name] = proc.pid
        return found

    # -- start -----------------------------------------------------------------

    def steps(self) -> list[Step]:
        """The start-up steps in order; run each (or call :meth:`start`)."""
        return [
            Step("etcd", self._start_etcd),
            Step("router", self._start_router),
            Step("python runtime", self._start_runtime),
        ]

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

    def _etcd_port(self) -> int:
        port = self.config.etcd_port
        if port is None:
            port = DEFAULT_ETCD_PORT if port_is_free(self.config.host, DEFAULT_ETCD_PORT) else 0
        return port

    def _start_etcd(self) -> str:
        self._prepare_dir()
        self.etcd = EtcdServer(self.data_dir, self.log_dir / "etcd.log", host=self.config.host)
        # A fixed port is used as is; 0 lets EtcdServer pick (and retry) a free one.
        self.etcd.port = self._etcd_port()
        self.etcd.start(timeout=self.config.start_timeout_s)
        return self.etcd.endpoint

    def _service(self, name: str, module: str, args: list[str]) -> tuple[ManagedProcess, dict[str, object]]:
        announce = self.data_dir / f"{name}.json"
        announce.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", module, "--host", self.config.host,
            "--etcd-endpoint", self.etcd_endpoint, "--announce-file", str(announce),
            "--log-level", self.config.log_level, *args,
        ]
        proc = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=self.config.extra_env or None)
        proc.start()
        try:
            info = proc.wait_announce(announce, timeout=self.config.start_timeout_s)
        except BaseException:
            proc.stop()  # not yet ours to stop in stop(): reap it here
            raise
        return proc, info

    def _start_router(self) -> str:
        self.router, info = self._service(
            "router", "meshserve.services.router", ["--port", str(self.config.router_port)]
        )
        self.router_address = str(info["address"])
        return self.router_address

    def _start_runtime(self) -> str:
        self.runtime, info = self._service(
            "runtime", "meshserve.runtimes.python",
            ["--port", str(self.config.runtime_port),
             "--model-repository", str(self.config.model_repository.resolve())],
        )
        self.runtime_address = str(info["address"])
        self.runtime_id = str(info.get("runtime_id", ""))
        return self.runtime_address

    # -- stop ------------------------------------------------------------------

    def alive(self) -> dict[str, bool]:
        """Whether each started child is still running."""
        status: dict[str, bool] = {}
        if self.etcd is not None and self.etcd.process is not None:
            status["etcd"] = self.etcd.process.alive()
        for name, proc in (("router", self.router), ("runtime", self.runtime)):
            if proc is not None:
                status[name] = proc.alive()
        return status

    def stop(self) -> None:
        """Stop the children in reverse order of start; every one is tried."""
        for name, stop in (
            ("runtime", self.runtime.stop if self.runtime else None),
            ("router", self.router.stop if self.router else None),
            ("etcd", self.etcd.stop if self.etcd else None),
        ):
            if stop is None:
                continue
            try:
                stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", name)
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


__all__ = ["DEFAULT_ETCD_PORT", "DEFAULT_ROUTER_PORT", "LocalMesh", "MeshConfig", "Step"]
