"""RegistryService: the router's view of the registry, for the CLI and dashboards."""

from __future__ import annotations

from collections import Counter

from grpc.aio import ServicerContext as Context

from meshserve.auth.access import Access
from meshserve.errors import grpc_errors
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc
from meshserve.registry.cache import RegistryCache


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Listing runtimes needs metadata access to every model ("*"); listing models shows those the caller may see."""

    def __init__(self, cache: RegistryCache, access: Access) -> None:
        self.cache = cache
        self.access = access

    @grpc_errors
    async def ListRuntimes(self, request: pb.ListRuntimesRequest, context: Context) -> pb.ListRuntimesResponse:
        self.access.check(self.access.authenticate(context.invocation_metadata() or ()), "*", "metadata")
        ready = Counter(p.runtime_id for p in self.cache.placements.values() if p.state == pb.MODEL_STATE_READY)
        response = pb.ListRuntimesResponse()
        for runtime_id in sorted(self.cache.runtimes):
            response.runtimes.add(runtime=self.cache.runtimes[runtime_id], ready_models=ready[runtime_id])
        return response

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        principal = self.access.authenticate(context.invocation_metadata() or ())

        def shown(name: str) -> bool:
            return (not request.name or name == request.name) and self.access.allowed(principal, name, "metadata")
        return pb.ListModelsResponse(
            placements=[p for key, p in sorted(self.cache.placements.items()) if shown(key[0])],
            pipelines=[p for name, p in sorted(self.cache.pipelines.items()) if shown(name)],
        )
