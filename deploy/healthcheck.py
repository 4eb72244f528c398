#!/usr/bin/env python3
"""Ask a meshserve service whether it is serving: grpc.health.v1.Health/Check, exit 0 if SERVING.

For container health checks and Kubernetes exec probes. Kubernetes' own ``grpc:`` probes
speak plain text, and a mesh service with TLS on accepts TLS only (a runtime also wants
a mesh certificate from its caller), so with TLS the probe must be this:

    meshserve-health ADDRESS [--tls-dir DIR] [--service NAME] [--timeout S]

ADDRESS is host:port; ``$VAR`` in it is replaced by the environment variable (a runtime
listens on its pod's DNS name, which the pod spec keeps in a variable). With
``--tls-dir``, the check speaks TLS, trusts DIR/ca.crt and presents DIR/tls.crt and
DIR/tls.key (the file names of a Kubernetes TLS Secret).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(address: str, tls_dir: Path | None) -> grpc.Channel:
    if tls_dir is None:
        return grpc.insecure_channel(address)
    ca, cert, key = ((tls_dir / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key"))
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve-health", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("address", help="host:port of the service ($VAR is expanded)")
    parser.add_argument("--tls-dir", type=Path, help="folder with ca.crt, tls.crt and tls.key: speak TLS")
    parser.add_argument("--service", default="", help="service name to ask about ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    address = os.path.expandvars(args.address)
    try:
        with channel(address, args.tls_dir) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{address}: cannot read TLS files: {e}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
