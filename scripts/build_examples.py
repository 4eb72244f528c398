"""Build the example models' artifacts (idempotent; rebuilds only what is missing).

    .venv/bin/python scripts/build_examples.py [--force]

iris: a scikit-learn logistic regression on sklearn's bundled iris data, saved with
skops to examples/models/iris/1/model.skops (the manifest beside it is committed).

iris-onnx: the same pipeline exported to ONNX with skl2onnx, for Triton, to
examples/triton/iris-onnx/1/model.onnx (config.pbtxt and model.py are committed).

mtcars, iris-rf, mtcars-am, sentiment-glm: R models (lm, randomForest, glms, one behind a load/predict
script) built by scripts/build_r_examples.R with Rscript, when R is installed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
TRITON_MODELS = ROOT / "examples" / "triton"
log = logging.getLogger("build_examples")


def iris_pipeline() -> Any:
    """StandardScaler + LogisticRegression fitted on sklearn's iris data, as float32."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    x = data.data.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    model.fit(x, data.target.astype(np.int64))
    return model


def build_iris(force: bool) -> Path:
    target = MODELS / "iris" / "1" / "model.skops"
    if target.exists() and not force:
        return target
    import skops.io as sio

    model = iris_pipeline()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    sio.dump(model, tmp)
    tmp.replace(target)
    log.info("built %s", target.relative_to(ROOT))
    return target


def build_iris_onnx(force: bool) -> Path:
    target = TRITON_MODELS / "iris-onnx" / "1" / "model.onnx"
    if target.exists() and not force:
        return target
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    # zipmap=False: probabilities come out as a plain [-1, 3] tensor, not a list of maps.
    onnx_model = to_onnx(iris_pipeline(), initial_types=[("input", FloatTensorType([None, 4]))],
                         options={"zipmap": False})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(onnx_model.SerializeToString())
    tmp.replace(target)
    log.info("built %s", target.relative_to(ROOT))
    return target


def build_r_models() -> None:
    rscript = shutil.which("Rscript")
    if rscript is None:
        log.warning("Rscript not found: the R example models are not built (install Debian's r-base-core)")
        return
    done = subprocess.run([rscript, str(ROOT / "scripts" / "build_r_examples.R"), str(MODELS)],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"building the R example models failed:\n{done.stderr[-2000:]}")
    log.info("built the R example models (mtcars, iris-rf, mtcars-am, sentiment-glm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when artifacts exist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_iris(args.force)
    build_iris_onnx(args.force)
    build_r_models()


if __name__ == "__main__":
    main()
