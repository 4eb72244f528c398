"""Loading and unloading one version of a model through the router."""

from __future__ import annotations

import time

import grpc
import numpy as np

from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub


def _version(version: str) -> dict[str, oip.ModelRepositoryParameter]:
    return {"version": oip.ModelRepositoryParameter(string_param=version)}


def _served_version(stub: GRPCInferenceServiceStub) -> str:
    request = build_request("twins", {"features": np.ones((1, 4), np.float32)})
    return str(stub.ModelInfer(request, timeout=5).model_version)


def _ready(stub: GRPCInferenceServiceStub, version: str) -> bool:
    return bool(stub.ModelReady(oip.ModelReadyRequest(name="twins", version=version), timeout=5).ready)


def test_unloading_one_version_leaves_the_other_serving(router: grpc.Channel) -> None:
    stub = GRPCInferenceServiceStub(router)
    assert _ready(stub, "1") and _ready(stub, "2")
    try:
        started = time.monotonic()
        stub.RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name="twins", parameters=_version("2")), timeout=15)
        assert time.monotonic() - started < 3.0  # returns once the registry shows it, not after a timeout
        assert not _ready(stub, "2") and _ready(stub, "1")
        assert _served_version(stub) == "1"  # the default is now the highest ready
    finally:
        stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="twins", parameters=_version("2")),
                                 timeout=15)
    assert _ready(stub, "2")
    assert _served_version(stub) == "2"


def test_unloading_a_version_that_does_not_exist_is_not_found(router: grpc.Channel) -> None:
    stub = GRPCInferenceServiceStub(router)
    try:
        stub.RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name="twins", parameters=_version("9")), timeout=5)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND and "versions: 1, 2" in e.details()
    else:
        raise AssertionError("unloading version 9 of twins should be NOT_FOUND")
