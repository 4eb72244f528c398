"""A model repository built in a temporary folder, and the Python runtime serving it."""

from __future__ import annotations

import asyncio
import operator
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skops.io as sio
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from meshserve.local.etcd import EtcdServer
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from meshserve.runtimes.python.server import PythonRuntime, create_server
from meshserve.runtimes.python.settings import PythonRuntimeSettings

IRIS_IO = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1], "method": "predict"},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3], "method": "predict_proba"},
    ],
}

PYTHON_MODELS = '''
import asyncio
import numpy as np
from meshserve.runtimes.python import Model


class Doubler(Model):
    def load(self):
        self.factor = self.parameters["factor"]

    def predict(self, inputs):
        return {"y": inputs["x"] * self.factor}


class Echo(Model):
    async def load(self):
        await asyncio.sleep(0)

    async def predict(self, inputs):
        return {"text": np.array([s.upper() for s in inputs["text"].reshape(-1)], dtype=object)}


class Broken(Model):
    def load(self):
        raise RuntimeError("weights file is corrupt")
'''


def write_version(root: Path, name: str, version: str, manifest: dict[str, Any]) -> Path:
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def iris_data() -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def build_repository(root: Path) -> Path:
    x, y = iris_data()
    for version, c in (("1", 1.0), ("2", 0.1)):
        folder = write_version(root, "iris", version, {"framework": "sklearn", "artifact": "model.skops", **IRIS_IO})
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)
        sio.dump(model, folder / "model.skops")

    untrusted = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression(max_iter=1000)).fit(x, y)
    folder = write_version(root, "untrusted", "1", {"framework": "sklearn", "artifact": "model.skops", **IRIS_IO})
    sio.dump(untrusted, folder / "model.skops")

    from skl2onnx import to_onnx

    onnx_model = to_onnx(
        LogisticRegression(max_iter=1000).fit(x, y), x[:1], options={"zipmap": False}, target_opset=17
    )
    folder = write_version(root, "onnx_iris", "1", {
        "framework": "onnx", "artifact": "model.onnx",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4], "onnx_name": "X"}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1], "onnx_name": "label"},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3], "onnx_name": "probabilities"},
        ],
    })
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())

    for name, cls, io in (
        ("doubler", "Doubler", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
                                "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}]}),
        ("echo", "Echo", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                          "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}]}),
        ("broken", "Broken", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}),
    ):
        folder = write_version(root, name, "1", {
            "framework": "python", "entrypoint": f"models.py:{cls}", "parameters": {"factor": 3}, **io,
        })
        (folder / "models.py").write_text(textwrap.dedent(PYTHON_MODELS))
    return root


@pytest.fixture(scope="session")
def iris_xy() -> tuple[np.ndarray, np.ndarray]:
    return iris_data()


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo"))


def runtime_settings(repository: Path, etcd: EtcdServer, **overrides: Any) -> PythonRuntimeSettings:
    return PythonRuntimeSettings(
        model_repository=repository, etcd_endpoint=etcd.endpoint, port=0, lease_ttl_s=2,
        runtime_id=f"python-test-{uuid.uuid4().hex[:8]}", **{"dev_mode": True, **overrides},
    )


@pytest.fixture
def settings_for(etcd: EtcdServer) -> Callable[..., PythonRuntimeSettings]:
    """``settings_for(repository, **overrides)``: runtime settings on port 0 with a fresh id."""
    def make(repository: Path, **overrides: Any) -> PythonRuntimeSettings:
        return runtime_settings(repository, etcd, **overrides)
    return make


@pytest.fixture
async def runtime(repository: Path, etcd: EtcdServer) -> AsyncIterator[PythonRuntime]:
    server = create_server(runtime_settings(repository, etcd, load="iris,onnx_iris,doubler,echo"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5)


@pytest.fixture
async def stub(runtime: PythonRuntime) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


Eventually = Callable[[Callable[[], Awaitable[bool]]], Awaitable[None]]


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(check)``: poll an async check until it is true (5 s at most)."""
    async def wait(check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + 5.0
        while not await check():
            assert time.monotonic() < deadline, "condition not met within 5 s"
            await asyncio.sleep(0.05)
    return wait
