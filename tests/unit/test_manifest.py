"""Manifest validation gives messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshserve.errors import InvalidArgument
from meshserve.runtimes.python.manifest import load_manifest

IO = "inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"


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
        ("framework: tensorflow\n" + IO, "framework: Input should be 'sklearn', 'onnx' or 'python'"),
        ("framework: [", "cannot read"),
    ],
)
def test_invalid_manifests(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        load_manifest(path)


def test_example_iris_manifest() -> None:
    manifest = load_manifest(Path(__file__).resolve().parents[2] / "examples/models/iris/1/manifest.yaml")
    assert manifest.framework == "sklearn" and not manifest.allow_pickle
    assert [(o.name, o.datatype, o.method) for o in manifest.outputs] == [
        ("label", "INT64", "predict"), ("probabilities", "FP32", "predict_proba")
    ]
