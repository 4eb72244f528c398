"""Life cycle of a runtime: create, start (bind, register, load), stop.

A runtime of any kind is a :class:`RuntimeServer` given its settings, its kind and its
:class:`~meshserve.runtime.backend.BackendLoader`; :func:`main` runs one as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import meshserve
from meshserve import tracing
from meshserve.auth import mesh as mesh_credential
from meshserve.auth.mesh import MeshGate
from meshserve.errors import FailedPrecondition, MeshError, NotFound
from meshserve.grpcutil.handlers import add_service
from meshserve.grpcutil.server import ServiceServer
from meshserve.lifecycle import Parts, run_until_signalled
from meshserve.link.server import LinkServer, serve_link
from meshserve.metrics import MetricsServer
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg_pb
from meshserve.registry.registration import Registration, now_ms
from meshserve.settings import load_settings, setup_logging
from meshserve.tls import MeshTls

from .backend import BackendLoader
from .dataplane import DataPlane
from .entry import ModelEntry, State
from .metrics import RuntimeMetrics
from .repository import ModelRepository
from .residency import MiB, Residency
from .servicer import RAW_REQUEST_METHODS, InferenceServicer
from .settings import ModelRuntimeSettings, default_runtime_id

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ModelRuntimeSettings)

SERVICE_NAME = "inference.GRPCInferenceService"
LOAD_REPORT_S = 1.0
LOAD_SMOOTHING = 0.5
_PLACEMENT_STATES = {
    State.AVAILABLE: reg_pb.MODEL_STATE_AVAILABLE,
    State.LOADING: reg_pb.MODEL_STATE_LOADING,
    State.READY: reg_pb.MODEL_STATE_READY,
    State.FAILED: reg_pb.MODEL_STATE_FAILED,
}


def mesh_gate(settings: ModelRuntimeSettings, what: str, mesh_tls: MeshTls | None) -> MeshGate:
    """How this runtime tells the mesh's calls from strangers' (see meshserve.auth.mesh).

    Outside dev mode a runtime needs TLS (mesh certificates required of every caller) or a
    mesh credential, and refuses to start with neither: a plain-text port that anyone could
    call would let callers around the router's keys and audit trail.
    """
    credential = mesh_credential.read_optional(settings.mesh_credential_file)
    if not settings.dev_mode and credential is None and mesh_tls is None:
        raise FailedPrecondition(
            f"the {what} would take calls from anyone who reaches its port: give it TLS (--tls-ca, --tls-cert, "
            "--tls-key) or a mesh credential (--mesh-credential-file), or pass --dev-mode for local development")
    return MeshGate(credential, what)


def placement(entry: ModelEntry) -> reg_pb.Placement:
    return reg_pb.Placement(
        model=entry.name, version=entry.version, state=_PLACEMENT_STATES[entry.state],
        reason=entry.reason, platform=entry.platform, memory_bytes=entry.memory_bytes,
        calls_per_s=round(entry.calls_per_s, 1),
    )


class RuntimeServer:
    """One runtime of kind ``kind`` (``python``, ``r`` ...): ``start()`` then ``stop()``.

    It serves OIP gRPC (and the mesh link) for the versions of ``settings.model_repository``
    whose manifest names ``kind``, loads them with ``loader`` and, unless ``register`` is
    false, registers itself and their placements in etcd.
    """

    def __init__(self, settings: ModelRuntimeSettings, kind: str, loader: BackendLoader, *,
                 register: bool = True) -> None:
        self.settings = settings
        self.kind = kind
        self.loader = loader
        self.runtime_id = settings.runtime_id or default_runtime_id(kind)
        # Made once and handed to every part that records spans; shut down when the runtime stops.
        self.tracing = tracing.setup(settings, kind, self.runtime_id)
        loader.tracing = self.tracing  # for the spans of its backends' own work (an R worker's)
        self.mesh_tls = settings.mesh_tls()
        residency = Residency(int(settings.memory_budget_mb * MiB), settings.idle_unload_s)
        self.metrics = RuntimeMetrics()
        self.repository = ModelRepository(settings.model_repository, kind, loader, on_change=self._publish,
                                          residency=residency, artifact_roots=settings.artifact_root_paths(),
                                          metrics=self.metrics)
        self.dataplane = DataPlane(self.repository, settings.predict_threads, self.metrics, tracing=self.tracing)
        self.metrics.watch(self.repository, self.dataplane.pool, loader)
        self.metrics_server = MetricsServer(self.metrics.registry)
        self.servicer = InferenceServicer(self.dataplane, kind, settings.max_message_bytes, tracing=self.tracing)
        self.gate = mesh_gate(settings, f"{kind} runtime", self.mesh_tls)
        gate = self.gate.interceptor()
        self.server = ServiceServer([SERVICE_NAME], max_message_bytes=settings.max_message_bytes,
                                    interceptors=[gate] if gate else (), tracing=self.tracing)
        add_service(self.server, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], self.servicer,
                    raw=RAW_REQUEST_METHODS)
        self.register = register
        self.registration: Registration | None = None
        self.link: LinkServer | None = None
        self.link_address = ""
        self.parts = Parts(f"{kind} runtime {self.runtime_id}")
        self.parts.on_stop("tracing", self.tracing.shutdown)  # stopped last: the spans not exported yet go
        self._grace = 2.0

    @property
    def address(self) -> str:
        return self.server.address

    async def _publish(self, entry: ModelEntry) -> None:
        if self.registration is not None:
            await self.registration.publish(placement(entry))

    def _models_to_load(self) -> list[str]:
        names = sorted({e.name for e in self.repository.scan()})
        to_load = self.settings.models_to_load(names)
        unknown = [n for n in to_load if n not in names]
        if unknown:
            raise NotFound(
                f"cannot load {', '.join(unknown)}: no {self.kind} model of that name in "
                f"{self.settings.model_repository}; {self.kind} models there: {', '.join(names) or 'none'}"
            )
        return to_load

    async def start(self) -> None:
        """Bind, start serving, register in etcd, then load the models ``load`` names.

        Each part started is stopped by :meth:`stop`, the last first; a port in use fails at once.
        """
        settings, parts = self.settings, self.parts
        to_load = self._models_to_load()
        self.server.bind(settings.host, settings.port, mesh_tls=self.mesh_tls,
                         require_client_cert=settings.require_client_cert)
        self.metrics_server.start(settings.host, settings.metrics_port)
        parts.on_stop("metrics server", self.metrics_server.stop)
        parts.on_stop(f"{self.kind} backend", self.loader.close)
        await self.loader.start()
        parts.on_stop("predict threads", self.dataplane.close)
        if settings.link_port >= 0:
            link = self.link = await serve_link(settings.host, settings.link_port,
                                                self.gate.link_handler(self.servicer.link_handler),
                                                settings.max_message_bytes, mesh_tls=self.mesh_tls)
            self.link_address = link.address
            parts.on_stop("mesh link", link.close)
        parts.on_stop("gRPC server", lambda: self.server.stop(self._grace))  # calls in flight finish first
        await self.server.start()
        if self.register:
            parts.on_stop("registration", self._leave)
            await self._register()
        for name in to_load:
            with contextlib.suppress(Exception):  # a failed load is recorded in its state
                await self.repository.load(name)
        self.dataplane.ready = True
        parts.on_stop("readiness", self._unready)
        if settings.idle_unload_s:
            await parts.background(self._unload_idle(), "idle-unload")
        await parts.background(self._report_load(), "report-load")
        log.info("%s runtime %s serving %s on %s", self.kind, self.runtime_id, self.settings.model_repository,
                 self.address)

    async def _unload_idle(self) -> None:
        period = min(max(self.settings.idle_unload_s / 4, 0.1), 5.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.repository.unload_idle()
            except Exception:  # keep the loop alive; the next round tries again
                log.exception("unloading idle models failed")

    async def _report_load(self) -> None:
        """Keep each ready version's calls per second (a moving average) and publish marked changes.

        A placement is rewritten only when its rate moved by a quarter (and by at least one
        call per second), so steady traffic costs etcd nothing.
        """
        last = time.monotonic()
        while True:
            await asyncio.sleep(LOAD_REPORT_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            for entry in self.repository.entries():
                if entry.state is not State.READY:
                    entry.calls_per_s = 0.0
                    continue
                fresh = max(entry.hits - entry.counted_hits, 0) / elapsed if entry.hits >= entry.counted_hits else 0.0
                entry.counted_hits = entry.hits
                published = entry.calls_per_s
                rate = LOAD_SMOOTHING * fresh + (1 - LOAD_SMOOTHING) * published
                entry.calls_per_s = rate
                if abs(rate - published) >= max(1.0, 0.25 * published):
                    try:
                        await self._publish(entry)
                    except Exception:  # the registration retries writes itself
                        log.debug("publishing the load of %s failed", entry.name, exc_info=True)

    async def _register(self) -> None:
        runtime = reg_pb.Runtime(
            id=self.runtime_id, kind=self.kind, address=self.settings.advertised(self.address),
            started_at_unix_ms=now_ms(), version=meshserve.__version__,
            link_address=self.settings.advertised(self.link_address),
            memory_budget_bytes=self.repository.residency.budget_bytes,
        )
        self.registration = Registration(self.settings.etcd_endpoint, runtime, ttl=self.settings.lease_ttl_s,
                                         mesh_tls=self.mesh_tls, credentials=self.settings.etcd_credentials())
        for entry in self.repository.entries():
            await self.registration.publish(placement(entry))
        await self.registration.start(wait=self.settings.etcd_wait_s)

    def announcement(self) -> dict[str, str]:
        return {"address": self.address, "runtime_id": self.runtime_id, "link_address": self.link_address,
                "metrics_address": self.metrics_server.address}

    def _unready(self) -> None:
        self.dataplane.ready = False

    async def _leave(self) -> None:
        registration, self.registration = self.registration, None
        if registration is not None:
            await registration.stop()

    async def stop(self, grace: float = 2.0) -> None:
        """Say not ready and leave the registry at once, finish calls in flight (``grace`` s), unload every model."""
        self._grace = grace
        await self.parts.stop()


async def serve(runtime: RuntimeServer) -> None:
    """Run ``runtime`` until SIGTERM or SIGINT, then stop it gracefully."""
    await run_until_signalled(runtime, f"{runtime.kind} runtime {runtime.runtime_id}", runtime.settings.announce_file)


def main(settings_class: type[S], create: Callable[[S], RuntimeServer],
         argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """The ``python -m`` entry point of a runtime: settings from flags and environment, then serve."""
    settings = load_settings(settings_class, argv, prog=prog)
    setup_logging(settings.log_level)

    async def run() -> None:
        await serve(create(settings))  # created inside the loop, which its gRPC server binds to

    try:
        asyncio.run(run())
    except MeshError as e:  # a start-up the settings rule out, etcd not answering: one line, no traceback
        log.error("%s", e.message)
        sys.exit(1)
