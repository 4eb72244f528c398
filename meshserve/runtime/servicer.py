"""OIP gRPC servicer of a runtime: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

import meshserve
from meshserve import tracing
from meshserve.errors import InvalidArgument, MeshError, Unimplemented, grpc_errors
from meshserve.link import MODEL_INFER
from meshserve.link.client import LINK_SYSTEM, SPAN_NAMES
from meshserve.oip.codec import decode_inputs, encode_response
from meshserve.oip.repository import artifact_parameters, version_parameter
from meshserve.protos.inference import grpc_service_pb2 as pb

from .dataplane import DataPlane
from .manifest import TensorSpec

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
EXTENSIONS = ["model_repository", "model_stream"]


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)



def _parse_infer_request(data: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as e:
        raise InvalidArgument("request is not a valid ModelInferRequest protobuf message") from e


# Methods whose requests arrive as bytes, parsed by the servicer (see add_service).
RAW_REQUEST_METHODS = ("ModelInfer", "ModelStreamInfer")


class InferenceServicer:
    """inference.GRPCInferenceService over a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane, kind: str) -> None:
        self.dataplane = dataplane
        self.server_name = f"meshserve-{kind}"

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        requested = [o.name for o in request.outputs]
        result = await self.dataplane.infer(
            request.model_name, request.model_version, decode_inputs(request), requested
        )
        return encode_response(
            result.outputs, model_name=result.model, model_version=result.version, request_id=request.id,
            requested=requested, datatypes=result.datatypes,
        )

    async def link_handler(self, method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        """Calls arriving over the mesh link: the same ModelInfer, framed instead of gRPC.

        With tracing on, each gets a server span continuing the trace in its metadata.
        """
        if method != MODEL_INFER:
            raise Unimplemented(f"mesh link method {method} is not served by this runtime")
        if tracing.active:
            with tracing.server_span(SPAN_NAMES[method], metadata.items(), LINK_SYSTEM):
                return (await self.infer(_parse_infer_request(payload))).SerializeToString()
        return (await self.infer(_parse_infer_request(payload))).SerializeToString()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=meshserve.__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @grpc_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        meta = self.dataplane.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=[_tensor_metadata(s) for s in meta.inputs],
            outputs=[_tensor_metadata(s) for s in meta.outputs],
        )

    @grpc_errors
    async def ModelInfer(self, request: bytes, context: Context) -> pb.ModelInferResponse:
        return await self.infer(_parse_infer_request(request))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for data in request_iterator:
            try:
                response = await self.infer(_parse_infer_request(data))
            except MeshError as e:
                yield pb.ModelStreamInferResponse(error_message=e.message)
            except Exception as e:  # one bad request must not end the stream
                log.exception("unhandled error in ModelStreamInfer")
                yield pb.ModelStreamInferResponse(error_message=f"internal error: {type(e).__name__}: {e}")
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)

    @grpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in self.dataplane.index(request.ready)
        ])

    @grpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        artifact, memory_bytes = artifact_parameters(request.parameters)
        await self.dataplane.load(request.model_name, version_parameter(request.parameters), artifact=artifact,
                                  memory_bytes=memory_bytes)
        return pb.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload(request.model_name, version_parameter(request.parameters))
        return pb.RepositoryModelUnloadResponse()
