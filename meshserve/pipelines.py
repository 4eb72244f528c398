"""Pipelines: a YAML file made into a validated :class:`Pipeline` record.

A pipeline is a named DAG of steps. Each step calls a model (name plus version or alias)
with inputs mapped from the pipeline's inputs or from earlier steps' outputs::

    name: sentiment
    inputs:
      - {name: text, datatype: BYTES, shape: [-1]}
    steps:
      - name: features
        model: text-features
        inputs: {text: inputs.text}
      - name: score
        model: sentiment-glm
        version: stable              # optional: a version or an alias
        inputs: {pos: features.pos, neg: features.neg}
    outputs:
      - {name: probability, from: score.prob}

:func:`parse` turns a file into a record (the CLI does that); the router, which alone
writes pipelines (``ApplyPipeline``, after checking the caller's ``admin`` action), checks
the record again with :func:`check_fields` and then :func:`check`, which refuses, with
every reason at once, a pipeline whose steps name unknown models, form a cycle, map
tensors that do not exist, or join tensors whose datatypes or shapes do not fit. It needs
each step model's metadata, which the router fetches.
"""

from __future__ import annotations

import graphlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aetcd
import grpc
import yaml

from meshserve.errors import InvalidArgument, NotFound, from_rpc_error
from meshserve.names import check_model_name, check_version
from meshserve.oip.datatypes import DATATYPES
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1.registry_pb2_grpc import RegistryServiceStub
from meshserve.registry import keys
from meshserve.tls import MeshTls, aio_channel

INPUTS = "inputs"
MAX_STEPS = 64


def _fields(data: Any, where: str, allowed: Iterable[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{where}: unknown field {', '.join(map(repr, unknown))}; "
                              f"fields: {', '.join(allowed)}")
    return data


def _check_tensor(datatype: str, shape: Iterable[int], where: str) -> None:
    if not all(d >= -1 for d in shape):
        raise InvalidArgument(f"{where}: shape must be a list of sizes (-1 for any)")
    if datatype not in DATATYPES:
        raise InvalidArgument(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")


def _tensor(data: Any, where: str) -> pb.PipelineTensor:
    data = _fields(data, where, ("name", "datatype", "shape"))
    shape = data.get("shape", [-1])
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{where}: shape must be a list of sizes (-1 for any)")
    datatype = str(data.get("datatype", ""))
    _check_tensor(datatype, shape, where)
    return pb.PipelineTensor(name=str(data.get("name", "")), datatype=datatype, shape=shape)


def parse(text: str, source: str = "pipeline") -> pb.Pipeline:
    """A Pipeline from YAML text; InvalidArgument naming the first thing malformed."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{source} is not valid YAML: {e}") from e
    data = _fields(data, source, ("name", "description", "inputs", "steps", "outputs"))
    pipeline = pb.Pipeline(name=check_model_name(str(data.get("name", ""))),
                           description=str(data.get("description", "")))
    for i, item in enumerate(data.get("inputs") or []):
        pipeline.inputs.append(_tensor(item, f"{source}: inputs[{i}]"))
    steps = data.get("steps") or []
    if not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS:
        raise InvalidArgument(f"{source}: steps must be a list of 1 to {MAX_STEPS} steps")
    for i, item in enumerate(steps):
        step = _fields(item, f"{source}: steps[{i}]", ("name", "model", "version", "inputs"))
        mapping = step.get("inputs") or {}
        if not isinstance(mapping, dict):
            raise InvalidArgument(f"{source}: steps[{i}].inputs must map model inputs to sources")
        pipeline.steps.add(name=str(step.get("name", "")), model=check_model_name(str(step.get("model", ""))),
                           version=check_version(str(step.get("version", ""))),
                           inputs={str(k): str(v) for k, v in mapping.items()})
    for i, item in enumerate(data.get("outputs") or []):
        out = _fields(item, f"{source}: outputs[{i}]", ("name", "from"))
        pipeline.outputs.add(name=str(out.get("name", "")), source=str(out.get("from", "")))
    return pipeline


def load(path: Path) -> pb.Pipeline:
    return parse(path.read_text(), str(path))


def check_fields(pipeline: pb.Pipeline) -> pb.Pipeline:
    """``pipeline`` if a file could have held it (names, versions, datatypes, shapes, step count), else InvalidArgument.

    :func:`parse` refuses all of these in a file; the router checks again what it is sent.
    """
    where = f"pipeline {pipeline.name!r}"
    check_model_name(pipeline.name)
    if not 1 <= len(pipeline.steps) <= MAX_STEPS:
        raise InvalidArgument(f"{where}: steps must be a list of 1 to {MAX_STEPS} steps")
    for i, t in enumerate(pipeline.inputs):
        _check_tensor(t.datatype, t.shape, f"{where}: inputs[{i}]")
    for step in pipeline.steps:
        check_model_name(step.model)
        check_version(step.version)
    return pipeline


def dependencies(pipeline: pb.Pipeline) -> dict[str, set[str]]:
    """Each step's name -> the steps it takes tensors from."""
    return {s.name: {src.split(".", 1)[0] for src in s.inputs.values()} - {INPUTS} for s in pipeline.steps}


def order(pipeline: pb.Pipeline) -> list[str]:
    """The steps in an order that respects their dependencies; InvalidArgument on a cycle."""
    try:
        return list(graphlib.TopologicalSorter(dependencies(pipeline)).static_order())
    except graphlib.CycleError as e:
        raise InvalidArgument(f"pipeline {pipeline.name!r}: steps {' -> '.join(e.args[1])} form a cycle") from e


def _fits(a: Iterable[int], b: Iterable[int]) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


Metadata = Mapping[str, "oip.ModelMetadataResponse | str"]


def check(pipeline: pb.Pipeline, metadata: Metadata, models: Iterable[str], pipelines: Iterable[str]) -> list[str]:
    """Every reason ``pipeline`` cannot be applied; [] when it can.

    ``metadata`` maps each step's name to its model's metadata, or to the error met
    fetching it; ``models`` and ``pipelines`` are the names already in the mesh.
    Fills in each output's datatype and shape.
    """
    name = pipeline.name
    problems: list[str] = []
    if name in set(models):
        problems.append(f"a model named {name!r} exists: a pipeline needs a name of its own")
    tensors: dict[str, tuple[str, list[int]]] = {}
    for t in pipeline.inputs:
        if not t.name or f"{INPUTS}.{t.name}" in tensors:
            problems.append(f"pipeline input {t.name!r}: names must be present and distinct")
        tensors[f"{INPUTS}.{t.name}"] = (t.datatype, list(t.shape))
    step_names = [s.name for s in pipeline.steps]
    for s in pipeline.steps:
        if not s.name or s.name == INPUTS or "." in s.name or step_names.count(s.name) > 1:
            problems.append(f"step name {s.name!r}: names must be present, distinct, without '.', not {INPUTS!r}")
    try:
        ordered = order(pipeline)
    except InvalidArgument as e:
        return [*problems, e.message]
    nested = set(pipelines) - {name}
    steps = {s.name: s for s in pipeline.steps}
    for step_name in ordered:
        step = steps.get(step_name)
        if step is None:
            problems.append(f"a step takes tensors from {step_name!r}, which is no step of this pipeline")
            continue
        where = f"step {step.name!r} (model {step.model!r})"
        if step.model in nested:
            problems.append(f"{where}: pipelines cannot call pipelines")
            continue
        meta = metadata.get(step.name)
        if not isinstance(meta, oip.ModelMetadataResponse):
            problems.append(f"{where}: {meta or 'no metadata'}")
            continue
        declared = {t.name: t for t in meta.inputs}
        for model_input, src in sorted(step.inputs.items()):
            if model_input not in declared:
                problems.append(f"{where}: the model has no input {model_input!r}; its inputs: "
                                f"{', '.join(declared) or 'none'}")
            elif src not in tensors:
                problems.append(f"{where}: input {model_input!r} comes from {src!r}, which is neither a pipeline "
                                "input (inputs.NAME) nor an output of an earlier step (STEP.OUTPUT)")
            else:
                datatype, shape = tensors[src]
                want = declared[model_input]
                if datatype != want.datatype:
                    problems.append(f"{where}: input {model_input!r} is {want.datatype} but {src!r} is {datatype}")
                elif not _fits(shape, want.shape):
                    problems.append(f"{where}: input {model_input!r} has shape {list(want.shape)} but {src!r} "
                                    f"has shape {shape}")
        for missing in sorted(set(declared) - set(step.inputs)):
            problems.append(f"{where}: model input {missing!r} is not mapped")
        for produced in meta.outputs:
            tensors[f"{step.name}.{produced.name}"] = (produced.datatype, list(produced.shape))
    if not pipeline.outputs:
        problems.append("a pipeline needs at least one output")
    for out in pipeline.outputs:
        if out.source not in tensors:
            problems.append(f"output {out.name!r} comes from {out.source!r}, which no step produces")
        else:
            out.datatype, shape = tensors[out.source]
            del out.shape[:]
            out.shape.extend(shape)
    return problems


async def store(client: aetcd.Client, pipeline: pb.Pipeline, metadata: Metadata, models: Iterable[str],
                pipelines: Iterable[str]) -> pb.Pipeline:
    """Write ``pipeline`` (see :func:`check` for the arguments) once it checks clean; InvalidArgument listing
    every problem otherwise, and nothing is written."""
    problems = check(pipeline, metadata, models, pipelines)
    if problems:
        raise InvalidArgument(f"pipeline {pipeline.name!r} not applied:\n  " + "\n  ".join(problems))
    pipeline.updated_at_unix_ms = int(time.time() * 1000)
    await client.put(keys.pipeline_key(pipeline.name), pipeline.SerializeToString())
    return pipeline


async def delete(client: aetcd.Client, name: str) -> None:
    """Remove the pipeline ``name``; NotFound when there is none."""
    if not await client.delete(keys.pipeline_key(check_model_name(name))):
        raise NotFound(f"no pipeline named {name!r}")


async def apply(pipeline: pb.Pipeline, *, router: str, timeout_s: float = 10.0,
                mesh_tls: MeshTls | None = None) -> pb.Pipeline:
    """Ask the router at ``router`` to check ``pipeline`` against the mesh and store it.

    The call carries no API key (over TLS with ``mesh_tls``, when given); the router's
    refusal comes back as the matching :class:`MeshError`.
    """
    async with aio_channel(router, mesh_tls) as channel:
        try:
            response: pb.ApplyPipelineResponse = await RegistryServiceStub(channel).ApplyPipeline(
                pb.ApplyPipelineRequest(pipeline=pipeline), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
    return response.pipeline
