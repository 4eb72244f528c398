"""Calls through the router reach Triton unchanged: results equal Triton's own, streams included."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from e2e.helpers import ROOT, rpc_error

from meshserve.local.triton import TritonServer
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import countdown_stream, infer_simple, simple_inputs

pytestmark = [pytest.mark.triton]

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


def test_simple_through_router_equals_direct(router_address: str, triton_server: TritonServer) -> None:
    routed = infer_simple(router_address, A, B)
    direct = infer_simple(triton_server.address, A, B)
    np.testing.assert_array_equal(routed[0], direct[0])
    np.testing.assert_array_equal(routed[1], direct[1])
    np.testing.assert_array_equal(routed[0], A + B)
    np.testing.assert_array_equal(routed[1], A - B)


def test_simple_batch_of_eight(router_address: str) -> None:
    a = np.arange(8 * 16, dtype=np.int32).reshape(8, 16)
    b = np.ones((8, 16), dtype=np.int32)
    total, diff = infer_simple(router_address, a, b)
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)


def test_triton_refusal_passes_through(router_address: str, triton_server: TritonServer) -> None:
    """A batch over max_batch_size: the router hands back Triton's own status and message."""
    a = np.zeros((9, 16), dtype=np.int32)
    errors = []
    for address in (router_address, triton_server.address):
        client = tc.InferenceServerClient(address)
        with pytest.raises(tc.InferenceServerException) as caught:
            client.infer("simple", simple_inputs(a, a))
        errors.append((caught.value.status(), caught.value.message()))
        client.close()
    assert errors[0] == errors[1]
    assert "batch" in errors[0][1]


def test_onnx_model_equals_direct_and_onnxruntime(router_address: str, triton_server: TritonServer) -> None:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    results = []
    for address in (router_address, triton_server.address):
        client = tc.InferenceServerClient(address)
        value = tc.InferInput("input", list(rows.shape), "FP32")
        value.set_data_from_numpy(rows)
        reply = client.infer("iris-onnx", [value])
        results.append((reply.as_numpy("label"), reply.as_numpy("probabilities")))
        client.close()
    session = ort.InferenceSession(str(ROOT / "examples" / "triton" / "iris-onnx" / "1" / "model.onnx"))
    label, probabilities = session.run(["label", "probabilities"], {"input": rows})
    for got_label, got_probabilities in results:
        np.testing.assert_array_equal(got_label, label)
        np.testing.assert_array_equal(got_probabilities, probabilities)
    assert list(label) == [0, 2, 1]


def test_decoupled_stream_through_router_equals_direct(router_address: str, triton_server: TritonServer) -> None:
    routed = countdown_stream(router_address, [3, 0, 2])
    direct = countdown_stream(triton_server.address, [3, 0, 2])
    assert routed == direct == [("r0", 3), ("r0", 2), ("r0", 1), ("r2", 2), ("r2", 1)]


def test_metadata_and_ready_forwarded(router: grpc.Channel, triton_server: TritonServer) -> None:
    routed = oip_grpc.GRPCInferenceServiceStub(router)
    with grpc.insecure_channel(triton_server.address) as channel:
        direct = oip_grpc.GRPCInferenceServiceStub(channel)
        request = oip.ModelMetadataRequest(name="simple")
        assert routed.ModelMetadata(request, timeout=5) == direct.ModelMetadata(request, timeout=5)
    assert routed.ModelReady(oip.ModelReadyRequest(name="countdown"), timeout=5).ready


def test_unknown_model_names_triton_models(router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    error = rpc_error(lambda: stub.ModelInfer(oip.ModelInferRequest(model_name="simpel"), timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "simple" in error.details()
