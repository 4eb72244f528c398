"""Pipeline files: parsing and the checks made before one is applied (metadata given, no mesh)."""

from __future__ import annotations

import pytest

from meshserve.errors import InvalidArgument
from meshserve.pipelines import check, check_fields, order, parse
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb

TENSOR = oip.ModelMetadataResponse.TensorMetadata
FEATURES = oip.ModelMetadataResponse(name="f", inputs=[TENSOR(name="text", datatype="BYTES", shape=[-1])],
                                     outputs=[TENSOR(name="pos", datatype="FP64", shape=[-1])])
SCORE = oip.ModelMetadataResponse(name="s", inputs=[TENSOR(name="pos", datatype="FP64", shape=[-1])],
                                  outputs=[TENSOR(name="prob", datatype="FP64", shape=[-1])])
GOOD = """
name: p
inputs: [{name: text, datatype: BYTES, shape: [-1]}]
steps:
  - {name: b, model: s, inputs: {pos: a.pos}}
  - {name: a, model: f, version: stable, inputs: {text: inputs.text}}
outputs: [{name: prob, from: b.prob}]
"""


def test_a_good_pipeline_checks_clean_and_learns_its_output_types() -> None:
    pipeline = parse(GOOD)
    assert order(pipeline) == ["a", "b"]
    assert pipeline.steps[1].version == "stable"
    assert check(pipeline, {"a": FEATURES, "b": SCORE}, models={"f", "s"}, pipelines=set()) == []
    assert (pipeline.outputs[0].datatype, list(pipeline.outputs[0].shape)) == ("FP64", [-1])


@pytest.mark.parametrize(("text", "words"), [
    ("name: p\nsteps: []\n", "steps must be a list"),
    ("name: ../p\nsteps: [{name: a, model: f}]\n", "invalid model name"),
    ("name: p\nstepz: []\n", "unknown field 'stepz'"),
    ("name: p\ninputs: [{name: t, datatype: TEXT}]\nsteps: [{name: a, model: f}]\n", "datatype 'TEXT'"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_malformed_files_are_refused_with_the_place(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse(text)


def test_every_problem_is_reported_at_once() -> None:
    pipeline = parse(GOOD.replace("{pos: a.pos}", "{pos: inputs.text, extra: a.pos}"))
    problems = check(pipeline, {"a": FEATURES, "b": SCORE}, models={"f", "s", "p"}, pipelines={"s"})
    text = "\n".join(problems)
    assert "a model named 'p' exists" in text
    assert "pipelines cannot call pipelines" in text


def test_type_and_mapping_problems() -> None:
    pipeline = parse(GOOD.replace("{pos: a.pos}", "{pos: inputs.text, extra: a.pos}"))
    text = "\n".join(check(pipeline, {"a": FEATURES, "b": SCORE}, models={"f", "s"}, pipelines=set()))
    assert "input 'pos' is FP64 but 'inputs.text' is BYTES" in text
    assert "the model has no input 'extra'" in text


def test_the_router_checks_a_record_as_a_file_would_be() -> None:
    """A record sent to the router by another client gets the checks parse() makes on a file."""
    assert check_fields(parse(GOOD)).name == "p"
    for mangle, words in (
        (lambda p: setattr(p, "name", "../p"), "invalid model name"),
        (lambda p: p.steps[0].__setattr__("model", ""), "model name is empty"),
        (lambda p: p.steps[0].__setattr__("version", "a/b"), "invalid model version"),
        (lambda p: p.inputs[0].__setattr__("datatype", "TEXT"), "datatype 'TEXT'"),
        (lambda p: p.inputs[0].shape.append(-2), "shape must be a list of sizes"),
        (lambda p: p.ClearField("steps"), "steps must be a list of 1 to 64"),
        (lambda p: p.steps.extend([pb.PipelineStep(name=f"s{i}", model="f") for i in range(64)]), "1 to 64"),
    ):
        pipeline = parse(GOOD)
        mangle(pipeline)
        with pytest.raises(InvalidArgument, match=words):
            check_fields(pipeline)
