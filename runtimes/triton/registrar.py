"""The Triton registrar: a sidecar that puts one Triton server into the registry and keeps it true.

Triton knows nothing of etcd. The registrar looks at it every ``poll_s`` (ServerReady,
then RepositoryIndex) and mirrors what it sees into the registry under its own lease:
one runtime record of kind ``triton`` whose address is Triton's gRPC endpoint, and one
placement per model version with Triton's state and reason. Routers then call Triton
directly; the registrar is never on the call path.

- A model Triton failed to load is published as failed, with Triton's reason.
- When Triton stops answering (``misses`` looks in a row), the registrar revokes its
  lease: every model of that Triton leaves the registry at once. If the registrar itself
  dies, the lease expires within its TTL. When Triton answers again, it joins again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aetcd
import grpc
from tritonclient.grpc import service_pb2

from meshserve.auth import mesh as mesh_credential
from meshserve.grpcutil.server import channel_options
from meshserve.lifecycle import Parts, run_until_signalled
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.registration import Registration, now_ms
from meshserve.settings import load_settings, setup_logging
from meshserve.tls import aio_channel

from .settings import TritonRegistrarSettings

log = logging.getLogger(__name__)

KIND = "triton"
PLATFORM = "triton"
# (model, version) -> (state, reason, decoupled)
Snapshot = dict[tuple[str, str], tuple["pb.ModelState.ValueType", str, bool]]

_STATES = {
    "READY": pb.MODEL_STATE_READY,
    "LOADING": pb.MODEL_STATE_LOADING,
    "UNLOADING": pb.MODEL_STATE_UNLOADING,
}


def placement_state(state: str, reason: str) -> tuple[pb.ModelState.ValueType, str]:
    """Triton's (state, reason) of a model version as the registry's (state, reason).

    UNAVAILABLE means "not loaded": after an unload (reason "unloaded") or before any
    load it is available to load; with any other reason the load failed.
    """
    if state in _STATES:
        return _STATES[state], ""
    if not reason or reason == "unloaded":
        return pb.MODEL_STATE_AVAILABLE, ""
    return pb.MODEL_STATE_FAILED, reason


def model_is_decoupled(config: service_pb2.ModelConfigResponse) -> bool:
    return bool(config.config.model_transaction_policy.decoupled)


class TritonRegistrar:
    """Registers one Triton server (``start()``, ``stop()``), following it while it lives."""

    def __init__(self, settings: TritonRegistrarSettings) -> None:
        self.settings = settings
        self.address = settings.triton_address
        self.runtime_id = settings.runtime_id or f"triton-{self.address.replace(':', '-')}"
        self.mesh_tls = settings.mesh_tls()
        self._channel = aio_channel(self.address, self.mesh_tls, channel_options(settings.max_message_bytes))
        self._triton = GRPCInferenceServiceStub(self._channel)
        # Triton started by meshserve outside dev mode takes only calls presenting the mesh credential.
        self._metadata = mesh_credential.metadata(mesh_credential.read_optional(settings.mesh_credential_file),
                                                  triton=True)
        self._registration: Registration | None = None
        self._published: Snapshot = {}
        self.parts = Parts(f"Triton registrar {self.runtime_id}")
        self._first_look = asyncio.Event()
        # Whether each ready model version is decoupled, asked once per load (ModelConfig).
        self._decoupled: dict[tuple[str, str], bool] = {}
        self._model_config = self._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig",
            request_serializer=service_pb2.ModelConfigRequest.SerializeToString,
            response_deserializer=service_pb2.ModelConfigResponse.FromString,
        )

    @property
    def registered(self) -> bool:
        return self._registration is not None

    async def start(self) -> None:
        """Begin following Triton; returns after the first look (Triton may still be down)."""
        self.parts.on_stop("channel to Triton", self._channel.close)
        self.parts.on_stop("registration", lambda: self._leave("the registrar is stopping"))
        await self.parts.background(self._follow(), "triton-registrar")
        await self._first_look.wait()

    def announcement(self) -> dict[str, str]:
        return {"address": self.address, "runtime_id": self.runtime_id}

    async def stop(self, grace: float = 2.0) -> None:
        """Stop following Triton, take its models out of the registry, close the channel."""
        await self.parts.stop()

    async def _look(self) -> tuple[Snapshot, str] | None:
        """Triton's models and version, or None when it does not answer ready."""
        timeout = self.settings.call_timeout_s
        try:
            ready = await self._triton.ServerReady(oip.ServerReadyRequest(), timeout=timeout, metadata=self._metadata)
            if not ready.ready:
                return None
            index = await self._triton.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=timeout,
                                                      metadata=self._metadata)
            meta = await self._triton.ServerMetadata(oip.ServerMetadataRequest(), timeout=timeout,
                                                    metadata=self._metadata)
            seen: Snapshot = {}
            for m in index.models:
                state, reason = placement_state(m.state, m.reason)
                seen[(m.name, m.version)] = (state, reason, await self._is_decoupled(m, state))
        except grpc.aio.AioRpcError as e:
            log.debug("Triton at %s does not answer: %s", self.address, e.details())
            return None
        return seen, meta.version

    async def _is_decoupled(self, model: oip.RepositoryIndexResponse.ModelIndex,
                            state: pb.ModelState.ValueType) -> bool:
        key = (model.name, model.version)
        if state != pb.MODEL_STATE_READY:
            self._decoupled.pop(key, None)
            return False
        if key not in self._decoupled:
            try:
                config = await self._model_config(
                    service_pb2.ModelConfigRequest(name=model.name, version=model.version),
                    timeout=self.settings.call_timeout_s, metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as e:  # asked again at the next look
                log.debug("no config of %s version %s from Triton yet: %s", model.name, model.version, e.details())
                return False
            self._decoupled[key] = model_is_decoupled(config)
        return self._decoupled[key]

    async def _follow(self) -> None:
        misses = 0
        while True:
            try:
                seen = await self._look()
                if seen is None:
                    misses += 1
                    if misses >= self.settings.misses:
                        await self._leave(f"Triton at {self.address} stopped answering")
                else:
                    misses = 0
                    await self._mirror(*seen)
            except (aetcd.ClientError, TimeoutError) as e:
                log.warning("etcd at %s unreachable (%s); trying again", self.settings.etcd_endpoint, e)
            except Exception:
                log.exception("following Triton at %s failed; trying again", self.address)
            self._first_look.set()
            await asyncio.sleep(self.settings.poll_s)

    async def _mirror(self, seen: Snapshot, version: str) -> None:
        if self._registration is None:
            await self._join(seen, version)
            return
        for key, value in seen.items():
            if self._published.get(key) != value:
                await self._registration.publish(self._placement(key, value))
                log.info("Triton model %s version %s: %s %s", key[0], key[1] or "-",
                         pb.ModelState.Name(value[0]).removeprefix("MODEL_STATE_").lower(), value[1])
        for key in self._published.keys() - seen.keys():
            await self._registration.withdraw(*key)
        self._published = dict(seen)

    async def _join(self, seen: Snapshot, version: str) -> None:
        runtime = pb.Runtime(id=self.runtime_id, kind=KIND, address=self.address, started_at_unix_ms=now_ms(),
                             version=version, labels={"server": "triton"})
        registration = Registration(self.settings.etcd_endpoint, runtime, ttl=self.settings.lease_ttl_s,
                                    mesh_tls=self.mesh_tls, credentials=self.settings.etcd_credentials())
        for key, value in seen.items():
            await registration.publish(self._placement(key, value))
        await registration.start(wait=self.settings.etcd_wait_s)
        self._registration, self._published = registration, dict(seen)
        ready = sum(state == pb.MODEL_STATE_READY for state, _, _ in seen.values())
        log.info("Triton %s at %s joined the registry as %s with %d ready model versions",
                 version, self.address, self.runtime_id, ready)

    async def _leave(self, why: str) -> None:
        if self._registration is not None:
            registration, self._registration = self._registration, None
            self._published, self._decoupled = {}, {}
            await registration.stop()
            log.warning("%s: its models left the registry", why)

    @staticmethod
    def _placement(key: tuple[str, str], value: tuple[pb.ModelState.ValueType, str, bool]) -> pb.Placement:
        (model, version), (state, reason, decoupled) = key, value
        return pb.Placement(model=model, version=version, state=state, reason=reason, platform=PLATFORM,
                            decoupled=decoupled)


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(TritonRegistrarSettings, argv, prog="python -m meshserve.runtimes.triton")
    setup_logging(settings.log_level)

    async def run() -> None:
        registrar = TritonRegistrar(settings)
        await run_until_signalled(registrar, f"Triton registrar {registrar.runtime_id}", settings.announce_file)

    asyncio.run(run())
