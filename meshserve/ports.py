"""Listening ports: no listener of ours shares its port, and a port in use is one clear start-up error.

Every listener binds without ``SO_REUSEPORT`` (grpcio turns it on by default: the gRPC
servers pass ``grpc.so_reuseport=0``; the metrics HTTP server and the mesh link never set
it; etcd and NATS do not, and Triton is started with ``--reuse-grpc-port=false``), so a
leftover process can never silently take a share of a port's connections: a second
service on the same port fails at once with :class:`PortInUse`.
"""

from __future__ import annotations

import errno
import socket


class PortInUse(OSError):
    """``port 8001 on 127.0.0.1 is in use: ...``: another process listens there."""

    def __init__(self, host: str, port: int, what: str = "") -> None:
        self.host, self.port = host, port
        self.message = (f"{what}: " if what else "") + \
            f"port {port} on {host} is in use: stop what holds it or choose another port"
        super().__init__(errno.EADDRINUSE, self.message)

    def __str__(self) -> str:
        return self.message


def bind_error(host: str, port: int, what: str = "") -> OSError:
    """Why ``host:port`` cannot be listened on (gRPC only says "failed to bind"), found by binding it once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server bind
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return PortInUse(host, port, what)
            return OSError(e.errno, f"{what + ': ' if what else ''}cannot listen on {host}:{port}: {e.strerror}")
    return OSError(f"{what + ': ' if what else ''}cannot listen on {host}:{port}")
