"""Inference through the Python runtime's gRPC API, and the errors callers get."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import skops.io as sio

from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc

XY = tuple[np.ndarray, np.ndarray]
Stub = pb_grpc.GRPCInferenceServiceStub


async def test_sklearn_matches_sklearn(stub: Stub, repository: Path, iris_xy: XY) -> None:
    x, _ = iris_xy
    reference = sio.load(repository / "iris" / "2" / "model.skops")
    for raw in (True, False):
        response = await stub.ModelInfer(build_request("iris", {"features": x}, raw=raw))
        assert response.model_name == "iris" and response.model_version == "2"  # latest
        outputs = decode_response(response)
        assert outputs["label"].dtype == np.int64 and outputs["probabilities"].dtype == np.float32
        np.testing.assert_array_equal(outputs["label"], reference.predict(x))
        np.testing.assert_allclose(outputs["probabilities"], reference.predict_proba(x), rtol=1e-6)


async def test_version_and_requested_outputs(stub: Stub, iris_xy: XY) -> None:
    x, _ = iris_xy
    request = build_request("iris", {"features": x[:5]}, model_version="1", outputs=["probabilities"],
                            request_id="req-7")
    response = await stub.ModelInfer(request)
    assert response.model_version == "1" and response.id == "req-7"
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert list(response.outputs[0].shape) == [5, 3]


async def test_onnx_model(stub: Stub, iris_xy: XY) -> None:
    x, y = iris_xy
    outputs = decode_response(await stub.ModelInfer(build_request("onnx_iris", {"features": x})))
    assert outputs["label"].dtype == np.int64
    assert (outputs["label"] == y).mean() > 0.9
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="onnx_iris"))
    assert meta.platform == "onnxruntime"


async def test_python_models(stub: Stub) -> None:
    outputs = decode_response(await stub.ModelInfer(build_request("doubler", {"x": np.array([1.0, 2.5])})))
    assert outputs["y"].tolist() == [3.0, 7.5]
    text = np.array([b"ab", b"cd"], dtype=object)
    outputs = decode_response(await stub.ModelInfer(build_request("echo", {"text": text})))
    assert outputs["text"].tolist() == [b"AB", b"CD"]


async def test_metadata_and_health(stub: Stub) -> None:
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    server = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "meshserve-python" and "model_repository" in server.extensions
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert meta.platform == "sklearn" and list(meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("label", "INT64"), ("probabilities", "FP32")]
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris", version="1"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="untrusted"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="nope"))).ready


async def test_stream_infer_continues_after_errors(stub: Stub, iris_xy: XY) -> None:
    x, _ = iris_xy
    requests = [
        build_request("iris", {"features": x[:2]}),
        build_request("nope", {"features": x[:2]}),
        build_request("iris", {"features": x[:3]}),
    ]
    replies = [r async for r in stub.ModelStreamInfer(iter(requests))]
    assert len(replies) == 3
    assert list(replies[0].infer_response.outputs[0].shape) == [2]
    assert "model 'nope' is not in this runtime's repository" in replies[1].error_message
    assert list(replies[2].infer_response.outputs[0].shape) == [3]


def _features(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (build_request("nope", {"features": _features((1, 4))}), grpc.StatusCode.NOT_FOUND,
         "model 'nope' is not in this runtime's repository; models: broken, doubler, echo"),
        (build_request("iris", {"features": _features((1, 4))}, model_version="9"), grpc.StatusCode.NOT_FOUND,
         "model 'iris' has no version '9'; versions: 1, 2"),
        (build_request("untrusted", {"features": _features((1, 4))}), grpc.StatusCode.FAILED_PRECONDITION,
         "is not loaded; load it first"),
        (build_request("iris", {"x": _features((1, 4))}), grpc.StatusCode.INVALID_ARGUMENT,
         "model 'iris' version '2': missing input 'features'; unknown input 'x'"),
        (build_request("iris", {"features": _features((1, 4)), "x": _features((1,))}),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'x'"),
        (build_request("iris", {"features": _features((1, 4), np.float64)}), grpc.StatusCode.INVALID_ARGUMENT,
         "input 'features' must be FP32, got FP64"),
        (build_request("iris", {"features": _features((1, 5))}), grpc.StatusCode.INVALID_ARGUMENT,
         r"input 'features' must have shape [-1, 4] (-1 = any), got [1, 5]"),
        (build_request("iris", {"features": _features((0, 4))}), grpc.StatusCode.INVALID_ARGUMENT,
         "input 'features' has an empty batch"),
        (build_request("iris", {"features": _features((1, 4))}, outputs=["score"]),
         grpc.StatusCode.INVALID_ARGUMENT, "has no output 'score'; its outputs are label, probabilities"),
        (build_request("iris", {"features": np.array([b"1"], dtype=object)}), grpc.StatusCode.INVALID_ARGUMENT,
         "input 'features' must be FP32, got BYTES"),
    ],
)
async def test_bad_requests(stub: Stub, request_: pb.ModelInferRequest, code: grpc.StatusCode,
                            message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(request_)
    assert err.value.code() == code
    assert message in (err.value.details() or "")


async def test_codec_errors_reach_the_caller(stub: Stub) -> None:
    request = build_request("iris", {"features": _features((2, 4))})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'features': raw contents hold 28 bytes" in (err.value.details() or "")
