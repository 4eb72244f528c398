"""Make the mesh CA and one certificate per service for the Kubernetes manifests.

    .venv/bin/python deploy/kubernetes/make_tls.py [--dir deploy/kubernetes/tls] [--namespace meshserve]
        [--cluster-domain cluster.local] [--router-host router.example.com ...] [--renew]

It does what `meshserve certs init DIR` and one `meshserve certs issue DIR NAME --host ...`
per service would, with the host names Kubernetes gives each service in NAMESPACE: the
Service name (router, audit, etcd, nats, postgres) in its short and long forms, and for
the StatefulSets whose pods are reached one by one (runtimes, Triton, etcd and NATS
members) a wildcard under their headless Service. An existing CA is kept; certificates
are issued only where missing, unless --renew.

kustomize (deploy/kubernetes/kustomization.yaml) puts ca.crt and each NAME.crt/NAME.key
into a Secret, and etcd-root.password (made here) into the etcd-users Job's; ca.key never
leaves this folder: keep it offline. `operator.crt` is for people running `meshserve`
commands against the cluster (MESHSERVE_TLS_CA/_CERT/_KEY), and for the etcd-users Job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meshserve.secretfiles import read_or_make
from meshserve.tls import certs

HERE = Path(__file__).resolve().parent


def service_hosts(namespace: str, domain: str) -> dict[str, tuple[str, ...]]:
    """Certificate name -> the host names and addresses it must be valid for."""

    def service(name: str) -> tuple[str, ...]:
        return name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{domain}"

    def pods(headless: str) -> tuple[str, ...]:
        return f"*.{headless}", f"*.{headless}.{namespace}.svc", f"*.{headless}.{namespace}.svc.{domain}"

    # Health checks inside a pod dial localhost; `kubectl port-forward` users do too.
    local = ("localhost", "127.0.0.1")
    return {
        "router": service("router") + local,
        "audit": service("audit") + local,
        "runtime-python": pods("runtime-python"),
        "runtime-r": pods("runtime-r"),
        "triton": pods("triton"),
        "etcd": service("etcd") + pods("etcd-headless") + local,
        "nats": service("nats") + pods("nats-headless") + local,
        "postgres": service("postgres") + local,
        "operator": local,
    }


def make(directory: Path, namespace: str, domain: str, router_hosts: tuple[str, ...] = (),
         renew: bool = False) -> list[Path]:
    """Create the CA when missing and every certificate; return the certificates written."""
    if not (directory / f"{certs.CA_NAME}.crt").exists():
        certs.init_ca(directory)
    written = []
    for name, hosts in service_hosts(namespace, domain).items():
        if name == "router":
            hosts += router_hosts
        if renew or not (directory / f"{name}.crt").exists():
            written.append(certs.issue(directory, name, hosts).cert)
    # etcd root's password, for the etcd-users Job (every other etcd user is named by its certificate).
    read_or_make(directory / "etcd-root.password")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / "tls", help="where the CA and certificates go")
    parser.add_argument("--namespace", default="meshserve", help="the namespace the mesh runs in")
    parser.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain")
    parser.add_argument("--router-host", action="append", default=[],
                        help="a name or address callers outside the cluster reach the router at (repeatable)")
    parser.add_argument("--renew", action="store_true", help="issue every certificate again")
    args = parser.parse_args()
    written = make(args.dir, args.namespace, args.cluster_domain, tuple(args.router_host), args.renew)
    for path in written:
        print(f"issued {path}")
    print(f"CA and certificates in {args.dir}; keep {args.dir / 'ca.key'} offline")


if __name__ == "__main__":
    main()
