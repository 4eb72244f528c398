"""RegistryService: the router's view of the registry, and the one door for route and pipeline changes.

Reading needs ``metadata`` on what is shown. Changing a route, an alias or a pipeline
needs ``admin`` on the model's (or pipeline's) name; every change, made or refused, is an
audit event (method ``UpdateRoute``, ``ApplyPipeline``, ``DeletePipeline``). In dev mode
callers without a key are admins too (the local mesh's walkthrough needs no key), and
each change they make is logged as a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aetcd
import grpc
from grpc.aio import ServicerContext as Context

from meshserve import pipelines, routes
from meshserve.auth.access import Access, Principal
from meshserve.errors import (
    InvalidArgument,
    MeshError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    grpc_errors,
    internal_error,
)
from meshserve.names import check_model_name
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc
from meshserve.registry.cache import RegistryCache
from meshserve.tracing import OFF, Tracing

from .audit import Call, CallAudit
from .forward import forwarded_metadata
from .replicas import ConnectionPool
from .resolve import Resolver

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long a change waits for this router's own registry watch to show it (read your writes).
FOLLOW_S = 2.0
# What a route change's readiness wait leaves of the call's deadline, to answer in time.
DEADLINE_MARGIN_S = 1.0
METADATA_TIMEOUT_S = 10.0
_WHAT = {"UpdateRoute": "change the route of", "ApplyPipeline": "apply the pipeline",
         "DeletePipeline": "remove the pipeline"}


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Listing runtimes needs metadata access to every model ("*"); listing models and routes shows those the
    caller may see; changes need ``admin`` on the name they change."""

    def __init__(self, cache: RegistryCache, access: Access, audit: CallAudit, resolver: Resolver,
                 pool: ConnectionPool, *, tracing: Tracing = OFF) -> None:
        self.cache = cache
        self.access = access
        self.audit = audit
        self.resolver = resolver
        self.pool = pool
        self.tracing = tracing  # the calls' trace ids, in their audit events
        self.component = "the router"  # who failed, in internal errors
        if access.dev_mode:
            log.warning("DEV MODE: callers WITHOUT A KEY may also change routes, aliases and pipelines")

    # -- reading ---------------------------------------------------------------------------

    @grpc_errors
    async def ListRuntimes(self, request: pb.ListRuntimesRequest, context: Context) -> pb.ListRuntimesResponse:
        self._allow(context, "ListRuntimes", "*", "metadata")
        ready = Counter(p.runtime_id for p in self.cache.placements.values() if p.state == pb.MODEL_STATE_READY)
        response = pb.ListRuntimesResponse()
        for runtime_id in sorted(self.cache.runtimes):
            response.runtimes.add(runtime=self.cache.runtimes[runtime_id], ready_models=ready[runtime_id])
        return response

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        shown = self._shown(context, "ListModels", request.name)
        return pb.ListModelsResponse(
            placements=[p for key, p in sorted(self.cache.placements.items()) if shown(key[0])],
            pipelines=[p for name, p in sorted(self.cache.pipelines.items()) if shown(name)],
            catalog=[c for name, c in sorted(self.cache.catalog.items()) if shown(name)],
        )

    @grpc_errors
    async def ListRoutes(self, request: pb.ListRoutesRequest, context: Context) -> pb.ListRoutesResponse:
        shown = self._shown(context, "ListRoutes", request.model)
        return pb.ListRoutesResponse(routes=[r for model, r in sorted(self.cache.routes.items()) if shown(model)])

    def _allow(self, context: Context, method: str, model: str, action: str | None) -> Principal:
        """The caller, if it may ``action`` on ``model`` (None: any caller with a valid key or none); else the
        refusal, audited."""
        call = Call(method, self.tracing)
        call.model = model
        try:
            call.principal = self.access.authenticate(context.invocation_metadata() or ())
            if action is not None:
                self.access.check(call.principal, model, action)
        except MeshError as e:
            self.audit.record(call, b"", None, e.code, e.message, context.peer(), forwarded_metadata(context))
            raise
        return call.principal

    def _shown(self, context: Context, method: str, only: str) -> Callable[[str], bool]:
        """Whether the caller may see a name (``metadata``), and it is ``only`` when that is set."""
        principal = self._allow(context, method, only, None)

        def shown(name: str) -> bool:
            return (not only or name == only) and self.access.allowed(principal, name, "metadata")
        return shown

    # -- changing --------------------------------------------------------------------------

    @grpc_errors
    async def UpdateRoute(self, request: pb.UpdateRouteRequest, context: Context) -> pb.UpdateRouteResponse:
        model = check_model_name(request.model)

        async def update(_: Principal) -> pb.UpdateRouteResponse:
            change = _route_change(request)
            wait_s = request.wait_ms / 1000
            remaining = context.time_remaining()
            if remaining is not None:
                wait_s = max(0.0, min(wait_s, remaining - DEADLINE_MARGIN_S))
            route = await routes.update_route(self.cache.client, model, change, lambda: self.cache.placements_of(model),
                                              wait_s=wait_s)
            empty = not (route.aliases or route.default_version or route.splits or route.shadows)
            await self._follow(lambda: self.cache.routes.get(model) == (None if empty else route))
            return pb.UpdateRouteResponse(route=route)
        return await self._change(context, "UpdateRoute", model, update)

    @grpc_errors
    async def ApplyPipeline(self, request: pb.ApplyPipelineRequest, context: Context) -> pb.ApplyPipelineResponse:
        pipeline = pb.Pipeline()
        pipeline.CopyFrom(request.pipeline)
        name = check_model_name(pipeline.name)

        async def apply(principal: Principal) -> pb.ApplyPipelineResponse:
            pipelines.check_fields(pipeline)
            self._may_run_steps(principal, pipeline)
            timeout = min(METADATA_TIMEOUT_S, context.time_remaining() or METADATA_TIMEOUT_S)
            found = await asyncio.gather(*(self._step_metadata(step, timeout) for step in pipeline.steps))
            metadata = {step.name: meta for step, meta in zip(pipeline.steps, found, strict=True)}
            others = set(self.cache.pipelines) - {name}
            stored = await pipelines.store(self.cache.client, pipeline, metadata, self.cache.models, others)
            await self._follow(lambda: self.cache.pipelines.get(name) == stored)
            return pb.ApplyPipelineResponse(pipeline=stored)
        return await self._change(context, "ApplyPipeline", name, apply)

    @grpc_errors
    async def DeletePipeline(self, request: pb.DeletePipelineRequest,
                             context: Context) -> pb.DeletePipelineResponse:
        name = check_model_name(request.name)

        async def delete(_: Principal) -> pb.DeletePipelineResponse:
            await pipelines.delete(self.cache.client, name)
            await self._follow(lambda: name not in self.cache.pipelines)
            return pb.DeletePipelineResponse()
        return await self._change(context, "DeletePipeline", name, delete)

    async def _change(self, context: Context, method: str, name: str,
                      work: Callable[[Principal], Awaitable[T]]) -> T:
        """``work`` done for an admin of ``name``; the outcome, whatever it is, audited."""
        call = Call(method, self.tracing)
        call.model = name
        code, message = grpc.StatusCode.OK, ""
        try:
            call.principal = self.access.authenticate(context.invocation_metadata() or ())
            self._check_admin(call.principal, method, name)
            done = await work(call.principal)
            if call.principal.anonymous and self.access.dev_mode:
                log.warning("DEV MODE: a caller without a key (%s) did %s %r", context.peer(), method, name)
            return done
        except MeshError as e:
            code, message = e.code, e.message
            raise
        except aetcd.ClientError as e:
            error = Unavailable(f"the registry (etcd at {self.cache.endpoint}) did not answer: {e}; try again")
            code, message = error.code, error.message
            raise error from e
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "the caller went away"
            raise
        except Exception as e:  # a bug: audited and answered with an error id, the details in the log
            internal = internal_error(e, self.component)
            code, message = internal.code, internal.message
            raise internal from e
        finally:
            self.audit.record(call, b"", None, code, message, context.peer(), forwarded_metadata(context))

    def _check_admin(self, principal: Principal, method: str, name: str) -> None:
        if self.access.allowed(principal, name, "admin") or (principal.anonymous and self.access.dev_mode):
            return
        what = f"{_WHAT[method]} {name!r}"
        if principal.anonymous:
            raise Unauthenticated(f"only an admin of {name!r} may {what}: send an API key whose principal has the "
                                  "admin action on it ('authorization: Bearer <key>'; the meshserve command "
                                  "sends $MESHSERVE_API_KEY)")
        raise PermissionDenied(f"principal {principal.name!r} may not {what}: no access rule gives it the admin "
                               f"action on {name!r} (an operator can add one: `meshserve policy allow --principal "
                               f"{principal.name} --models {name} --actions admin`)")

    def _may_run_steps(self, principal: Principal, pipeline: pb.Pipeline) -> None:
        """A pipeline's callers run its steps as the pipeline: whoever applies it must be able to run them."""
        denied = sorted({s.model for s in pipeline.steps if not self.access.allowed(principal, s.model, "infer")})
        if denied:
            raise PermissionDenied(
                f"principal {principal.name!r} may not apply the pipeline {pipeline.name!r}: it may not infer on "
                f"{', '.join(map(repr, denied))}, and a pipeline's callers run its steps as the pipeline, so "
                "whoever applies it needs infer on every step's model")

    async def _step_metadata(self, step: pb.PipelineStep, timeout_s: float) -> oip.ModelMetadataResponse | str:
        """The step model's metadata as calls would reach it (aliases and routes resolved), or why not."""
        try:
            version, replicas = self.resolver.resolve(step.model, step.version)
            request = oip.ModelMetadataRequest(name=step.model, version=version)
            raw = await self.pool.choose(replicas).unary("ModelMetadata")(request.SerializeToString(),
                                                                          timeout=timeout_s)
        except MeshError as e:
            return f"{e.code.name}: {e.message}"
        except grpc.aio.AioRpcError as e:
            return f"{e.code().name}: {e.details()}"
        return oip.ModelMetadataResponse.FromString(raw)

    @staticmethod
    async def _follow(done: Callable[[], bool]) -> None:
        """Wait (briefly) until this router's registry watch shows a change it wrote."""
        deadline = time.monotonic() + FOLLOW_S
        while time.monotonic() < deadline:
            if done():
                return
            await asyncio.sleep(0.005)


def _route_change(request: pb.UpdateRouteRequest) -> Callable[[pb.Route], None]:
    """The domain change an UpdateRouteRequest describes."""
    which = request.WhichOneof("change")
    if which == "set_alias":
        return routes.set_alias(request.set_alias.alias, request.set_alias.version)
    if which == "remove_alias":
        return routes.remove_alias(request.remove_alias.alias)
    if which == "set_policy":
        policy = request.set_policy
        return routes.set_policy(policy.default_version, [(s.version, s.weight) for s in policy.splits],
                                 policy.sticky_header, list(policy.shadows), policy.sticky_principal)
    raise InvalidArgument("UpdateRoute needs a change: set_alias, remove_alias or set_policy")
