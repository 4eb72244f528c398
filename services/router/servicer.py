"""Inference-protocol calls the router answers for the whole mesh, or fans out."""

from __future__ import annotations

import asyncio
import functools
import time

import grpc
from google.protobuf.message import DecodeError
from grpc.aio import ServicerContext as Context

import meshserve
from meshserve.auth.access import Access, Principal
from meshserve.errors import DeadlineExceeded, InvalidArgument, MeshError, NotFound, Unavailable, grpc_errors
from meshserve.names import check_model_name
from meshserve.oip.repository import version_parameter
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import RegistryCache, Replica
from meshserve.tracing import OFF, Tracing

from .audit import Call, CallAudit
from .forward import forwarded_metadata
from .replicas import ConnectionPool
from .resolve import NotPlaced, Resolver
from .wire import string_field, string_fields

# The state shown for a version that no runtime holds ready: the most hopeful one.
_STATE_ORDER = [pb.MODEL_STATE_READY, pb.MODEL_STATE_LOADING, pb.MODEL_STATE_UNLOADING,
                pb.MODEL_STATE_FAILED, pb.MODEL_STATE_AVAILABLE, pb.MODEL_STATE_UNSPECIFIED]
_OIP_STATE = {
    pb.MODEL_STATE_READY: "READY", pb.MODEL_STATE_LOADING: "LOADING",
    pb.MODEL_STATE_UNLOADING: "UNLOADING", pb.MODEL_STATE_FAILED: "UNAVAILABLE",
    pb.MODEL_STATE_AVAILABLE: "UNAVAILABLE", pb.MODEL_STATE_UNSPECIFIED: "UNAVAILABLE",
}


def pipeline_metadata(pipeline: pb.Pipeline) -> oip.ModelMetadataResponse:
    """A pipeline described as a model: its inputs, and its outputs as the steps produce them."""
    return oip.ModelMetadataResponse(
        name=pipeline.name, platform="meshserve-pipeline",
        inputs=[oip.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
                for t in pipeline.inputs],
        outputs=[oip.ModelMetadataResponse.TensorMetadata(name=o.name, datatype=o.datatype, shape=o.shape)
                 for o in pipeline.outputs],
    )


class MeshServicer:
    """ServerLive/Ready/Metadata, ModelReady, ModelMetadata, RepositoryIndex/Load/Unload."""

    def __init__(self, cache: RegistryCache, resolver: Resolver, pool: ConnectionPool,
                 load_wait_s: float, access: Access, audit: CallAudit, *, tracing: Tracing = OFF) -> None:
        self.cache = cache
        self.resolver = resolver
        self.pool = pool
        self.load_wait_s = load_wait_s
        self.access = access
        self.audit = audit
        self.tracing = tracing  # the calls' trace ids, in their audit events
        self.component = "the router"  # who failed, in internal errors

    def _allow(self, context: Context, method: str, model: str, action: str) -> Principal:
        """The caller, if it may ``action`` on ``model``; else the refusal, audited."""
        call = Call(method, self.tracing)
        call.model = model
        try:
            call.principal = self.access.authenticate(context.invocation_metadata() or ())
            self.access.check(call.principal, model, action)
        except MeshError as e:
            self.audit.record(call, b"", None, e.code, e.message, context.peer(), forwarded_metadata(context))
            raise
        return call.principal

    def _caller(self, context: Context) -> Principal:
        return self.access.authenticate(context.invocation_metadata() or ())

    @grpc_errors
    async def server_live(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @grpc_errors
    async def server_ready(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.cache.synced.is_set())

    @grpc_errors
    async def server_metadata(self, request: oip.ServerMetadataRequest,
                              context: Context) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="meshserve", version=meshserve.__version__, extensions=["model_repository"]
        )

    @grpc_errors
    async def model_ready(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        self._allow(context, "ModelReady", request.name, "metadata")
        pipeline = self.cache.pipelines.get(request.name)
        if pipeline is not None:
            return oip.ModelReadyResponse(ready=not self._pipeline_blockers(pipeline))
        try:
            self.resolver.resolve(request.name, request.version)
        except (NotFound, Unavailable):
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=True)

    @grpc_errors
    async def model_metadata(self, request: bytes, context: Context) -> bytes:
        """Forwarded to a replica; the versions list is the whole mesh's."""
        name, version = string_fields(request, 1, 2)
        self._allow(context, "ModelMetadata", name, "metadata")
        pipeline = self.cache.pipelines.get(name)
        if pipeline is not None:
            return pipeline_metadata(pipeline).SerializeToString()
        try:
            resolved, replicas = self.resolver.resolve(name, version)
        except NotPlaced as missing:  # metadata of a catalog model not loaded yet: place it first
            await self.resolver.place(missing, context.time_remaining())
            resolved, replicas = self.resolver.resolve(name, version)
        if version and resolved != version:  # an alias: ask for the version it stands for
            request += string_field(2, resolved)
        conn = self.pool.choose(replicas)
        try:
            raw = await conn.unary("ModelMetadata")(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or e.code().name)
        response = oip.ModelMetadataResponse.FromString(raw)
        del response.versions[:]
        response.versions.extend(self.resolver.view(name).ready)
        return response.SerializeToString()

    @grpc_errors
    async def repository_index(self, request: oip.RepositoryIndexRequest,
                               context: Context) -> oip.RepositoryIndexResponse:
        if request.repository_name:
            raise InvalidArgument("the router has one mesh-wide repository: leave repository_name empty")
        principal = self._caller(context)
        visible = functools.partial(self.access.allowed, principal, action="metadata")
        response = oip.RepositoryIndexResponse()
        by_version: dict[tuple[str, str], list[pb.Placement]] = {}
        for (model, version, _), placement in self.cache.placements.items():
            if visible(model):
                by_version.setdefault((model, version), []).append(placement)
        for (model, version) in sorted(by_version):
            placements = by_version[(model, version)]
            best = min(placements, key=lambda p: _STATE_ORDER.index(p.state))
            if request.ready and best.state != pb.MODEL_STATE_READY:
                continue
            ready = sum(p.state == pb.MODEL_STATE_READY for p in placements)
            kinds = ",".join(sorted({p.runtime_kind for p in placements}))
            reason = f"runtime={kinds} replicas={ready}"
            failed = next((p for p in placements if p.state == pb.MODEL_STATE_FAILED), None)
            if failed is not None:
                reason += f" failed on {failed.runtime_id}: {failed.reason}"
            response.models.add(name=model, version=version, state=_OIP_STATE[best.state], reason=reason)
        for name, pipeline in sorted(self.cache.pipelines.items()):
            if not visible(name):
                continue
            blockers = self._pipeline_blockers(pipeline)
            if request.ready and blockers:
                continue
            reason = "pipeline: " + ", ".join(f"{s.name}={s.model}" for s in pipeline.steps)
            if blockers:
                reason += f"; not ready: {', '.join(blockers)}"
            response.models.add(name=name, state="UNAVAILABLE" if blockers else "READY", reason=reason)
        return response

    def _pipeline_blockers(self, pipeline: pb.Pipeline) -> list[str]:
        """The steps whose model cannot be called now."""
        blockers = []
        for step in pipeline.steps:
            try:
                self.resolver.resolve(step.model, step.version)
            except (NotFound, Unavailable, InvalidArgument):
                blockers.append(step.name)
        return blockers

    @grpc_errors
    async def repository_model_load(self, request: bytes, context: Context) -> bytes:
        return await self._fan_out("RepositoryModelLoad", request, context, loading=True)

    @grpc_errors
    async def repository_model_unload(self, request: bytes, context: Context) -> bytes:
        return await self._fan_out("RepositoryModelUnload", request, context, loading=False)

    async def _fan_out(self, method: str, request: bytes, context: Context, *, loading: bool) -> bytes:
        """Send a load or unload to every runtime that lists the model, then wait for the registry."""
        try:
            parsed = oip.RepositoryModelLoadRequest.FromString(request)  # unload has the same fields
        except DecodeError as e:
            raise InvalidArgument(f"{method} request is not a valid protobuf message") from e
        if parsed.repository_name:
            raise InvalidArgument("the router has one mesh-wide repository: leave repository_name empty")
        name = check_model_name(parsed.model_name)
        self._allow(context, method, name, "load")
        version = version_parameter(parsed.parameters)
        wanted = {pb.MODEL_STATE_READY, pb.MODEL_STATE_LOADING, pb.MODEL_STATE_FAILED}
        targets = {
            p.runtime_id: Replica(p.runtime_id, p.runtime_kind, p.address, p.link_address)
            for p in self.cache.placements_of(name)
            if (not version or p.version == version) and (loading or p.state in wanted)
        }
        if not targets:
            view = self.resolver.view(name)  # NotFound listing the models, if unknown
            if version and version not in view.versions:
                raise NotFound(f"model {name!r} has no version {version!r}; versions: {', '.join(view.versions)}")
            return b""  # nothing holds it loaded: unloading is already done
        timeout = context.time_remaining()
        calls = [self.pool.get(r).unary(method)(request, timeout=timeout) for r in targets.values()]
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [(rid, r) for rid, r in zip(targets, results, strict=True) if isinstance(r, BaseException)]
        if errors:
            rid, err = errors[0]
            if isinstance(err, grpc.aio.AioRpcError):
                await context.abort(err.code(), f"{method} of {name!r} on {rid}: {err.details()}")
            raise err
        await self._await_registry(name, version, loading)
        return b""

    async def _await_registry(self, name: str, version: str, loading: bool) -> None:
        """Wait until this router's registry cache shows the load or unload."""
        deadline = time.monotonic() + self.load_wait_s
        while time.monotonic() < deadline:
            view = self.cache.models.get(name)
            ready = set(view.ready) if view is not None else set()
            done = (version in ready if version else bool(ready)) if loading else \
                (version not in ready if version else not ready)
            if done:
                return
            await asyncio.sleep(0.01)
        what = f"version {version!r} of {name!r}" if version else repr(name)
        raise DeadlineExceeded(f"{what}: the runtimes answered but the registry did not show the "
                               f"{'load' if loading else 'unload'} within {self.load_wait_s:.0f} s")
