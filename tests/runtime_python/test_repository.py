"""Loading, unloading and listing models; refusing untrusted artifacts."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from meshserve.errors import NotFound
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as pb
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from meshserve.runtimes.python.server import create_server
from meshserve.runtimes.python.settings import PythonRuntimeSettings

Stub = pb_grpc.GRPCInferenceServiceStub


def version_param(version: str) -> dict[str, pb.ModelRepositoryParameter]:
    return {"version": pb.ModelRepositoryParameter(string_param=version)}


async def index(stub: Stub, ready: bool = False) -> dict[tuple[str, str], tuple[str, str]]:
    reply = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready))
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


async def test_index_shows_every_version(stub: Stub) -> None:
    models = await index(stub)
    assert models[("iris", "1")] == ("READY", "")
    assert models[("onnx_iris", "1")] == ("READY", "")
    assert models[("untrusted", "1")] == ("UNAVAILABLE", "")
    assert set(await index(stub, ready=True)) == {("iris", "1"), ("iris", "2"), ("onnx_iris", "1"),
                                                   ("doubler", "1"), ("echo", "1")}


async def test_unload_then_load(stub: Stub) -> None:
    x = np.zeros((1, 4), np.float32)
    await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="iris", parameters=version_param("2")))
    assert (await index(stub))[("iris", "2")] == ("UNAVAILABLE", "unloaded")
    # The empty version now means version 1, the latest loaded one.
    assert (await stub.ModelInfer(build_request("iris", {"features": x}))).model_version == "1"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(build_request("iris", {"features": x}, model_version="2"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model 'iris' version '2' is not loaded" in (err.value.details() or "")

    await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="iris"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(build_request("iris", {"features": x}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="iris"))
    assert (await stub.ModelInfer(build_request("iris", {"features": x}))).model_version == "2"


async def test_untrusted_skops_is_refused(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="untrusted"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "skops refuses model.skops" in details and "_operator.neg" in details
    assert "trusted_types" in details
    state, reason = (await index(stub))[("untrusted", "1")]
    assert state == "UNAVAILABLE" and "_operator.neg" in reason


async def test_failing_python_model(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"))
    assert "RuntimeError: weights file is corrupt" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(build_request("broken", {"x": np.zeros(1, np.float32)}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "failed to load: RuntimeError: weights file is corrupt" in (err.value.details() or "")


async def test_load_unknown_model(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="ghost"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "models: broken, doubler" in (err.value.details() or "")


def _pickled_tree(root: Path, allow_pickle: bool) -> None:
    data = load_iris()
    folder = root / "tree" / "1"
    folder.mkdir(parents=True)
    with (folder / "model.pkl").open("wb") as f:
        pickle.dump(DecisionTreeClassifier(random_state=0).fit(data.data, data.target), f)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "framework": "sklearn", "artifact": "model.pkl", "allow_pickle": allow_pickle,
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT32", "shape": [-1], "method": "predict"}],
    }))


@pytest.mark.parametrize("allow_pickle", [False, True])
async def test_pickle_only_when_allowed(tmp_path: Path, settings_for: Callable[..., PythonRuntimeSettings],
                                        allow_pickle: bool) -> None:
    _pickled_tree(tmp_path, allow_pickle)
    server = create_server(settings_for(tmp_path, load=""))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = Stub(channel)
            load = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tree"))
            if not allow_pickle:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await load
                assert "model.pkl is a pickle" in (err.value.details() or "")
                assert "allow_pickle: true" in (err.value.details() or "")
                return
            await load
            x = load_iris().data[:3]
            outputs = decode_response(await stub.ModelInfer(build_request("tree", {"features": x})))
            assert outputs["label"].dtype == np.int32 and outputs["label"].tolist() == [0, 0, 0]
    finally:
        await server.stop(0.5)


async def test_invalid_manifest_is_reported(tmp_path: Path,
                                            settings_for: Callable[..., PythonRuntimeSettings]) -> None:
    folder = tmp_path / "bad" / "1"
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text("framework: tensorflow\ninputs: []\n")
    server = create_server(settings_for(tmp_path), register=False)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = Stub(channel)
            state, reason = (await index(stub))[("bad", "1")]
            assert state == "UNAVAILABLE"
            assert "manifest.yaml: framework" in reason and "inputs" in reason
    finally:
        await server.stop(0.5)


async def test_start_fails_on_unknown_load_name(repository: Path,
                                                settings_for: Callable[..., PythonRuntimeSettings]) -> None:
    with pytest.raises(NotFound, match="cannot load ghost"):
        await create_server(settings_for(repository, load="iris,ghost"), register=False).start()


async def test_models_of_other_runtimes_are_ignored(tmp_path: Path,
                                                    settings_for: Callable[..., PythonRuntimeSettings]) -> None:
    io = "inputs: [{name: x, datatype: FP64, shape: [-1]}]\noutputs: [{name: y, datatype: FP64, shape: [-1]}]\n"
    for model, text in (("mtcars", "runtime: r\nframework: rds\nartifact: m.rds\n" + io),
                        ("bad", "framework: rds\nartifact: m.rds\n" + io)):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "manifest.yaml").write_text(text)
    server = create_server(settings_for(tmp_path), register=False)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            models = await index(Stub(channel))
            assert set(models) == {("bad", "1")}
            assert "the python runtime does not serve framework 'rds'" in models[("bad", "1")][1]
    finally:
        await server.stop(0.5)
