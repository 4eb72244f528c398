"""Hostile requests through a real router and runtime: each answered with the right status, nothing breaks.

Complements test_bad_input.py (mistakes) with requests built to hurt: shapes whose
product overflows, names that try to leave the model repository or carry NUL bytes or
thousands of characters, unknown and oversized metadata. After the whole suite the
router and the runtime still serve iris.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import IRIS_ROWS, rpc_error

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
HUGE = 2**62


def shaped(shape: list[int], raw: bytes = b"\0" * 16, name: str = "features") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="iris")
    request.inputs.add(name=name, datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request


CASES = [
    ("shape product overflows int64", shaped([HUGE, HUGE, 4]), INVALID),
    ("shape product overflows, typed", oip.ModelInferRequest(model_name="iris", inputs=[
        oip.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[HUGE, 4])]), INVALID),
    ("huge but consistent-looking shape", shaped([2**31, 4]), INVALID),
    ("negative dimensions", shaped([-5, -4]), INVALID),
    ("raw contents shorter than declared", shaped([2, 4], raw=b"\0" * 12), INVALID),
    ("raw contents longer than declared", shaped([1, 4], raw=b"\0" * 4096), INVALID),
    ("model name climbing out", build_request("../../etc/passwd", {"features": IRIS_ROWS}), INVALID),
    ("model name with a NUL", build_request("iris\0x", {"features": IRIS_ROWS}), INVALID),
    ("model name of 5000 characters", build_request("i" * 5000, {"features": IRIS_ROWS}), INVALID),
    ("version climbing out", build_request("iris", {"features": IRIS_ROWS}, model_version="../2"), INVALID),
    ("version with a NUL", build_request("iris", {"features": IRIS_ROWS}, model_version="1\0"), INVALID),
    ("version of 5000 characters", build_request("iris", {"features": IRIS_ROWS}, model_version="1" * 5000),
     INVALID),
    ("input name of 5000 characters", shaped([1, 4], name="f" * 5000), INVALID),
]


@pytest.mark.parametrize(("request_", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_model_infer(router: grpc.Channel, request_: oip.ModelInferRequest, code: grpc.StatusCode) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    error = rpc_error(lambda: stub.ModelInfer(request_, timeout=10))
    assert error.code() == code, (error.code(), error.details())
    assert len(error.details()) < 2000 and "Traceback" not in error.details()


@pytest.mark.parametrize("name", ["../../etc", "iris/../../x", "\0", "a" * 5000, "..", "iris/1"])
def test_repository_load_of_hostile_names_reads_nothing(router: grpc.Channel, name: str) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    error = rpc_error(lambda: stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=name), timeout=10))
    assert error.code() in (INVALID, NOT_FOUND), (error.code(), error.details())


def test_unknown_and_oversized_metadata_are_harmless(router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    request = build_request("iris", {"features": IRIS_ROWS[:1]})
    metadata = (("x-unknown", "?"), ("x-binary-bin", b"\0\xff"), ("x-long", "v" * 6000),
                ("authorization-not", "Bearer x"))
    reply = stub.ModelInfer(request, timeout=10, metadata=metadata)
    assert decode_response(reply)["label"].shape == (1,)


def test_still_serving_after_the_hostile_suite(router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    reply = stub.ModelInfer(build_request("iris", {"features": IRIS_ROWS}), timeout=10)
    np.testing.assert_array_equal(decode_response(reply)["label"].shape, (len(IRIS_ROWS),))
