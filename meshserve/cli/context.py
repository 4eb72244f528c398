"""Where the mesh of ``meshserve up`` listens: the context file commands read when given no address.

``meshserve up`` writes, once its mesh is up, a JSON file with the router, audit, etcd,
NATS and metrics addresses of the mesh and, under ``--tls``, the operator certificate's
files; it removes the file when it stops. The file is (first match):

1. ``$MESHSERVE_CONTEXT``, when set (a file that does not exist means: no context);
2. ``$XDG_RUNTIME_DIR/meshserve/context.json``, when ``$XDG_RUNTIME_DIR`` is a folder;
3. ``~/.meshserve/context.json``.

One mesh holds it at a time: a second ``meshserve up`` on the same host (same user)
leaves a live mesh's file alone, writes its own context into its data folder instead and
says so (point ``$MESHSERVE_CONTEXT`` at that file to use it). A file whose ``meshserve
up`` no longer runs (killed with SIGKILL) is stale: commands ignore it, and the next
``meshserve up`` replaces it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONTEXT_ENV = "MESHSERVE_CONTEXT"
FILE_NAME = "context.json"
FORMAT = 1


def context_path() -> Path:
    """The context file commands read and ``meshserve up`` writes (see the module's docstring)."""
    given = os.environ.get(CONTEXT_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime_dir and Path(runtime_dir).is_dir():
        return Path(runtime_dir) / "meshserve" / FILE_NAME
    return Path.home() / ".meshserve" / FILE_NAME


def _start_time(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    return fields[19] if len(fields) > 19 else ""


def _running(pid: int, started: str) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started`` (not a reused PID)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it runs
    now = _start_time(pid)
    return not started or not now or started == now


@dataclass(frozen=True)
class MeshContext:
    """The addresses of one running mesh, as ``meshserve up`` recorded them."""

    pid: int
    router: str
    etcd: str
    routers: list[str] = field(default_factory=list)
    audit: str = ""
    nats: str = ""
    metrics: list[str] = field(default_factory=list)
    # The operator certificate (CA, certificate, key) when the mesh runs with --tls.
    tls: list[str] = field(default_factory=list)
    # The environment that makes a command etcd's operator (outside dev mode, in plain text).
    etcd_env: dict[str, str] = field(default_factory=dict)
    data_dir: str = ""
    started: str = ""  # the process start time of ``pid``, to tell a reused PID

    @property
    def running(self) -> bool:
        return _running(self.pid, self.started)

    def address(self, service: str) -> str:
        """The address of ``service``: router, audit, etcd or nats ("" when the mesh has none)."""
        value = getattr(self, service, "")
        return value if isinstance(value, str) else ""


def read(path: Path) -> MeshContext | None:
    """The context in ``path``; None when there is none (or it is not one ``meshserve up`` wrote)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    known = {name: data[name] for name in MeshContext.__dataclass_fields__ if name in data}
    try:
        return MeshContext(**known)
    except TypeError:
        return None


def write(path: Path, context: MeshContext) -> None:
    """Write ``context`` to ``path`` atomically (a reader sees the old file or the new one), readable by its owner."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"format": FORMAT, **asdict(context)}, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def make(*, router: str, routers: list[str], etcd: str, audit: str, nats: str, metrics: list[str],
         tls: tuple[Path, Path, Path] | None, data_dir: Path, etcd_env: dict[str, str] | None = None) -> MeshContext:
    """The context of the mesh this process runs."""
    pid = os.getpid()
    return MeshContext(pid=pid, started=_start_time(pid), router=router, routers=routers, etcd=etcd, audit=audit,
                       nats=nats, metrics=metrics, tls=[str(p.resolve()) for p in tls] if tls else [],
                       etcd_env=dict(etcd_env or {}),
                       data_dir=str(data_dir.resolve()))


@dataclass(frozen=True)
class Claim:
    """Where ``meshserve up`` wrote its context, and who holds the shared file when it could not take it."""

    path: Path
    holder: MeshContext | None = None  # a live mesh that holds the shared file (then path is in the data folder)


def claim(context: MeshContext) -> Claim:
    """Write ``context`` to the shared file, unless a live mesh holds it: then into the mesh's data folder."""
    shared = context_path()
    holder = read(shared)
    if holder is not None and holder.pid != context.pid and holder.running:
        own = Path(context.data_dir) / FILE_NAME
        write(own, context)
        return Claim(own, holder)
    write(shared, context)
    return Claim(shared)


def release(claim: Claim) -> None:
    """Remove the context file ``meshserve up`` wrote, if it is still this process's."""
    current = read(claim.path)
    if current is not None and current.pid == os.getpid():
        claim.path.unlink(missing_ok=True)
