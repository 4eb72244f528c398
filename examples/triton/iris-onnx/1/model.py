"""iris-onnx: runs model.onnx with onnxruntime inside Triton's Python backend.

The Python-backend stub runs Debian's Python in isolated mode, where onnxruntime is not
installed. The launcher puts the directories that hold it (the venv's site-packages) in
MESHSERVE_TRITON_PYTHONPATH; they are appended to sys.path, so the stub's own numpy 1
stays first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

for _entry in os.environ.get("MESHSERVE_TRITON_PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        sys.path.append(_entry)

try:
    import onnxruntime as ort
except ImportError as exc:
    raise ImportError(
        "iris-onnx needs onnxruntime, which Triton's Python cannot import: set MESHSERVE_TRITON_PYTHONPATH "
        f"to the site-packages that holds it (now {os.environ.get('MESHSERVE_TRITON_PYTHONPATH')!r}): {exc}"
    ) from exc

OUTPUTS = ["label", "probabilities"]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        # model_repository is this model's folder; the version folder holds model.onnx.
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        if not path.exists():
            raise pb_utils.TritonModelException(f"{path} is missing: build it with scripts/build_examples.py")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one instance, one thread: Triton scales by instances
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            label, probabilities = self.session.run(OUTPUTS, {"input": features})
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("label", label.astype("int64")),
                pb_utils.Tensor("probabilities", probabilities.astype("float32")),
            ]))
        return responses
