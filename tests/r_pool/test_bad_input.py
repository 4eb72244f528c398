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
