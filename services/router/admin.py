"""RegistryService: the router's view of the registry, for the CLI and dashboards."""

from __future__ import annotations

from collections import Counter

from grpc.aio import ServicerContext as Context

from meshserve.errors import grpc_errors
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc
from meshserve.registry.cache import RegistryCache


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, cache: RegistryCache) -> None:
        self.cache = cache

    @grpc_errors
    async def ListRuntimes(self, request: pb.ListRuntimesRequest, context: Context) -> pb.ListRuntimesResponse:
        ready = Counter(p.runtime_id for p in self.cache.placements.values() if p.state == pb.MODEL_STATE_READY)
        response = pb.ListRuntimesResponse()
        for runtime_id in sorted(self.cache.runtimes):
            response.runtimes.add(runtime=self.cache.runtimes[runtime_id], ready_models=ready[runtime_id])
        return response

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            placements=[p for key, p in sorted(self.cache.placements.items())
                        if not request.name or key[0] == request.name],
            pipelines=[p for name, p in sorted(self.cache.pipelines.items())
                       if not request.name or name == request.name],
        )
