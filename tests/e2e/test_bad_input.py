"""Every bad input of the issue, through the router: the right status, a message naming the problem,
and the router still serving iris afterwards. (No live replica: test_runtime_killed.py and
test_tritonclient.py::test_unload_and_load_through_the_router.)"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import FAULT, IRIS_ROWS, assert_eventually, infer, model_infer, router_process, rpc_error

MiB = 1024 * 1024
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def iris(**fields: object) -> oip.ModelInferRequest:
    """A ModelInferRequest for iris with no inputs yet, plus ``fields``."""
    return oip.ModelInferRequest(model_name="iris", **fields)


Tensor = oip.ModelInferRequest.InferInputTensor


def typed(name: str, datatype: str, shape: list[int], **contents: list[object]) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape,
                  contents=oip.InferTensorContents(**contents))


def raw(name: str, datatype: str, shape: list[int]) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape)


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


FOUR = IRIS_ROWS.reshape(-1).tolist()
FOUR_BYTES = IRIS_ROWS.tobytes()

# (id, request, status, words the message must contain)
CASES: list[tuple[str, oip.ModelInferRequest, grpc.StatusCode, list[str]]] = [
    ("unknown model", build_request("irsi", {"features": IRIS_ROWS}), NOT_FOUND, ["'irsi'", "iris"]),
    ("unknown version", build_request("iris", {"features": IRIS_ROWS}, model_version="7"), NOT_FOUND,
     ["'7'", "versions: 1"]),
    ("wrong tensor name", build_request("iris", {"feature": IRIS_ROWS}), INVALID, ["'feature'", "features"]),
    ("missing tensor", iris(), INVALID, ["missing input 'features'"]),
    ("extra tensor", build_request("iris", {"features": IRIS_ROWS, "extra": IRIS_ROWS}), INVALID,
     ["unknown input 'extra'"]),
    ("datatype mismatch", build_request("iris", {"features": IRIS_ROWS.astype(np.float64)}), INVALID,
     ["'features'", "FP32", "FP64"]),
    ("unknown datatype", iris(inputs=[raw("features", "FLOAT32", [4, 4])], raw_input_contents=[FOUR_BYTES]),
     INVALID, ["'FLOAT32'"]),
    ("shape not matching element count (typed)",
     iris(inputs=[typed("features", "FP32", [5, 4], fp32_contents=FOUR)]), INVALID,
     ["[5, 4]", "20 elements", "16"]),
    ("shape not matching the signature", build_request("iris", {"features": IRIS_ROWS.reshape(-1)}), INVALID,
     ["'features'", "shape", "[16]"]),
    ("negative dimension", iris(inputs=[raw("features", "FP32", [-1, 4])], raw_input_contents=[FOUR_BYTES]),
     INVALID, ["negative dimension"]),
    ("raw_input_contents count mismatch",
     iris(inputs=[raw("features", "FP32", [4, 4])], raw_input_contents=[FOUR_BYTES, FOUR_BYTES]), INVALID,
     ["1 inputs", "2 raw_input_contents"]),
    ("raw byte length mismatch",
     iris(inputs=[raw("features", "FP32", [4, 4])], raw_input_contents=[FOUR_BYTES[:-4]]), INVALID,
     ["'features'", "60 bytes", "64 bytes"]),
    ("BYTES tensor where numbers expected",
     iris(inputs=[raw("features", "BYTES", [1, 4])],
          raw_input_contents=[length_prefixed([b"5.1", b"3.5", b"1.4", b"0.2"])]), INVALID,
     ["'features'", "FP32", "BYTES"]),
    ("bytes_contents where numbers expected",
     iris(inputs=[typed("features", "FP32", [1, 4], bytes_contents=[b"5.1", b"3.5", b"1.4", b"0.2"])]),
     INVALID, ["bytes_contents", "FP32"]),
    ("malformed BYTES raw contents",
     iris(inputs=[raw("features", "BYTES", [1, 4])], raw_input_contents=[b"\x09\x00\x00\x00ab"]), INVALID,
     ["malformed BYTES"]),
    ("typed and raw contents together",
     iris(inputs=[typed("features", "FP32", [4, 4], fp32_contents=FOUR)], raw_input_contents=[FOUR_BYTES]),
     INVALID, ["both typed contents and raw"]),
    ("empty batch", build_request("iris", {"features": np.zeros((0, 4), np.float32)}), INVALID,
     ["empty batch", "[0, 4]"]),
    ("unknown output requested", build_request("iris", {"features": IRIS_ROWS}, outputs=["labels"]), INVALID,
     ["'labels'", "label, probabilities"]),
    ("model name not a name", build_request("iris/../x", {"features": IRIS_ROWS}), INVALID,
     ["iris/../x"]),
]


@pytest.fixture
def still_serving(router: grpc.Channel, any_router: grpc.Channel) -> Iterator[None]:
    """After the test, the routers still answer iris correctly."""
    yield
    for channel in (router, any_router):
        assert infer(channel, "iris", IRIS_ROWS)["label"].shape == (len(IRIS_ROWS),)


def check(error: grpc.RpcError, code: grpc.StatusCode, words: list[str]) -> None:
    assert error.code() == code, f"{error.code()}: {error.details()}"
    for word in words:
        assert word in error.details(), f"{word!r} not in {error.details()!r}"


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("request_", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_model_infer(any_router: grpc.Channel, request_: oip.ModelInferRequest, code: grpc.StatusCode,
                         words: list[str]) -> None:
    check(rpc_error(lambda: model_infer(any_router, request_)), code, words)


@pytest.mark.usefixtures("still_serving")
def test_unknown_model_metadata(any_router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(any_router)
    check(rpc_error(lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name="irsi"), timeout=5)),
          NOT_FOUND, ["'irsi'", "iris"])
    check(rpc_error(lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name="iris", version="7"), timeout=5)),
          NOT_FOUND, ["'7'", "versions: 1"])


RAW_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"this is not a protobuf message", b"\x0a\x40iris"],
                         ids=["truncated varint", "text", "length past the end"])
def test_bytes_that_are_not_protobuf(any_router: grpc.Channel, data: bytes) -> None:
    call: Callable[..., bytes] = any_router.unary_unary(RAW_INFER)
    check(rpc_error(lambda: call(data, timeout=5)), INVALID, ["not a valid protobuf"])


# Well-formed at the top level (the router's routing scan accepts it: name "iris", then field
# 3 with 3 bytes), but field 3 (parameters, a map of messages) holds garbage: these bytes are
# not a ModelInferRequest, and only the runtime, parsing the whole message, finds out.
NOT_A_MODEL_INFER_REQUEST = b"\x0a\x04iris" + b"\x1a\x03\xff\xff\xff"


@pytest.mark.usefixtures("still_serving")
def test_bytes_that_are_not_a_model_infer_request(any_router: grpc.Channel) -> None:
    call: Callable[..., bytes] = any_router.unary_unary(RAW_INFER)
    check(rpc_error(lambda: call(NOT_A_MODEL_INFER_REQUEST, timeout=5)), INVALID, ["ModelInferRequest"])


RAW_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
GOOD = build_request("iris", {"features": IRIS_ROWS}, request_id="good").SerializeToString()


def raw_stream(channel: grpc.Channel, messages: list[bytes]) -> list[oip.ModelStreamInferResponse]:
    call = channel.stream_stream(RAW_STREAM, response_deserializer=oip.ModelStreamInferResponse.FromString)
    return list(call(iter(messages), timeout=10))


@pytest.mark.usefixtures("still_serving")
def test_bytes_that_are_not_protobuf_in_a_stream(any_router: grpc.Channel) -> None:
    responses = raw_stream(any_router, [b"\xff\xff\xff\xff", GOOD])
    assert len(responses) == 2
    assert "not a valid protobuf" in responses[0].error_message
    assert responses[1].infer_response.id == "good"


@pytest.mark.usefixtures("still_serving")
def test_bytes_that_are_not_a_model_infer_request_in_a_stream(any_router: grpc.Channel) -> None:
    # One bad message gets an error response; the stream, and the good request after it, go on.
    responses = raw_stream(any_router, [NOT_A_MODEL_INFER_REQUEST, GOOD])
    assert len(responses) == 2
    assert "ModelInferRequest" in responses[0].error_message
    assert responses[1].infer_response.id == "good"


@pytest.mark.usefixtures("still_serving")
def test_bad_requests_in_a_stream_get_error_responses(any_router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(any_router)
    requests = [
        build_request("iris", {"features": IRIS_ROWS.astype(np.float64)}, request_id="fp64"),
        build_request("irsi", {"features": IRIS_ROWS}, request_id="unknown"),
        build_request("iris", {"features": np.zeros((0, 4), np.float32)}, request_id="empty"),
        build_request("iris", {"features": IRIS_ROWS}, request_id="good"),
    ]
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert len(responses) == 4
    errors = sorted(r.error_message for r in responses if r.error_message)
    assert len(errors) == 3
    assert any("FP64" in e for e in errors)
    assert any("'irsi'" in e and "iris" in e for e in errors)
    assert any("empty batch" in e for e in errors)
    good = [r.infer_response for r in responses if not r.error_message]
    assert len(good) == 1 and good[0].id == "good"
    assert decode_response(good[0])["label"].shape == (len(IRIS_ROWS),)


@pytest.fixture(scope="module")
def small_router(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A second router on the same etcd, accepting messages of 1 MiB at most."""
    folder: Path = tmp_path_factory.mktemp("small-router")
    with router_process(mesh.etcd_endpoint, folder, "--max-message-bytes", str(MiB)) as (_, address), \
            grpc.insecure_channel(address) as channel:
        yield channel


@pytest.mark.slow
def test_message_over_the_size_limit(small_router: grpc.Channel, router: grpc.Channel) -> None:
    x = np.ones((2 * MiB // 16, 4), np.float32)  # 2 MiB of features
    error = rpc_error(lambda: infer(small_router, "iris", x, timeout=10))
    check(error, grpc.StatusCode.RESOURCE_EXHAUSTED, [str(MiB)])
    # Under the limit, the same router serves.
    ok = infer(small_router, "iris", x[: MiB // 32], timeout=10)
    assert ok["label"].shape == (MiB // 32,)
    for channel in (small_router, router):
        assert infer(channel, "iris", IRIS_ROWS)["label"].shape == (len(IRIS_ROWS),)


def with_value(value: float) -> np.ndarray:
    """IRIS_ROWS with ``value`` in row 1, column 2."""
    x = IRIS_ROWS.copy()
    x[1, 2] = value
    return x


# Values iris cannot take: (id, value, words the message must contain). The runtime refuses
# them before predict: NaN and infinity because scikit-learn never takes infinity and this
# estimator's tags say it takes no NaN; 3e38 (finite, but it overflows float32 in the model's
# scaler) because the manifest says the features lie in [0, 1000].
VALUES = [
    ("NaN", np.nan, ["input 'features'", "NaN", "[1, 2]", "finite numbers only"]),
    ("infinity", np.inf, ["input 'features'", "infinite value", "[1, 2]"]),
    ("-infinity", -np.inf, ["input 'features'", "infinite value", "[1, 2]"]),
    ("3e38", 3e38, ["input 'features'", "3e+38", "[1, 2]", "outside [0, 1000]"]),
    ("-3e38", -3e38, ["input 'features'", "-3e+38", "[1, 2]", "outside [0, 1000]"]),
]


def runtime_log_since(mesh: LocalMesh, offset: int) -> str:
    with (mesh.log_dir / "runtime.log").open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("value", "words"), [v[1:] for v in VALUES], ids=[v[0] for v in VALUES])
def test_values_the_model_cannot_take(any_router: grpc.Channel, mesh: LocalMesh, value: float,
                                      words: list[str]) -> None:
    offset = (mesh.log_dir / "runtime.log").stat().st_size
    error = rpc_error(lambda: infer(any_router, "iris", with_value(value)))
    check(error, INVALID, words)
    assert "Traceback" not in error.details() and "ValueError" not in error.details()
    assert len(error.details()) < 400, error.details()

    def one_bounded_line() -> str:
        lines = [line for line in runtime_log_since(mesh, offset).splitlines()
                 if "refused a call to model 'iris'" in line]
        assert len(lines) == 1, lines
        return lines[0]

    line = assert_eventually(one_bounded_line, timeout=5)
    assert "INVALID_ARGUMENT" in line and len(line) < 1500
    assert "Traceback" not in runtime_log_since(mesh, offset)


@pytest.mark.usefixtures("still_serving")
def test_values_the_model_cannot_take_in_a_stream(any_router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(any_router)
    requests = [build_request("iris", {"features": with_value(np.nan)}, request_id="nan"),
                build_request("iris", {"features": IRIS_ROWS}, request_id="good")]
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert len(responses) == 2
    errors = [r.error_message for r in responses if r.error_message]
    assert len(errors) == 1 and "NaN" in errors[0] and "'features'" in errors[0], errors
    assert [r.infer_response.id for r in responses if not r.error_message] == ["good"]


@pytest.mark.usefixtures("still_serving")
def test_an_unexpected_error_in_a_model_is_internal_with_an_error_id(any_router: grpc.Channel,
                                                                      mesh: LocalMesh) -> None:
    offset = (mesh.log_dir / "runtime.log").stat().st_size
    stub = oip_grpc.GRPCInferenceServiceStub(any_router)
    error = rpc_error(lambda: stub.ModelInfer(build_request("faulty", {"x": np.ones(3, np.float32)}), timeout=10))
    assert error.code() == grpc.StatusCode.INTERNAL, error
    found = re.fullmatch(r"internal error in the python runtime \(error id ([0-9a-f]{8})\); its log has the details",
                         error.details())
    assert found, error.details()
    assert FAULT not in error.details() and "RuntimeError" not in error.details()

    def logged_once_with_its_traceback() -> None:
        log = runtime_log_since(mesh, offset)
        assert log.count(found.group(1)) == 1, log
        after = log[log.index(found.group(1)):]
        assert "Traceback (most recent call last)" in after and f"RuntimeError: {FAULT}" in after, after

    assert_eventually(logged_once_with_its_traceback, timeout=5)
