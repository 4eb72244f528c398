"""OIP gRPC servicer of a runtime: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError

import meshserve
from meshserve.errors import (
    InvalidArgument,
    MeshError,
    Unimplemented,
    as_mesh_error,
    grpc_errors,
    internal_error,
    too_large,
)
from meshserve.link import MODEL_INFER
from meshserve.link.client import LINK_SYSTEM, SPAN_NAMES
from meshserve.oip.codec import decode_inputs, encode_response
from meshserve.oip.repository import artifact_parameters, version_parameter
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.tracing import OFF, Tracing

from .dataplane import DataPlane, InferResult
from .manifest import TensorSpec

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")
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
    """inference.GRPCInferenceService over a :class:`DataPlane`.

    No answer larger than ``max_message_bytes`` leaves: it is RESOURCE_EXHAUSTED instead,
    naming its size and the limit (gRPC would refuse it with a message of its own, and a
    router's link would take it for a broken peer). Calls over the mesh link get their
    server spans from ``tracing`` (gRPC calls get theirs from the gRPC server's).
    """

    def __init__(self, dataplane: DataPlane, kind: str, max_message_bytes: int, *, tracing: Tracing = OFF) -> None:
        self.dataplane = dataplane
        self.tracing = tracing
        self.server_name = f"meshserve-{kind}"
        self.component = f"the {kind} runtime"  # who failed, in internal errors
        self.max_message_bytes = max_message_bytes

    async def infer(self, data: bytes, wire: Callable[[pb.ModelInferResponse], T]) -> T:
        """One ModelInfer: the request's bytes in, ``wire`` of the response out (what is sent).

        Encoding the answer is part of the call the runtime's metrics count, its size
        check included.
        """
        request = _parse_infer_request(data)
        requested = [o.name for o in request.outputs]

        def answer(result: InferResult) -> T:
            return wire(encode_response(
                result.outputs, model_name=result.model, model_version=result.version, request_id=request.id,
                requested=requested, datatypes=result.datatypes,
            ))

        return await self.dataplane.answer(request.model_name, request.model_version, decode_inputs(request),
                                           requested, answer)

    def _check_size(self, response: pb.ModelInferResponse, size: int) -> None:
        if size > self.max_message_bytes:
            raise too_large(f"the answer of model {response.model_name!r} version {response.model_version!r}",
                            size, self.max_message_bytes, "this runtime sends")

    def _sized(self, response: pb.ModelInferResponse) -> pb.ModelInferResponse:
        self._check_size(response, response.ByteSize())
        return response

    def _serialized(self, response: pb.ModelInferResponse) -> bytes:
        data: bytes = response.SerializeToString()
        self._check_size(response, len(data))
        return data

    def _streamed(self, response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
        streamed = pb.ModelStreamInferResponse(infer_response=response)
        self._check_size(response, streamed.ByteSize())
        return streamed

    async def link_handler(self, method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        """Calls arriving over the mesh link: the same ModelInfer, framed instead of gRPC.

        With tracing on, each gets a server span continuing the trace in its metadata.
        """
        try:
            if method != MODEL_INFER:
                raise Unimplemented(f"mesh link method {method} is not served by this runtime")
            if self.tracing.active:
                with self.tracing.server_span(SPAN_NAMES[method], metadata.items(), LINK_SYSTEM):
                    return await self.infer(payload, self._serialized)
            return await self.infer(payload, self._serialized)
        except MeshError:
            raise
        except Exception as e:  # a bug: the caller gets an error id, the log the traceback
            raise internal_error(e, self.component) from e

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
        return await self.infer(request, self._sized)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for data in request_iterator:
            try:
                answer = await self.infer(data, self._streamed)
            except Exception as e:  # noqa: BLE001 - one bad request gets an error response: the stream goes on
                yield pb.ModelStreamInferResponse(error_message=as_mesh_error(e, self.component).message)
            else:
                yield answer

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
