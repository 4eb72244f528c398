"""What the Python runtime answers for input a model cannot take, an answer too large, and a model's own bug.

Over gRPC, in a stream and over the mesh link alike: INVALID_ARGUMENT for values the model
cannot take, RESOURCE_EXHAUSTED (naming both sizes) for an answer over max_message_bytes,
INTERNAL with an error id, never the exception's text, for anything else.
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from meshserve.errors import Internal, InvalidArgument, MeshError, ResourceExhausted, from_rpc_error
from meshserve.link import MODEL_INFER, LinkClient
from meshserve.local.etcd import EtcdServer
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from meshserve.runtimes.python.server import PythonRuntime, create_server

from .conftest import IRIS_IO, iris_data, runtime_settings, write_version

LIMIT = 64 * 1024
SECRET = "the model's own secret words"
MODELS = textwrap.dedent(f'''
    from meshserve.runtimes.python import Model


    class Faulty(Model):
        def predict(self, inputs):
            raise KeyError({SECRET!r})


    class Echo(Model):
        def predict(self, inputs):
            return {{"y": inputs["x"]}}
''')
X_IO = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}


@pytest.fixture(scope="module")
def bad_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris (the example's pipeline, without the example's range), and Python models judging values."""
    root = tmp_path_factory.mktemp("bad-values")
    x, y = iris_data()
    folder = write_version(root, "iris", "1", {"framework": "sklearn", "artifact": "model.skops", **IRIS_IO})
    sio.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)).fit(x, y),
             folder / "model.skops")
    for name, cls, io in (
        ("faulty", "Faulty", X_IO),
        ("echo", "Echo", X_IO),  # a Python model takes NaN and infinity unless its manifest says otherwise
        ("ranged", "Echo", {**X_IO, "inputs": [{**X_IO["inputs"][0], "allow_nan": False, "minimum": -1,
                                                 "maximum": 1}]}),
    ):
        folder = write_version(root, name, "1", {"framework": "python", "entrypoint": f"models.py:{cls}", **io})
        (folder / "models.py").write_text(MODELS)
    return root


@pytest.fixture
async def small(bad_repository: Path, etcd: EtcdServer) -> AsyncIterator[PythonRuntime]:
    """The runtime over ``bad_repository``, sending messages of 64 KiB at most."""
    server = create_server(runtime_settings(bad_repository, etcd, max_message_bytes=LIMIT))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5)


Call = Callable[[pb.ModelInferRequest], Any]


@pytest.fixture(params=["grpc", "stream", "link"])
async def call(request: pytest.FixtureRequest, small: PythonRuntime) -> AsyncIterator[Call]:
    """``await call(request)``: the response, or the MeshError a caller gets, over one of the three ways in."""
    async with grpc.aio.insecure_channel(small.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        link = await LinkClient.connect(small.link_address, 64 * 1024 * 1024)

        async def over_grpc(message: pb.ModelInferRequest) -> Any:
            try:
                return await stub.ModelInfer(message)
            except grpc.aio.AioRpcError as e:
                raise from_rpc_error(e) from e

        async def over_stream(message: pb.ModelInferRequest) -> Any:
            replies = [r async for r in stub.ModelStreamInfer(iter([message]))]
            assert len(replies) == 1
            if replies[0].error_message:
                raise MeshError(replies[0].error_message)
            return replies[0].infer_response

        async def over_link(message: pb.ModelInferRequest) -> Any:
            return pb.ModelInferResponse.FromString(await link.call(MODEL_INFER, message.SerializeToString()))

        try:
            yield {"grpc": over_grpc, "stream": over_stream, "link": over_link}[request.param]
        finally:
            link.close()


def expect(kind: type[MeshError], error: MeshError, stream: bool) -> None:
    """``error`` is a ``kind`` (a stream's error responses carry the message only)."""
    assert stream or isinstance(error, kind), (type(error), error.message)


def iris(value: float, column: int) -> pb.ModelInferRequest:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    x[1, column] = value
    return build_request("iris", {"features": x})


@pytest.mark.parametrize(("value", "column", "words"), [
    (np.nan, 0, "holds NaN (1 value, the first at [1, 0]); it takes finite numbers only"),
    (np.inf, 2, "holds an infinite value (1 value, the first at [1, 2]); it takes finite numbers only"),
    # Finite, but it overflows float32 in the model's scaler: scikit-learn's own check refuses it.
    (3e38, 3, "scikit-learn cannot take these values: Input X contains infinity or a value too large"),
    # Finite, and scikit-learn's checks let it through, but the answer would hold NaN.
    (3e38, 2, "scikit-learn's 'probabilities' for these values holds NaN or infinity: they overflow the model's"),
])
async def test_values_sklearn_cannot_take(call: Call, value: float, column: int, words: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(MeshError) as caught:
        await call(iris(value, column))
    expect(InvalidArgument, caught.value, call.__name__ == "over_stream")
    assert words in caught.value.message
    assert "Traceback" not in caught.value.message
    refused = [r for r in caplog.records if "refused a call to model 'iris'" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None, refused
    assert not any(r.exc_info for r in caplog.records)


async def test_values_a_manifest_refuses(call: Call) -> None:
    x = np.array([0.5, np.inf], np.float32)
    assert list(decode_response(await call(build_request("echo", {"x": x})))["y"]) == [0.5, np.inf]
    with pytest.raises(MeshError, match=re.escape("input 'x' holds NaN (1 value, the first at [1]); it takes no "
                                                  "NaN")):
        await call(build_request("ranged", {"x": np.array([0.5, np.nan], np.float32)}))
    with pytest.raises(MeshError, match=re.escape("input 'x' holds 3 at [2], outside [-1, 1], the range it takes")):
        await call(build_request("ranged", {"x": np.array([0.5, -1, 3], np.float32)}))


async def test_an_answer_over_the_limit(call: Call) -> None:
    # 4,000 rows: 64,000 bytes in, under the runtime's 65,536; 80,000 and more out.
    x = np.tile(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32), (4000, 1))
    with pytest.raises(MeshError) as caught:
        await call(build_request("iris", {"features": x}))
    expect(ResourceExhausted, caught.value, call.__name__ == "over_stream")
    assert re.search(r"the answer of model 'iris' version '1' is 80,\d{3} bytes; this runtime sends at most "
                     r"65,536 \(max_message_bytes\)", caught.value.message), caught.value.message
    assert decode_response(await call(build_request("iris", {"features": x[:100]})))["label"].shape == (100,)


async def test_a_models_bug_is_internal_with_an_error_id(call: Call, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(MeshError) as caught:
        await call(build_request("faulty", {"x": np.ones(2, np.float32)}))
    expect(Internal, caught.value, call.__name__ == "over_stream")
    found = re.fullmatch(r"internal error in the python runtime \(error id ([0-9a-f]{8})\); its log has the details",
                         caught.value.message)
    assert found, caught.value.message
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert SECRET in logged[0].getMessage() and "KeyError" in logged[0].getMessage()
