"""``meshserve up``: the local mesh in the foreground until Ctrl-C or SIGTERM, restarting a child that dies."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import meshserve
from meshserve.cli import context as mesh_context
from meshserve.cli.common import UserError, cli_errors, console, err_console
from meshserve.cli.tables import endpoints_table
from meshserve.local.mesh import DEFAULT_AUDIT_PORT, DEFAULT_ROUTER_PORT, LocalMesh, MeshConfig, port_is_free
from meshserve.local.supervisor import Event, Exited, RestartFailed, Supervisor

REPO_ROOT = Path(meshserve.__file__).resolve().parent.parent
EXAMPLE_MODELS = REPO_ROOT / "examples" / "models"
EXAMPLE_TRITON_MODELS = REPO_ROOT / "examples" / "triton"
EXAMPLE_PIPELINES = REPO_ROOT / "examples" / "pipelines"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_examples.py"

IRIS_REQUEST = {
    "model_name": "iris",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                "contents": {"fp32_contents": [5.1, 3.5, 1.4, 0.2]}}],
}


def grpcurl_command(router_address: str, ca: Path | None = None) -> str:
    """A copy-and-paste grpcurl call of iris through the router (over TLS trusting ``ca``, when given)."""
    venv_grpcurl = Path(sys.executable).parent / "grpcurl"
    exe = str(venv_grpcurl) if venv_grpcurl.exists() else "grpcurl"
    if Path(exe).is_relative_to(Path.cwd()):
        exe = os.path.relpath(exe)
    body = json.dumps(IRIS_REQUEST, separators=(",", ":"))
    transport = ["-cacert", str(ca)] if ca else ["-plaintext"]
    return shlex.join([exe, *transport, "-d", body, router_address,
                       "inference.GRPCInferenceService/ModelInfer"])


def ensure_examples(repository: Path) -> None:
    """Build the example models' artifacts when serving the default repository.

    The build script is idempotent and returns at once when everything is built.
    """
    if repository.resolve() != EXAMPLE_MODELS.resolve() or not BUILD_SCRIPT.exists():
        return
    with console.status("checking the example models"):
        done = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()[-10:]
        raise UserError("building the example models failed:\n" + "\n".join(lines))
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("built "):
            console.print(f"[green]✓[/] {line}")


def _example_pipelines(repository: Path) -> list[Path]:
    """The example pipelines, when serving the example models."""
    if repository.resolve() != EXAMPLE_MODELS.resolve():
        return []
    return sorted(EXAMPLE_PIPELINES.glob("*.yaml"))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# Ctrl-C, SIGTERM and a closed terminal stop the mesh in order; however else this process
# ends (SIGKILL), the kernel kills every child with it (meshserve.local.process).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _start(mesh: LocalMesh) -> None:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        for step in mesh.steps():
            task = progress.add_task(f"starting {step.label}", total=1)
            address = step.run()
            progress.update(task, completed=1, description=f"[green]✓[/] {step.label} on {address}")


def _write_announce(path: Path, mesh: LocalMesh) -> None:
    data = {"pid": os.getpid(), "router": mesh.router_address, "routers": mesh.router_addresses,
            "etcd": mesh.etcd_endpoint, "runtime": mesh.runtime_address, "runtime_id": mesh.runtime_id,
            "nats": mesh.nats_url, "audit": mesh.audit_address, "triton": mesh.addresses.get("triton", ""),
            "children": mesh.pids(), "data_dir": str(mesh.data_dir), "metrics": mesh.metrics_addresses}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _record_context(mesh: LocalMesh) -> mesh_context.Claim:
    """Record where the mesh listens, for commands given no address; say where."""
    metrics = [mesh.metrics_addresses[n] for n in mesh.router_names() if n in mesh.metrics_addresses]
    claim = mesh_context.claim(mesh_context.make(
        router=mesh.router_address, routers=mesh.router_addresses, etcd=mesh.etcd_endpoint, audit=mesh.audit_address,
        nats=mesh.nats_url, metrics=metrics, tls=mesh.tls_files("operator") if mesh.config.tls else None,
        data_dir=mesh.data_dir, etcd_env=mesh.operator_env()))
    if claim.holder is None:
        console.print(f"commands given no address act on this mesh (context: {claim.path})", markup=False)
    else:
        console.print(f"another mesh (meshserve up, pid {claim.holder.pid}, router {claim.holder.router}) holds "
                      f"{mesh_context.context_path()}: commands given no address act on that one. For this one:",
                      markup=False)
        console.print(f"export {mesh_context.CONTEXT_ENV}={claim.path}", markup=False, soft_wrap=True)
    return claim


def _metrics_url(mesh: LocalMesh, name: str) -> str:
    address = mesh.metrics_addresses.get(name, "")
    return f"http://{address}/metrics" if address else ""


def _reporter(mesh: LocalMesh, announce_file: Path | None) -> Callable[[Event], None]:
    """Says on screen what the supervisor sees and does; a restart rewrites the announce file (new PIDs)."""
    def report(event: Event) -> None:
        if isinstance(event, Exited):
            err_console.print(f"[bold red]✗[/] {event.name} (pid {event.pid}) {event.how}; its log ends with:")
            err_console.print(textwrap.indent(event.log_tail or "(empty)", "  "), markup=False, soft_wrap=True)
        elif isinstance(event, RestartFailed):
            err_console.print(f"[bold red]✗[/] {event.name} did not start again: {event.error}", markup=False,
                              soft_wrap=True)
        else:
            address = mesh.addresses.get(event.name, "")
            console.print(f"[green]✓[/] {event.name} restarted (pid {event.pid}{', ' + address if address else ''})")
            if announce_file is not None:
                _write_announce(announce_file, mesh)
            return
        if event.restart_in_s is None:
            err_console.print(f"[bold red]giving up on {event.name}[/]: it ended {event.exits} times within a "
                              "minute. The rest of the mesh stays up; fix it and start meshserve up again.")
        else:
            err_console.print(f"restarting {event.name} in {event.restart_in_s:g} s")
    return report


@cli_errors
def up(
    model_repository: Annotated[
        Path, typer.Option("--model-repository", "-m", help="folder of <model>/<version>/ to serve",
                           envvar="MESHSERVE_MODEL_REPOSITORY")
    ] = EXAMPLE_MODELS,
    triton_repository: Annotated[
        Path | None, typer.Option("--triton-repository", help="Triton model repository to serve with NVIDIA Triton",
                                  envvar="MESHSERVE_TRITON_REPOSITORY")
    ] = EXAMPLE_TRITON_MODELS,
    triton: Annotated[bool, typer.Option(help="run NVIDIA Triton (when installed) and its registrar")] = True,
    r_runtime: Annotated[bool, typer.Option(help="run the R runtime (when Rscript is installed)")] = True,
    dev_mode: Annotated[bool, typer.Option(
        help="let callers without a key infer and read metadata of every model (local development)")] = True,
    pipeline: Annotated[
        list[Path] | None, typer.Option(help="pipeline file to apply once up (repeatable; default: the examples)")
    ] = None,
    router_port: Annotated[int, typer.Option(help="router port (0: any free port)")] = DEFAULT_ROUTER_PORT,
    routers: Annotated[int, typer.Option(
        min=1, help="routers side by side on the same registry, on consecutive ports from --router-port")] = 1,
    etcd_port: Annotated[
        int | None, typer.Option(help="etcd client port (default 2379 when free, else any free port)")
    ] = None,
    runtime_port: Annotated[int, typer.Option(help="Python runtime port (0: any free port)")] = 0,
    audit_port: Annotated[int, typer.Option(help="audit service port (0: any free port)")] = DEFAULT_AUDIT_PORT,
    nats_port: Annotated[
        int | None, typer.Option(help="NATS port (default 4222 when free, else any free port)")
    ] = None,
    audit: Annotated[bool, typer.Option(help="run NATS and the audit service and record every call")] = True,
    host: Annotated[str, typer.Option(help="address every service listens on")] = "127.0.0.1",
    data_dir: Annotated[
        Path | None, typer.Option(help="etcd data and logs (default: a temporary folder removed on exit)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="log level of the services")] = "INFO",
    tls: Annotated[bool, typer.Option(
        help="TLS on every link, with a mesh CA and certificates made in <data-dir>/tls")] = False,
    announce_file: Annotated[
        Path | None, typer.Option(help="once up, write the addresses and child PIDs as JSON here (again on a restart)")
    ] = None,
    trace_sample_ratio: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="share of calls traced with OpenTelemetry by every service (0: tracing off)")] = 0.0,
    otlp_endpoint: Annotated[str, typer.Option(
        help="OTLP/gRPC collector the spans go to: host:port, or https://host:port")] = "",
) -> None:
    """Start etcd, NATS, the audit service, the router, the Python and R runtimes and Triton; Ctrl-C stops them.

    A child that dies is restarted (after 0.5 s, doubling up to 30 s), on the same ports
    where callers rely on them; one that dies 5 times within a minute is given up on and
    the rest stays up. Every child ends with this command, however it ends.
    """
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    ensure_examples(model_repository)
    if not model_repository.is_dir():
        raise UserError(f"model repository {model_repository} is not a folder")
    if triton and triton_repository is not None and not triton_repository.is_dir():
        raise UserError(f"Triton model repository {triton_repository} is not a folder")
    for port in range(router_port, router_port + routers) if router_port else ():
        if not port_is_free(host, port):
            raise UserError(f"port {port} on {host} is in use: stop what holds it or pass --router-port")
    mesh = LocalMesh(MeshConfig(
        model_repository=model_repository, host=host, router_port=router_port, routers=routers, etcd_port=etcd_port,
        runtime_port=runtime_port, data_dir=data_dir, log_level=log_level, audit_port=audit_port,
        nats_port=nats_port, audit=audit, r_runtime=r_runtime, triton_repository=triton_repository if triton else None,
        pipelines=tuple(pipeline if pipeline is not None else _example_pipelines(model_repository)),
        dev_mode=dev_mode, tls=tls, trace_sample_ratio=trace_sample_ratio, otlp_endpoint=otlp_endpoint,
    ))
    pids: dict[str, int] = {}
    context: mesh_context.Claim | None = None
    supervisor = Supervisor(mesh, _reporter(mesh, announce_file))
    try:
        _start(mesh)
        pids = mesh.pids()
        console.print(endpoints_table([
            (label, address, str(pids.get(name, "-"))) for label, name, address in (
                *((f"{name.replace('-', ' ')} (OIP gRPC)", name, mesh.addresses.get(name, ""))
                  for name in mesh.router_names()),
                *((f"{name.replace('-', ' ')} metrics (Prometheus)", name, _metrics_url(mesh, name))
                  for name in mesh.router_names()),
                ("python runtime", "runtime", mesh.runtime_address),
                ("R runtime", "r-runtime", mesh.addresses.get("r-runtime", "")),
                ("Triton (gRPC)", "triton", mesh.addresses.get("triton", "")),
                ("audit service", "audit", mesh.audit_address),
                ("NATS JetStream", "nats", mesh.nats_url),
                ("etcd", "etcd", mesh.etcd_endpoint),
            ) if address
        ]))
        console.print(f"logs: {mesh.log_dir}")
        if dev_mode:
            console.print("[bold yellow]DEV MODE:[/] callers WITHOUT A KEY may infer, read metadata and change the "
                          "routes and pipelines of every model. Use --no-dev-mode to require API keys "
                          "(`meshserve keys create`).")
        if tls:
            ca, cert, key = mesh.tls_files("operator")
            console.print(f"TLS on every link (mesh CA {ca}). Commands given no address use the operator "
                          "certificate of the context; given an address, they need:")
            console.print(f"export MESHSERVE_TLS_CA={ca} MESHSERVE_TLS_CERT={cert} MESHSERVE_TLS_KEY={key}",
                          markup=False, soft_wrap=True)
        else:
            console.print("[bold yellow]PLAIN TEXT:[/] services talk without TLS; pass --tls for a mesh CA and "
                          "TLS on every link.")
        if operator := mesh.operator_env():
            console.print("etcd requires a user: runtimes and routers have their own. Commands that change the "
                          "registry (keys, policy, audit policy, models register) act as its operator when they "
                          "use this mesh's context; given --etcd, they need:")
            console.print("export " + " ".join(f"{k}={v}" for k, v in operator.items()), markup=False,
                          soft_wrap=True)
        console.print("try:")
        console.print(grpcurl_command(mesh.router_address, mesh.tls_files("operator")[0] if tls else None),
                      markup=False, soft_wrap=True)
        if watched := [mesh.metrics_addresses[n] for n in mesh.router_names() if n in mesh.metrics_addresses]:
            console.print("watch the calls: meshserve top" + "".join(f" --metrics {a}" for a in watched),
                          markup=False, soft_wrap=True)
        context = _record_context(mesh)
        console.print("[bold]Ctrl-C to stop[/] (a child that dies is restarted)")
        if announce_file is not None:
            _write_announce(announce_file, mesh)
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        if context is not None:  # commands no longer find a mesh that is stopping
            mesh_context.release(context)
        pids = mesh.pids() or pids
        # Ignore further Ctrl-C while stopping, so no child is left behind.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        with console.status("stopping"):
            mesh.stop()
        if pids:
            console.print("stopped " + ", ".join(f"{name} (pid {pid})" for name, pid in reversed(pids.items())))
    if supervisor.given_up:
        err_console.print(f"[bold red]error:[/] gave up on {', '.join(supervisor.given_up)} (crash-looping)")
        raise typer.Exit(1)
