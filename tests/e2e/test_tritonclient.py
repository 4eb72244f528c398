"""Through the router with a stock client, tritonclient.grpc: results equal scikit-learn's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from meshserve.local.mesh import LocalMesh

from .helpers import assert_eventually, infer, rpc_error


@pytest.fixture(scope="module")
def client(mesh: LocalMesh) -> Iterator[tc.InferenceServerClient]:
    triton = tc.InferenceServerClient(url=mesh.router_address)
    try:
        yield triton
    finally:
        triton.close()


@pytest.fixture(scope="module")
def iris_x() -> np.ndarray:
    return np.asarray(load_iris().data, dtype=np.float32)


def iris_inputs(x: np.ndarray) -> tuple[list[tc.InferInput], list[tc.InferRequestedOutput]]:
    features = tc.InferInput("features", list(x.shape), "FP32")
    features.set_data_from_numpy(x)
    return [features], [tc.InferRequestedOutput("label"), tc.InferRequestedOutput("probabilities")]


def assert_matches_sklearn(result: Any, estimator: Any, x: np.ndarray) -> None:
    label, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
    assert label.dtype == np.int64 and label.shape == (len(x),)
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(x), 3)
    np.testing.assert_array_equal(label, estimator.predict(x))
    np.testing.assert_array_equal(probabilities, estimator.predict_proba(x).astype(np.float32))


def test_server_live_and_ready(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata(client: tc.InferenceServerClient) -> None:
    meta = client.get_model_metadata("iris")
    assert meta.name == "iris" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3]),
    ]


def test_infer_equals_sklearn(client: tc.InferenceServerClient, iris_sklearn: Any, iris_x: np.ndarray) -> None:
    inputs, outputs = iris_inputs(iris_x)
    result = client.infer("iris", inputs, outputs=outputs, request_id="whole-iris")
    assert result.get_response().id == "whole-iris"
    assert_matches_sklearn(result, iris_sklearn, iris_x)
    # A single row, and a pinned version.
    inputs, outputs = iris_inputs(iris_x[:1])
    assert_matches_sklearn(client.infer("iris", inputs, model_version="1", outputs=outputs),
                           iris_sklearn, iris_x[:1])


def test_router_result_equals_runtime_direct(mesh: LocalMesh, router: grpc.Channel, iris_x: np.ndarray) -> None:
    with grpc.insecure_channel(mesh.runtime_address) as direct:
        expected = infer(direct, "iris", iris_x)
    got = infer(router, "iris", iris_x)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_stream_infer_equals_sklearn(client: tc.InferenceServerClient, iris_sklearn: Any,
                                     iris_x: np.ndarray) -> None:
    batches = {str(i): iris_x[i * 10:(i + 1) * 10 + i] for i in range(8)}  # sizes 10 to 17
    results: dict[str, Any] = {}
    errors: list[Exception] = []
    done = threading.Event()

    def callback(result: Any, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
        else:
            results[result.get_response().id] = result
        if len(results) + len(errors) == len(batches):
            done.set()

    client.start_stream(callback=callback, stream_timeout=20)
    try:
        for request_id, x in batches.items():
            inputs, outputs = iris_inputs(x)
            client.async_stream_infer("iris", inputs, outputs=outputs, request_id=request_id)
        assert done.wait(15), f"{len(results)} of {len(batches)} stream responses arrived"
    finally:
        client.stop_stream()
    assert not errors, errors
    assert sorted(results) == sorted(batches)
    for request_id, x in batches.items():
        assert_matches_sklearn(results[request_id], iris_sklearn, x)


def test_stream_reports_a_bad_request_and_goes_on(client: tc.InferenceServerClient, iris_sklearn: Any,
                                                  iris_x: np.ndarray) -> None:
    results: list[tuple[Any, Exception | None]] = []
    client.start_stream(callback=lambda result, error: results.append((result, error)), stream_timeout=20)
    try:
        inputs, outputs = iris_inputs(iris_x[:3])
        client.async_stream_infer("no-such-model", inputs, outputs=outputs, request_id="bad")
        client.async_stream_infer("iris", inputs, outputs=outputs, request_id="good")

        def both_arrived() -> None:
            assert len(results) == 2
        assert_eventually(both_arrived, timeout=10)
    finally:
        client.stop_stream()
    errors = [e for _, e in results if e is not None]
    assert len(errors) == 1 and "no-such-model" in str(errors[0]) and "iris" in str(errors[0])
    good = next(r for r, e in results if e is None)
    assert_matches_sklearn(good, iris_sklearn, iris_x[:3])


def test_repository_index_lists_iris_ready(client: tc.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    entries = {(m.name, m.version): m for m in index.models}
    assert ("iris", "1") in entries
    assert entries[("iris", "1")].state == "READY"
    assert "python" in entries[("iris", "1")].reason


def test_unload_and_load_through_the_router(client: tc.InferenceServerClient, router: grpc.Channel,
                                            iris_sklearn: Any, iris_x: np.ndarray) -> None:
    x = iris_x[:5]
    try:
        client.unload_model("iris")
        assert not client.is_model_ready("iris")
        index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
        assert index[("iris", "1")] == "UNAVAILABLE"
        # Known to the mesh but loaded nowhere: no live replica.
        err = rpc_error(lambda: infer(router, "iris", x))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert "iris" in err.details() and "not ready" in err.details()
        with pytest.raises(InferenceServerException, match="iris"):
            inputs, outputs = iris_inputs(x)
            client.infer("iris", inputs, outputs=outputs)
    finally:
        client.load_model("iris")
    assert client.is_model_ready("iris")
    inputs, outputs = iris_inputs(x)
    assert_matches_sklearn(client.infer("iris", inputs, outputs=outputs), iris_sklearn, x)


def test_load_unknown_model_is_not_found(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("no-such-model")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in raised.value.message() and "iris" in raised.value.message()
