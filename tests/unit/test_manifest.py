"""Manifest validation gives messages that say what to fix; each runtime sees only its own kind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest

from meshserve.errors import InvalidArgument
from meshserve.runtime import Backend, BackendLoader, Manifest, load_manifest
from meshserve.runtime.entry import State
from meshserve.runtime.repository import ModelRepository
from meshserve.runtimes.python.frameworks import PythonLoader

IO = "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"
OUT = "outputs: [{name: y, datatype: FP64, shape: [-1]}]\n"


class RLoader(BackendLoader):
    platforms: ClassVar[dict[str, str]] = {"rds": "r"}

    async def load(self, name: str, version: str, path: Path, manifest: Manifest) -> Backend:
        return Backend()


def write(root: Path, model: str, text: str, version: str = "1") -> None:
    folder = root / model / version
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text(text)


def failed_reason(root: Path, text: str) -> str:
    write(root, "m", text)
    [entry] = ModelRepository(root, "python", PythonLoader()).scan()
    assert entry.state is State.FAILED
    return entry.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("framework: sklearn\nartifact: m.skops\n" + IO + "outputs: [{name: y, datatype: INT64, shape: [-1]}]\n",
         r"sklearn outputs \['y'\] need a 'method'"),
        ("framework: onnx\n" + IO + "outputs: [{name: y, datatype: INT64, shape: [-1]}]\n",
         "needs an 'artifact'"),
        ("framework: python\nentrypoint: m.py\n" + IO + "outputs: [{name: y, datatype: FP32, shape: [-1]}]\n",
         "file.py:ClassName"),
        ("framework: python\nentrypoint: m.py:M\n" + IO + "outputs: [{name: y, datatype: FP8, shape: [-1]}]\n",
         r"outputs.0.datatype: Value error, unknown datatype 'FP8'"),
        ("framework: python\nentrypoint: m.py:M\n" + IO + "outputs: [{name: y, datatype: FP32, shape: [-2]}]\n",
         r"outputs.0.shape"),
        ("framework: tensorflow\n" + IO + OUT,
         "the python runtime does not serve framework 'tensorflow'; its frameworks are sklearn, onnx, python"),
        ("name: other\nframework: python\nentrypoint: m.py:M\n" + IO + OUT, "name 'other' differs from its folder 'm'"),
        ("framework: [", "cannot read"),
    ],
)
def test_invalid_manifests(tmp_path: Path, text: str, message: str) -> None:
    reason = failed_reason(tmp_path, text)
    assert str(tmp_path / "m" / "1" / "manifest.yaml") in reason
    assert re.search(message, reason), reason


def test_example_iris_manifest() -> None:
    manifest = load_manifest(Path(__file__).resolve().parents[2] / "examples/models/iris/1/manifest.yaml")
    assert manifest.framework == "sklearn" and not manifest.allow_pickle and manifest.runtime == "python"
    assert [(o.name, o.datatype, o.method) for o in manifest.outputs] == [
        ("label", "INT64", "predict"), ("probabilities", "FP32", "predict_proba")
    ]


def test_r_section(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("runtime: r\nframework: rds\nartifact: m.rds\n" + IO + OUT
                    + "r: {columns: {x: wt}, as: matrix, outputs: {y: fit}, type: response, packages: [stats]}\n")
    manifest = load_manifest(path)
    assert manifest.r.columns == {"x": "wt"} and manifest.r.as_ == "matrix" and manifest.r.outputs == {"y": "fit"}
    assert manifest.r.type == "response" and manifest.r.packages == ["stats"]
    path.write_text("runtime: r\nframework: rds\n" + IO + OUT + "r: {as: list}\n")
    with pytest.raises(InvalidArgument, match=r"r.as: Input should be 'data.frame' or 'matrix'"):
        load_manifest(path)


def test_each_runtime_sees_only_its_kind(tmp_path: Path) -> None:
    write(tmp_path, "doubler", "framework: python\nentrypoint: m.py:M\n" + IO + OUT)
    write(tmp_path, "mtcars", "runtime: r\nframework: rds\nartifact: m.rds\n" + IO + OUT)
    write(tmp_path, "mtcars", "runtime: r\nframework: tensorflow\n" + IO + OUT, version="2")
    python = ModelRepository(tmp_path, "python", PythonLoader())
    assert [(e.name, e.state) for e in python.scan()] == [("doubler", State.AVAILABLE)]
    r = ModelRepository(tmp_path, "r", RLoader())
    found = {(e.name, e.version): e for e in r.scan()}
    assert set(found) == {("mtcars", "1"), ("mtcars", "2")}
    assert found[("mtcars", "1")].state is State.AVAILABLE and found[("mtcars", "1")].platform == "r"
    assert found[("mtcars", "2")].state is State.FAILED
    reason = found[("mtcars", "2")].reason
    assert "the r runtime does not serve framework 'tensorflow'; its frameworks are rds" in reason
