"""Bad input gives InvalidArgument naming the column and the problem, never an R dump."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from meshserve.errors import InvalidArgument
from meshserve.runtimes.r.pool import RWorkerPool
from meshserve.runtimes.r.protocol import RModelSpec

from .helpers import MTCARS_OUT

pytestmark = [
    pytest.mark.r,
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not found: install Debian's r-base-core"),
]


def mtcars(examples: Path) -> RModelSpec:
    return RModelSpec(str(examples / "mtcars" / "1" / "model.rds"))


async def test_na_input(pool: RWorkerPool, examples: Path) -> None:
    inputs = {"wt": np.array([2.5, np.nan]), "hp": np.array([100.0, 120.0])}
    with pytest.raises(InvalidArgument, match=r"^R: input 'wt' has NA/NaN at element 2"):
        await pool.predict("mtcars", mtcars(examples), inputs, MTCARS_OUT)


async def test_missing_column(pool: RWorkerPool, examples: Path) -> None:
    inputs = {"wt": np.array([2.5]), "horsepower": np.array([100.0])}
    with pytest.raises(InvalidArgument, match=r"needs column\(s\) 'hp', which no input provides"):
        await pool.predict("mtcars", mtcars(examples), inputs, MTCARS_OUT)


async def test_wrong_column_type(pool: RWorkerPool, examples: Path) -> None:
    inputs = {"wt": np.array([b"heavy"], dtype=object), "hp": np.array([100.0])}
    with pytest.raises(InvalidArgument, match=r"column 'wt' must be numeric .*got character \(BYTES\)"):
        await pool.predict("mtcars", mtcars(examples), inputs, MTCARS_OUT)


async def test_unseen_factor_level(
    pool: RWorkerPool, tmp_path: Path, r_expected: Callable[[str], Path]
) -> None:
    path = tmp_path / "cyl" / "model.rds"
    path.parent.mkdir()
    r_expected(f'd <- transform(mtcars, cyl = factor(cyl)); saveRDS(lm(mpg ~ wt + cyl, data = d), "{path}")')
    spec = RModelSpec(str(path))
    good = await pool.predict(
        "cyl", spec, {"wt": np.array([2.5, 3.0]), "cyl": np.array([b"4", b"8"], dtype=object)}, MTCARS_OUT
    )
    assert good.outputs["mpg"].shape == (2,)
    unseen = r"column 'cyl' has level\(s\) '7' the model never saw; known levels: '4', '6', '8'"
    with pytest.raises(InvalidArgument, match=unseen):
        await pool.predict(
            "cyl", spec, {"wt": np.array([2.5, 3.0]), "cyl": np.array([b"4", b"7"], dtype=object)}, MTCARS_OUT
        )


async def test_int64_inputs_reach_r_as_numbers(pool: RWorkerPool, examples: Path) -> None:
    inputs = {"wt": np.array([3.0]), "hp": np.array([110], dtype=np.int64)}
    floats = {"wt": np.array([3.0]), "hp": np.array([110.0])}
    a = await pool.predict("mtcars", mtcars(examples), inputs, MTCARS_OUT)
    b = await pool.predict("mtcars", mtcars(examples), floats, MTCARS_OUT)
    assert a.outputs["mpg"].tobytes() == b.outputs["mpg"].tobytes()
    with pytest.raises(InvalidArgument, match="beyond ±2\\^53"):
        await pool.predict("mtcars", mtcars(examples), {"wt": np.array([3.0]), "hp": np.array([2**60])}, MTCARS_OUT)


async def test_infinity_a_model_refuses_is_bad_input(pool: RWorkerPool, examples: Path) -> None:
    # lm takes infinity (and answers -Inf); randomForest's compiled code refuses it: that is the
    # caller's input, INVALID_ARGUMENT, not an R error.
    spec = RModelSpec(str(examples / "iris-rf" / "1" / "model.rds"), columns={
        "sepal_length": "Sepal.Length", "sepal_width": "Sepal.Width",
        "petal_length": "Petal.Length", "petal_width": "Petal.Width"})
    inputs = {"sepal_length": np.array([5.1, np.inf]), "sepal_width": np.array([3.5, 3.0]),
              "petal_length": np.array([1.4, 5.2]), "petal_width": np.array([0.2, 2.3])}
    with pytest.raises(InvalidArgument, match=r"^R: predict\(\) failed: NA/NaN/Inf in foreign function call"):
        await pool.predict("iris-rf", spec, inputs, [("species", "BYTES")])
    inputs["sepal_length"][1] = 6.7
    result = await pool.predict("iris-rf", spec, inputs, [("species", "BYTES")])
    assert list(result.outputs["species"]) == [b"setosa", b"virginica"]
    mpg = await pool.predict("mtcars", mtcars(examples), {"wt": np.array([np.inf]), "hp": np.array([110.0])},
                             MTCARS_OUT)
    assert mpg.outputs["mpg"][0] == -np.inf
