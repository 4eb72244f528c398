"""A real NVIDIA Triton server on loopback, from the tritonserver binary in the nvidia-pytriton wheel.

The wheel carries Triton 2.51 with the Python backend only. ``make`` unpacks it (without
its Python dependencies, which pin numpy < 2) into ``.venv/opt/pytriton``. Two facts make
it run on a CPU-only machine:

- Triton is a plain subprocess given loopback ports, its own backend directory (the
  Python backend plus the stub for Python 3.11) and a cache directory;
- the Python-backend stub is built against numpy 1's ABI, so it must run on Debian's
  Python 3.11 with Debian's numpy 1.24 (packages libpython3.11 and python3-numpy): with
  numpy 2 it reads every tensor with zero strides and answers empty outputs. So only the
  wheel's own libraries go on LD_LIBRARY_PATH, never this Python's libpython. The stub
  runs isolated (PYTHONPATH is ignored); models that need more packages (onnxruntime)
  append the directories in ``MESHSERVE_TRITON_PYTHONPATH`` to ``sys.path``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import site
import sys
from pathlib import Path

import grpc

from meshserve.auth import mesh as mesh_credential
from meshserve.local.process import ManagedProcess, ProcessFailed, free_port
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTALL_HINT = "run `make venv` (it unpacks the nvidia-pytriton wheel into .venv/opt/pytriton)"


def triton_home() -> Path:
    """The unpacked wheel: $MESHSERVE_TRITON_HOME, else ``<venv>/opt/pytriton``."""
    configured = os.environ.get("MESHSERVE_TRITON_HOME")
    return Path(configured) if configured else Path(sys.prefix) / "opt" / "pytriton"


def triton_binary(home: Path | None = None) -> Path:
    binary = (home or triton_home()) / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        raise ProcessFailed(f"no tritonserver binary at {binary}: {INSTALL_HINT}")
    return binary


def available() -> bool:
    """True when the binary is unpacked and Debian's numpy 1 is there for the stub."""
    try:
        triton_binary()
    except ProcessFailed:
        return False
    return Path("/usr/lib/python3/dist-packages/numpy").is_dir()


def prepare_backends(home: Path, target: Path) -> Path:
    """A backend directory holding the Python backend and the stub for this Python version."""
    server = home / "pytriton" / "tritonserver"
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (server / "backends" / "python").iterdir():
        shutil.copy2(item, python / item.name)
    stub = server / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"
    if not stub.exists():
        raise ProcessFailed(f"the nvidia-pytriton wheel has no Python-backend stub for Python {PYTHON_VERSION}")
    shutil.copy2(stub, python / stub.name)
    return target


def trace_args(url: str, rate: int = 1, export_s: float = 5.0) -> tuple[str, ...]:
    """Flags turning on Triton's own OpenTelemetry tracing, exporting to the OTLP/HTTP ``url``.

    Triton then traces one request in ``rate`` and, for a request carrying a W3C
    ``traceparent`` (the router sends one with each traced call), makes its spans part of
    the caller's trace; finished spans wait at most ``export_s`` to be exported. No flags
    for an empty ``url``.
    """
    if not url:
        return ()
    config = ["mode=opentelemetry", "level=TIMESTAMPS", f"rate={rate}", "count=-1", f"opentelemetry,url={url}",
              "opentelemetry,resource=service.name=triton",
              f"opentelemetry,bsp_schedule_delay={max(1, round(export_s * 1000))}"]
    return tuple(arg for setting in config for arg in ("--trace-config", setting))


# Triton's protocol groups closed to callers without the mesh credential: all but health probes.
RESTRICTED = "metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"


def _ready(address: str, credentials: grpc.ChannelCredentials | None = None,
           metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    try:
        with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as channel:
            reply = GRPCInferenceServiceStub(channel).ServerReady(oip.ServerReadyRequest(), timeout=0.5,
                                                                  metadata=metadata)
            return bool(reply.ready)
    except grpc.RpcError:
        return False


class TritonServer:
    """tritonserver on ``host`` serving ``model_repository``; restartable on the same ports.

    ``explicit`` runs it with ``--model-control-mode=explicit`` and every model loaded at
    start (``--load-model=*``), so RepositoryModelLoad and Unload work.
    """

    def __init__(self, model_repository: Path, data_dir: Path, log_path: Path, *, host: str = "127.0.0.1",
                 grpc_port: int = 0, explicit: bool = True, extra_args: tuple[str, ...] = (),
                 tls_files: tuple[Path, Path, Path] | None = None, credential: str | None = None) -> None:
        self.model_repository = model_repository
        self.data_dir = data_dir
        self.log_path = log_path
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = 0
        self.explicit = explicit
        self.extra_args = extra_args
        self.tls_files = tls_files  # (CA, certificate, key): gRPC callers must then present a mesh certificate
        # The mesh credential (meshserve.auth.mesh): callers must present it, but for health probes.
        self.credential = credential
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def _argv(self, backends: Path) -> list[str]:
        argv = [
            str(triton_binary()), f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}", f"--cache-directory={self.data_dir / 'cache'}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            "--allow-metrics=false", "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=5",
            # A model that fails to load is reported (the registrar shows it as failed), not fatal.
            "--exit-on-error=false", "--strict-readiness=false",
            # Its ports are its own (no SO_REUSEPORT): a Triton left running makes a new one fail at once.
            "--reuse-grpc-port=false", "--reuse-http-port=false",
        ]
        if self.explicit:
            argv += ["--model-control-mode=explicit", "--load-model=*"]
        if self.tls_files:
            ca, cert, key = self.tls_files
            argv += ["--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true", f"--grpc-root-cert={ca}",
                     f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        if self.credential:
            # Triton reads this setting from its command line only (see docs/security.md).
            check = f"{mesh_credential.HEADER}={self.credential}"
            argv += [f"--grpc-restricted-protocol={RESTRICTED}:{check}", f"--http-restricted-api={RESTRICTED}:{check}"]
        return argv + list(self.extra_args)

    def _env(self) -> dict[str, str]:
        libs = triton_home() / "nvidia_pytriton.libs"
        return {
            # Only the wheel's libraries: the stub must find Debian's libpython3.11, not ours.
            "LD_LIBRARY_PATH": str(libs),
            "MESHSERVE_TRITON_PYTHONPATH": os.pathsep.join(site.getsitepackages()),
        }

    def start(self, timeout: float = 60.0) -> None:
        backends = prepare_backends(triton_home(), self.data_dir / "backends")
        (self.data_dir / "cache").mkdir(parents=True, exist_ok=True)
        attempts = 3
        for attempt in range(attempts):
            fixed = bool(self.grpc_port)
            self.grpc_port = self.grpc_port or free_port(self.host)
            self.http_port = self.http_port or free_port(self.host)
            process = ManagedProcess("tritonserver", self._argv(backends), self.log_path, env=self._env())
            process.start()
            try:
                process.wait_until(functools.partial(_ready, self.address, self._credentials(),
                                                     mesh_credential.metadata(self.credential, triton=True)),
                                   timeout, "ready")
            except ProcessFailed:
                process.stop()
                if fixed or attempt == attempts - 1:
                    raise
                self.grpc_port = self.http_port = 0  # a port was taken meanwhile: try others
                continue
            self.process = process
            return

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls_files:
            return None
        ca, cert, key = (path.read_bytes() for path in self.tls_files)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def kill(self) -> None:
        """SIGKILL Triton (tests simulate a crash); its Python-backend stubs exit with it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # its own process group: Triton and its stubs
                os.killpg(self.process.pid, signal.SIGKILL)
            assert self.process.proc is not None
            self.process.proc.wait()
            self.process.stop()
            self.process = None

    def stop(self) -> None:
        """Stop Triton; the stubs a crashed Triton (it can abort) left behind go with its process group."""
        if self.process is not None:
            self.process.stop(grace=10)
            self.process = None
