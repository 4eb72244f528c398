"""A Triton answer larger than the router takes: RESOURCE_EXHAUSTED naming both sizes, the router unharmed."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually, router_process, rpc_error

from meshserve.local.etcd import EtcdServer
from meshserve.local.process import ManagedProcess
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import ready_models

pytestmark = [pytest.mark.triton]

MiB = 1024 * 1024
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture(scope="module")
def small_router(triton_etcd: EtcdServer, registrar: ManagedProcess,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A router taking and sending 1 MiB at most (Triton sends up to 2 GiB)."""
    with router_process(triton_etcd.endpoint, tmp_path_factory.mktemp("small-triton-router"),
                        "--max-message-bytes", str(MiB)) as (_, address), grpc.insecure_channel(address) as channel:
        def sees_iris_onnx() -> None:
            assert "iris-onnx" in ready_models(channel)

        assert_eventually(sees_iris_onnx, timeout=20, retry_on=(AssertionError, grpc.RpcError))
        yield channel


def iris_onnx(channel: grpc.Channel, x: np.ndarray) -> dict[str, np.ndarray]:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    return decode_response(stub.ModelInfer(build_request("iris-onnx", {"input": x}), timeout=30))


def test_a_triton_answer_over_the_routers_limit(small_router: grpc.Channel) -> None:
    # 0.9 MiB of rows, under the router's limit; Triton's answer (label INT64 and three FP32
    # probabilities: 20 bytes a row against 16) is over it.
    x = np.tile(ROWS, (int(0.9 * MiB) // ROWS.nbytes, 1))
    error = rpc_error(lambda: iris_onnx(small_router, x))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    assert re.search(r"the answer of model 'iris-onnx' from \S+ is 1,1\d\d,\d{3} bytes; this router takes at most "
                     r"1,048,576 \(max_message_bytes\)", error.details()), error.details()
    assert list(iris_onnx(small_router, ROWS)["label"]) == [0, 2]  # the router and its channel still serve
