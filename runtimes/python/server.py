"""Life cycle of the Python runtime: create, start (bind, register, load), stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import meshserve
from meshserve.errors import NotFound
from meshserve.grpcutil.handlers import add_service
from meshserve.grpcutil.server import ServiceServer
from meshserve.lifecycle import run_until_signalled
from meshserve.link.server import LinkServer, serve_link
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg_pb
from meshserve.registry.registration import Registration, now_ms
from meshserve.settings import load_settings, setup_logging

from .handlers import DataPlane
from .repository import ModelEntry, ModelRepository, State
from .servicer import RAW_REQUEST_METHODS, InferenceServicer
from .settings import PythonRuntimeSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
RUNTIME_KIND = "python"
_PLACEMENT_STATES = {
    State.AVAILABLE: reg_pb.MODEL_STATE_AVAILABLE,
    State.LOADING: reg_pb.MODEL_STATE_LOADING,
    State.READY: reg_pb.MODEL_STATE_READY,
    State.FAILED: reg_pb.MODEL_STATE_FAILED,
}


def placement(entry: ModelEntry) -> reg_pb.Placement:
    return reg_pb.Placement(
        model=entry.name, version=entry.version, state=_PLACEMENT_STATES[entry.state],
        reason=entry.reason, platform=entry.platform,
    )


class PythonRuntime:
    """One Python runtime server; ``start()`` then ``stop()``."""

    def __init__(self, settings: PythonRuntimeSettings, *, register: bool = True) -> None:
        self.settings = settings
        self.repository = ModelRepository(settings.model_repository, on_change=self._publish)
        self.dataplane = DataPlane(self.repository, settings.predict_threads)
        self.servicer = InferenceServicer(self.dataplane)
        self.server = ServiceServer([SERVICE_NAME], max_message_bytes=settings.max_message_bytes)
        add_service(self.server.server, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], self.servicer,
                    raw=RAW_REQUEST_METHODS)
        self.register = register
        self.registration: Registration | None = None
        self.link: LinkServer | None = None
        self.link_address = ""

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def runtime_id(self) -> str:
        return self.settings.runtime_id

    async def _publish(self, entry: ModelEntry) -> None:
        if self.registration is not None:
            await self.registration.publish(placement(entry))

    async def start(self) -> None:
        """Bind, start serving, register in etcd, then load the models ``load`` names."""
        entries = self.repository.scan()
        names = sorted({e.name for e in entries})
        to_load = self.settings.models_to_load(names)
        unknown = [n for n in to_load if n not in names]
        if unknown:
            raise NotFound(
                f"cannot load {', '.join(unknown)}: not in {self.settings.model_repository}; "
                f"models there: {', '.join(names) or 'none'}"
            )
        self.server.bind(self.settings.host, self.settings.port)
        await self.server.start()
        if self.settings.link_port >= 0:
            self.link = await serve_link(self.settings.host, self.settings.link_port, self.servicer.link_handler,
                                         self.settings.max_message_bytes)
            self.link_address = self.link.address
        if self.register:
            runtime = reg_pb.Runtime(
                id=self.settings.runtime_id, kind=RUNTIME_KIND, address=self.address,
                started_at_unix_ms=now_ms(), version=meshserve.__version__, link_address=self.link_address,
            )
            self.registration = Registration(self.settings.etcd_endpoint, runtime, ttl=self.settings.lease_ttl_s)
            for entry in self.repository.entries():
                await self.registration.publish(placement(entry))
            await self.registration.start(wait=self.settings.etcd_wait_s)
        for name in to_load:
            with contextlib.suppress(Exception):  # a failed load is recorded in its state
                await self.repository.load(name)
        self.dataplane.ready = True
        log.info("python runtime %s serving %s on %s", self.runtime_id, self.settings.model_repository,
                 self.address)

    def announcement(self) -> dict[str, str]:
        return {"address": self.address, "runtime_id": self.runtime_id, "link_address": self.link_address}

    async def stop(self, grace: float = 2.0) -> None:
        """Leave the registry at once, finish calls in flight, unload every model."""
        self.dataplane.ready = False
        if self.registration is not None:
            await self.registration.stop()
            self.registration = None
        await self.server.stop(grace)
        if self.link is not None:
            await self.link.close()
        await self.dataplane.close()


def create_server(settings: PythonRuntimeSettings, *, register: bool = True) -> PythonRuntime:
    """A runtime ready to ``start()``; ``register=False`` keeps it out of etcd."""
    return PythonRuntime(settings, register=register)


async def serve(settings: PythonRuntimeSettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    runtime = create_server(settings)
    await run_until_signalled(runtime, f"python runtime {runtime.runtime_id}", settings.announce_file)


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(PythonRuntimeSettings, argv, prog="python -m meshserve.runtimes.python")
    setup_logging(settings.log_level)
    asyncio.run(serve(settings))
