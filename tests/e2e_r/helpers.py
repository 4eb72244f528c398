"""Helpers for the R end-to-end tests: R runtime processes, Rscript, calls through the router."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from meshserve.local.process import ManagedProcess, start_service
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc as reg_grpc

ROOT = Path(__file__).resolve().parents[2]
RSCRIPT = shutil.which("Rscript")


def _missing_r() -> str | None:
    """Why these tests cannot run here, or None when R and randomForest are installed."""
    if RSCRIPT is None:
        return "Rscript not found: install Debian's r-base-core (make test installs it)"
    probe = subprocess.run([RSCRIPT, "-e", 'quit(status = !requireNamespace("randomForest", quietly = TRUE))'],
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return "the R package randomForest is missing: install Debian's r-cran-randomforest"
    return None


MISSING_R = _missing_r()
needs_r = pytest.mark.skipif(MISSING_R is not None, reason=MISSING_R or "")

# Every test module: ``pytestmark = R_MARKS``.
R_MARKS = [pytest.mark.r, needs_r]


def run_rscript(script: str, *args: str, folder: Path) -> None:
    """Run an R program (written to ``folder``) with arguments; fail with R's stderr when it fails."""
    assert RSCRIPT is not None
    path = folder / f"script-{uuid.uuid4().hex[:6]}.R"
    path.write_text(script)
    done = subprocess.run([RSCRIPT, str(path), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"Rscript failed:\n{done.stderr}"


def build_examples(out: Path) -> Path:
    """scripts/build_r_examples.R built into ``out`` (mtcars, iris-rf, mtcars-am, sentiment-glm)."""
    assert RSCRIPT is not None
    done = subprocess.run([RSCRIPT, str(ROOT / "scripts" / "build_r_examples.R"), str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return out


def write_script_model(repository: Path, name: str, predict_body: str) -> Path:
    """A version-1 R script model (load/predict) taking wt and hp FP64 [-1], returning mpg FP64 [-1]."""
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.R").write_text(
        "load <- function(dir) NULL\n"
        f"predict <- function(model, data) {{\n  {predict_body}\n}}\n"
    )
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "runtime": "r", "framework": "r", "artifact": "model.R",
        "inputs": [{"name": "wt", "datatype": "FP64", "shape": [-1]},
                   {"name": "hp", "datatype": "FP64", "shape": [-1]}],
        "outputs": [{"name": "mpg", "datatype": "FP64", "shape": [-1]}],
        "r": {"as": "data.frame"},
    }, sort_keys=False))
    return folder


@contextmanager
def r_runtime_process(repository: Path, etcd_endpoint: str, folder: Path, *extra: str, lease_ttl_s: int = 5,
                      timeout: float = 60.0) -> Iterator[tuple[ManagedProcess, str, str]]:
    """An R runtime process (``python -m meshserve.runtimes.r``): yields (process, address, runtime id)."""
    runtime_id = f"e2e-r-{uuid.uuid4().hex[:8]}"
    proc, info = start_service(runtime_id, "meshserve.runtimes.r", [
        "--port", "0", "--model-repository", str(repository), "--etcd-endpoint", etcd_endpoint,
        "--lease-ttl-s", str(lease_ttl_s), "--runtime-id", runtime_id,
        "--worker-log", str(folder / f"{runtime_id}-workers.log"), "--dev-mode", *extra,
    ], folder, timeout=timeout)
    try:
        yield proc, str(info["address"]), runtime_id
    finally:
        proc.stop(grace=5)


def infer(channel: grpc.Channel, model: str, inputs: Mapping[str, Any], *, timeout: float = 10.0,
          raw: bool = True) -> dict[str, np.ndarray]:
    """One ModelInfer; the outputs as numpy."""
    request = build_request(model, inputs, raw=raw)
    return decode_response(oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout))


def list_runtimes(channel: grpc.Channel) -> dict[str, reg.ListRuntimesResponse.Entry]:
    """The router's ListRuntimes, by runtime id."""
    response = reg_grpc.RegistryServiceStub(channel).ListRuntimes(reg.ListRuntimesRequest(), timeout=5)
    return {entry.runtime.id: entry for entry in response.runtimes}


def placements(channel: grpc.Channel, runtime_id: str) -> dict[str, int]:
    """model/version -> state of every placement the router knows on ``runtime_id``."""
    response = reg_grpc.RegistryServiceStub(channel).ListModels(reg.ListModelsRequest(), timeout=5)
    return {f"{p.model}/{p.version}": p.state for p in response.placements if p.runtime_id == runtime_id}
