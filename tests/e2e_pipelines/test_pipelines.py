"""Pipelines through a real mesh: results equal the steps called by hand, errors name the step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually, rpc_error

from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
TEXTS = np.array([b"I love it, great and fast", b"terrible, slow and broken", b"c'est parfait, j'adore",
                  b"nothing to say"], dtype=object)


def meshserve(mesh: LocalMesh, *args: str) -> subprocess.CompletedProcess[str]:
    """The command against the mesh's router (dev mode: callers without a key may change pipelines)."""
    env = {**os.environ, "COLUMNS": "200", "MESHSERVE_ROUTER": mesh.router_address}
    env.pop("MESHSERVE_API_KEY", None)
    return subprocess.run([MESHSERVE, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def call(stub: oip_grpc.GRPCInferenceServiceStub, model: str, inputs: dict[str, np.ndarray],
         request_id: str = "") -> dict[str, np.ndarray]:
    return decode_response(stub.ModelInfer(build_request(model, inputs, request_id=request_id), timeout=15))


def test_pipeline_equals_its_steps_called_by_hand(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    result = call(stub, "sentiment", {"text": TEXTS})
    features = call(stub, "text-features", {"text": TEXTS})
    score = call(stub, "sentiment-glm", {"pos": features["pos"], "neg": features["neg"]})
    label = call(stub, "sentiment-label", {"prob": score["prob"]})
    np.testing.assert_array_equal(result["probability"], score["prob"])  # bit for bit
    np.testing.assert_array_equal(result["label"], label["label"])
    assert list(result["label"][:3]) == [b"positive", b"negative", b"positive"]


def test_pipeline_reads_like_a_model(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name="sentiment"), timeout=5)
    assert meta.platform == "meshserve-pipeline"
    assert [(t.name, t.datatype) for t in meta.inputs] == [("text", "BYTES")]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("label", "BYTES"), ("probability", "FP64")]
    assert stub.ModelReady(oip.ModelReadyRequest(name="sentiment"), timeout=5).ready
    index = {m.name: m for m in stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5).models}
    assert index["sentiment"].state == "READY"
    assert "features=text-features" in index["sentiment"].reason


def test_requested_outputs_and_bad_inputs(stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    request = build_request("sentiment", {"text": TEXTS[:1]}, outputs=["label"])
    reply = stub.ModelInfer(request, timeout=15)
    assert [o.name for o in reply.outputs] == ["label"]
    error = rpc_error(lambda: call(stub, "sentiment", {"words": TEXTS}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing text" in error.details()
    error = rpc_error(lambda: call(stub, "sentiment", {"text": np.array([1.0])}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "is BYTES, not FP64" in error.details()


def test_a_diamond_runs_its_independent_steps(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub,
                                              tmp_yaml: Path) -> None:
    tmp_yaml.write_text(textwrap.dedent("""
        name: diamond
        inputs:
          - {name: good, datatype: BYTES, shape: [-1]}
          - {name: bad, datatype: BYTES, shape: [-1]}
        steps:
          - {name: left, model: text-features, inputs: {text: inputs.good}}
          - {name: right, model: text-features, inputs: {text: inputs.bad}}
          - {name: score, model: sentiment-glm, inputs: {pos: left.pos, neg: right.neg}}
        outputs:
          - {name: prob, from: score.prob}
    """))
    done = meshserve(mesh, "pipeline", "apply", str(tmp_yaml))
    assert done.returncode == 0, done.stderr
    good, bad = np.array([b"great love"], dtype=object), np.array([b"awful"], dtype=object)
    result = call(stub, "diamond", {"good": good, "bad": bad})  # the router answers once it serves it
    expected = call(stub, "sentiment-glm", {"pos": np.array([2.0]), "neg": np.array([1.0])})["prob"]
    np.testing.assert_array_equal(result["prob"], expected)
    shown = meshserve(mesh, "pipeline", "show", "diamond")
    assert "left" in shown.stdout and "prob <- score.prob" in shown.stdout, shown.stdout
    done = meshserve(mesh, "pipeline", "rm", "diamond")
    assert done.returncode == 0 and "pipeline 'diamond' removed" in done.stdout, done.stderr
    assert rpc_error(lambda: call(stub, "diamond", {"good": good, "bad": bad})).code() == grpc.StatusCode.NOT_FOUND
    done = meshserve(mesh, "pipeline", "rm", "diamond")
    assert done.returncode == 1 and "no pipeline named 'diamond'" in done.stderr, done.stderr


def test_a_failing_step_is_named(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub, tmp_yaml: Path) -> None:
    # countdown is decoupled: Triton refuses it a unary ModelInfer, at call time.
    tmp_yaml.write_text(textwrap.dedent("""
        name: count-once
        inputs: [{name: n, datatype: INT32, shape: [1]}]
        steps: [{name: count, model: countdown, inputs: {N: inputs.n}}]
        outputs: [{name: count, from: count.COUNT}]
    """))
    assert meshserve(mesh, "pipeline", "apply", str(tmp_yaml)).returncode == 0
    error = assert_eventually(
        lambda: rpc_error(lambda: call(stub, "count-once", {"n": np.array([2], dtype=np.int32)})),
        retry_on=(AssertionError,))
    assert "pipeline 'count-once', step 'count' (model 'countdown')" in error.details(), error.details()


@pytest.mark.parametrize(("body", "words"), [
    ("steps: [{name: a, model: nosuch, inputs: {x: inputs.text}}]\noutputs: [{name: y, from: a.y}]",
     "step 'a' (model 'nosuch'): NOT_FOUND"),
    ("steps:\n  - {name: a, model: text-features, inputs: {text: b.pos}}\n"
     "  - {name: b, model: text-features, inputs: {text: a.pos}}\noutputs: [{name: y, from: a.pos}]",
     "form a cycle"),
    ("steps: [{name: a, model: text-features, inputs: {txt: inputs.text}}]\noutputs: [{name: y, from: a.pos}]",
     "the model has no input 'txt'"),
    ("steps: [{name: a, model: sentiment-glm, inputs: {pos: inputs.text, neg: inputs.text}}]\n"
     "outputs: [{name: y, from: a.prob}]", "input 'neg' is FP64 but 'inputs.text' is BYTES"),
    ("steps: [{name: a, model: simple, inputs: {INPUT0: inputs.ints, INPUT1: inputs.ints}}]\n"
     "outputs: [{name: y, from: a.OUTPUT0}]", "has shape [-1, 16] but 'inputs.ints' has shape [-1]"),
    ("steps: [{name: a, model: sentiment-glm, inputs: {pos: a2.pos}}]\noutputs: [{name: y, from: a.prob}]",
     "no step of this pipeline"),
    ("steps: [{name: a, model: text-features, inputs: {text: inputs.text}}]\noutputs: [{name: y, from: a.nope}]",
     "which no step produces"),
    ("stepz: []", "unknown field 'stepz'"),  # refused by the command, before the router
])
def test_invalid_pipelines_are_refused_and_nothing_is_stored(mesh: LocalMesh, tmp_yaml: Path, body: str,
                                                             words: str) -> None:
    tmp_yaml.write_text("name: broken-one\ninputs:\n  - {name: text, datatype: BYTES, shape: [-1]}\n"
                        "  - {name: ints, datatype: INT32, shape: [-1]}\n" + body + "\n")
    done = meshserve(mesh, "pipeline", "apply", str(tmp_yaml))
    assert done.returncode == 1, done.stdout
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "broken-one" not in meshserve(mesh, "pipeline", "show").stdout


def test_a_pipeline_may_not_take_a_models_name(mesh: LocalMesh, tmp_yaml: Path) -> None:
    tmp_yaml.write_text("name: iris\ninputs: [{name: t, datatype: BYTES, shape: [-1]}]\n"
                        "steps: [{name: a, model: text-features, inputs: {text: inputs.t}}]\n"
                        "outputs: [{name: y, from: a.pos}]\n")
    done = meshserve(mesh, "pipeline", "apply", str(tmp_yaml))
    assert done.returncode == 1 and "a model named 'iris' exists" in done.stderr


def test_every_step_is_audited_under_the_pipeline_call(mesh: LocalMesh,
                                                       stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    request_id = f"pipe-{time.time_ns()}"
    call(stub, "sentiment", {"text": TEXTS[:1]}, request_id=request_id)

    def events() -> list[audit_pb2.CallEvent]:
        with grpc.insecure_channel(mesh.audit_address) as channel:
            found = [r.record.event for r in audit_pb2_grpc.AuditServiceStub(channel).Query(
                audit_pb2.QueryRequest(request_id=request_id, limit=100), timeout=10)]
        assert len(found) == 4, found
        return found
    found = assert_eventually(events, timeout=15)
    pipeline = next(e for e in found if e.model == "sentiment")
    assert pipeline.runtime_kind == "pipeline" and not pipeline.parent_request_id
    steps = {e.model: e for e in found if e.parent_request_id == request_id}
    assert {m: e.runtime_kind for m, e in steps.items()} == {
        "text-features": "python", "sentiment-glm": "r", "sentiment-label": "triton"}
