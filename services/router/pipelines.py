"""Running a pipeline in the router: each step a ModelInfer to its model.

Steps run in waves: every step of a wave needs only earlier waves, so a wave's steps run
at once and a chain runs without creating a task. Tensors move between steps as
(datatype, shape, raw bytes), never decoded, except a caller's typed contents, which are
turned into raw bytes once. Each step is an ordinary routed call (aliases, splits,
retries and the mesh link apply) and is audited with the pipeline call's request id as
its parent; an error names the step that failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from meshserve import tracing
from meshserve.errors import InvalidArgument, MeshError, error_for
from meshserve.names import check_request_id
from meshserve.oip.codec import decode_tensor, raw_bytes
from meshserve.oip.datatypes import DATATYPES
from meshserve.pipelines import dependencies, order
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import Replica
from meshserve.tracing import OFF, Tracing

from .audit import Call, CallAudit, Metadata
from .metrics import PIPELINE_STEP, RouterMetrics

Tensor = tuple[str, list[int], bytes]  # datatype, shape, raw little-endian contents
Forward = Callable[[Call, bytes, Callable[[], "float | None"], Metadata], Coroutine[Any, Any, bytes]]
KIND = "pipeline"
ROUTER_PEER = "router"  # steps are called by the router on the pipeline's behalf


def _tensors(tensors: Any, raws: Any, kind: str) -> dict[str, Tensor]:
    if raws and len(raws) != len(tensors):
        raise InvalidArgument(f"{len(tensors)} {kind}s but {len(raws)} raw contents entries")
    out: dict[str, Tensor] = {}
    for i, t in enumerate(tensors):
        if raws:
            raw = raws[i]
        else:
            array = decode_tensor(t.name, t.datatype, t.shape, contents=t.contents, kind=kind)
            raw = raw_bytes(array, DATATYPES[t.datatype])
        out[t.name] = (t.datatype, list(t.shape), raw)
    return out


def _step_span(traced: Tracing, pipeline: str, step: pb.PipelineStep) -> tracing.Scope:
    return traced.span(f"pipeline step {pipeline}/{step.name}", {
        "meshserve.pipeline": pipeline, "meshserve.pipeline_step": step.name, "meshserve.model": step.model,
        "meshserve.requested_version": step.version})


class PipelineRunner:
    """Runs the pipelines of ``pipelines`` (the registry cache's) through ``forward``, traced with ``tracing``."""

    def __init__(self, forward: Forward, audit: CallAudit, pipelines: Mapping[str, pb.Pipeline],
                 metrics: RouterMetrics | None = None, tracing: Tracing = OFF) -> None:
        self.forward = forward
        self.tracing = tracing
        self.audit = audit
        self.pipelines = pipelines
        self.metrics = metrics if metrics is not None else RouterMetrics()
        self._plans: dict[str, tuple[pb.Pipeline, list[list[pb.PipelineStep]]]] = {}

    async def run(self, call: Call, request: bytes, time_remaining: Callable[[], float | None],
                  metadata: Metadata) -> bytes:
        if self.tracing.active:  # one span for the pipeline, its steps' spans inside it
            with self.tracing.span(f"pipeline {call.model}", {"meshserve.pipeline": call.model}) as current:
                response = await self._run(call, request, time_remaining, metadata)
                current.set_attribute("meshserve.request_id", call.request_id)
                return response
        return await self._run(call, request, time_remaining, metadata)

    async def _run(self, call: Call, request: bytes, time_remaining: Callable[[], float | None],
                   metadata: Metadata) -> bytes:
        pipeline = self.pipelines[call.model]
        try:
            parsed = oip.ModelInferRequest.FromString(request)
        except DecodeError as e:
            raise InvalidArgument("request is not a valid ModelInferRequest protobuf message") from e
        call.replica = Replica(f"{KIND}/{pipeline.name}", KIND, ROUTER_PEER, "")
        request_id = parsed.id or dict(metadata).get("x-request-id") or uuid.uuid4().hex
        call.request_id = check_request_id(str(request_id))  # the steps' parent id: one the trail can show
        tensors = self._inputs(pipeline, parsed)
        for wave in self._waves(pipeline):
            if len(wave) == 1:  # a chain: no task to create
                tensors.update(await self._step(pipeline.name, wave[0], tensors, call, time_remaining, metadata))
                continue
            tasks = [asyncio.create_task(self._step(pipeline.name, step, tensors, call, time_remaining, metadata))
                     for step in wave]
            try:
                for produced in await asyncio.gather(*tasks):
                    tensors.update(produced)
            finally:
                for task in tasks:
                    task.cancel()
        return self._response(pipeline, parsed, tensors).SerializeToString()

    def _waves(self, pipeline: pb.Pipeline) -> list[list[pb.PipelineStep]]:
        """The steps in waves: each wave needs only earlier waves, so its steps run at once.

        Computed once per version of the pipeline record.
        """
        cached = self._plans.get(pipeline.name)
        if cached is not None and cached[0] is pipeline:
            return cached[1]
        deps = dependencies(pipeline)
        steps = {s.name: s for s in pipeline.steps}
        depth: dict[str, int] = {}
        for name in order(pipeline):
            depth[name] = 1 + max((depth[d] for d in deps[name]), default=-1)
        waves: list[list[pb.PipelineStep]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name, level in depth.items():
            waves[level].append(steps[name])
        self._plans[pipeline.name] = (pipeline, waves)
        return waves

    @staticmethod
    def _inputs(pipeline: pb.Pipeline, parsed: oip.ModelInferRequest) -> dict[str, Tensor]:
        given = _tensors(parsed.inputs, parsed.raw_input_contents, "input")
        declared = {t.name: t for t in pipeline.inputs}
        unknown = sorted(set(given) - set(declared))
        missing = sorted(set(declared) - set(given))
        if unknown or missing:
            raise InvalidArgument(f"pipeline {pipeline.name!r} takes inputs {', '.join(declared)}"
                                  + (f"; missing {', '.join(missing)}" if missing else "")
                                  + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        for name, (datatype, _, _) in given.items():
            if datatype != declared[name].datatype:
                raise InvalidArgument(f"pipeline {pipeline.name!r} input {name!r} is {declared[name].datatype}, "
                                      f"not {datatype}")
        return {f"inputs.{name}": tensor for name, tensor in given.items()}

    async def _step(self, pipeline: str, step: pb.PipelineStep, tensors: Mapping[str, Tensor], parent_call: Call,
                    time_remaining: Callable[[], float | None], metadata: Metadata) -> dict[str, Tensor]:
        parent = parent_call.request_id
        request = oip.ModelInferRequest(model_name=step.model, model_version=step.version, id=parent)
        for model_input, source in step.inputs.items():
            datatype, shape, raw = tensors[source]
            request.inputs.add(name=model_input, datatype=datatype, shape=shape)
            request.raw_input_contents.append(raw)
        data = request.SerializeToString()
        call = Call("ModelInfer", self.tracing)
        call.parent_request_id = parent
        call.principal = parent_call.principal
        call.trusted = True  # the caller may call the pipeline; its steps run with the router's authority
        try:
            with _step_span(self.tracing, pipeline, step) if self.tracing.active else tracing.NO_SPAN:
                answer = await self.forward(call, data, time_remaining, metadata)
        except MeshError as e:
            self.metrics.done(PIPELINE_STEP, call, e.code)
            self.audit.record(call, data, None, e.code, e.message, ROUTER_PEER, metadata)
            raise error_for(e.code, f"pipeline {pipeline!r}, step {step.name!r} (model {step.model!r}): "
                                    f"{e.message}") from e
        self.metrics.done(PIPELINE_STEP, call, grpc.StatusCode.OK)
        journaled = self.audit.record(call, data, answer, grpc.StatusCode.OK, "", ROUTER_PEER, metadata)
        if journaled is not None:
            await journaled  # before the pipeline's answer leaves
        response = oip.ModelInferResponse.FromString(answer)
        outputs = _tensors(response.outputs, response.raw_output_contents, "output")
        return {f"{step.name}.{name}": tensor for name, tensor in outputs.items()}

    @staticmethod
    def _response(pipeline: pb.Pipeline, parsed: oip.ModelInferRequest,
                  tensors: Mapping[str, Tensor]) -> oip.ModelInferResponse:
        outputs = {o.name: o for o in pipeline.outputs}
        requested = [o.name for o in parsed.outputs] or list(outputs)
        unknown = [n for n in requested if n not in outputs]
        if unknown:
            raise InvalidArgument(f"pipeline {pipeline.name!r} has no output {', '.join(map(repr, unknown))}; "
                                  f"its outputs are {', '.join(outputs)}")
        response = oip.ModelInferResponse(model_name=pipeline.name, id=parsed.id)
        for name in requested:
            datatype, shape, raw = tensors[outputs[name].source]
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(raw)
        return response
