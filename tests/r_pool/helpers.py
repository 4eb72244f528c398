"""Helpers for the R pool tests: R models written as scripts, and R's own answers read back."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meshserve.runtimes.r.protocol import RModelSpec

MTCARS_OUT = [("mpg", "FP64")]


def script_model(folder: Path, name: str, predict_body: str, load_body: str = "NULL") -> RModelSpec:
    """An R script model in ``folder/name/model.R`` whose predict(model, data) runs ``predict_body``."""
    path = folder / name / "model.R"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"load <- function(dir) {{\n{textwrap.indent(load_body, '  ')}\n}}\n"
        f"predict <- function(model, data) {{\n{textwrap.indent(textwrap.dedent(predict_body), '  ')}\n}}\n"
    )
    return RModelSpec(str(path))


def read_doubles(path: Path) -> np.ndarray:
    """Doubles R wrote with writeBin(x, size = 8, endian = "little")."""
    return np.fromfile(path, dtype="<f8")


def mtcars_inputs(n: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Weights and horsepowers with all 53 bits of mantissa in use."""
    rng = np.random.default_rng(seed)
    return {"wt": rng.uniform(1.5, 5.5, n), "hp": rng.uniform(50.0, 335.0, n)}


async def assert_eventually(check: Callable[[], None], within_s: float = 10.0) -> None:
    """Run ``check`` until it stops raising AssertionError (its last error after ``within_s``)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
