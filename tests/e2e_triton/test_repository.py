"""Triton's model index in the registry: load and unload through the router, failed loads with their reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from e2e.helpers import assert_eventually, rpc_error

from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import index, infer_simple, ready_models

pytestmark = [pytest.mark.triton]

MESHSERVE = [str(Path(sys.executable).parent / "meshserve")]


def meshserve_models(router_address: str) -> str:
    done = subprocess.run([*MESHSERVE, "models", "--router", router_address], capture_output=True, text=True,
                          timeout=60, check=True, env={**os.environ, "COLUMNS": "250"})
    return done.stdout


def test_failed_load_shows_with_tritons_reason(router: grpc.Channel, router_address: str) -> None:
    broken = index(router)[("broken", "1")]
    assert broken.state == "UNAVAILABLE"
    assert "weights file missing: cannot initialize broken" in broken.reason
    row = next(line for line in meshserve_models(router_address).splitlines() if " broken " in line)
    assert "triton" in row and "failed" in row and "weights file missing" in row
    error = rpc_error(lambda: oip_grpc.GRPCInferenceServiceStub(router).ModelInfer(
        oip.ModelInferRequest(model_name="broken"), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "weights file missing" in error.details()


def test_unload_and_load_through_router(router: grpc.Channel, router_address: str) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    a = np.ones((1, 16), dtype=np.int32)
    try:
        stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="simple"), timeout=30)
        assert "simple" not in ready_models(router)  # the router waited for the registry
        with pytest.raises(tc.InferenceServerException) as caught:
            infer_simple(router_address, a, a)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "model 'simple' is not ready" in caught.value.message()
        # Triton answers the unload at once and finishes it in the background.
        assert_eventually(lambda: _assert_state(router, "simple", "UNAVAILABLE"))
        row = next(line for line in meshserve_models(router_address).splitlines() if " simple " in line)
        assert "available" in row and "triton" in row
    finally:
        stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="simple"), timeout=60)
    assert "simple" in ready_models(router)
    np.testing.assert_array_equal(infer_simple(router_address, a, a)[0], a + a)
    row = next(line for line in meshserve_models(router_address).splitlines() if " simple " in line)
    assert "ready" in row


def test_other_models_keep_serving_while_one_reloads(router: grpc.Channel, router_address: str) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="countdown"), timeout=60)
    def all_ready() -> None:
        assert ready_models(router) >= {"simple", "countdown", "iris-onnx"}
    assert_eventually(all_ready)


def _assert_state(router: grpc.Channel, model: str, state: str) -> None:
    assert index(router)[(model, "1")].state == state
