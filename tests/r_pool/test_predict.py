"""Predictions through the pool equal R's own predict(), bit for bit."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from meshserve.runtimes.r.pool import RWorkerPool
from meshserve.runtimes.r.protocol import RModelSpec

from .helpers import MTCARS_OUT, mtcars_inputs, read_doubles, script_model

pytestmark = [
    pytest.mark.r,
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not found: install Debian's r-base-core"),
]

IRIS_COLUMNS = {
    "sepal_length": "Sepal.Length", "sepal_width": "Sepal.Width",
    "petal_length": "Petal.Length", "petal_width": "Petal.Width",
}


def mtcars_spec(examples: Path) -> RModelSpec:
    return RModelSpec(str(examples / "mtcars" / "1" / "model.rds"))


def iris_spec(examples: Path) -> RModelSpec:
    return RModelSpec(str(examples / "iris-rf" / "1" / "model.rds"), columns=IRIS_COLUMNS)


async def test_mtcars_equals_r_predict_bit_for_bit(
    pool: RWorkerPool, examples: Path, r_expected: Callable[[str], Path]
) -> None:
    inputs = mtcars_inputs(200)
    result = await pool.predict("mtcars", mtcars_spec(examples), inputs, MTCARS_OUT)

    folder = r_expected("invisible()")
    inputs["wt"].astype("<f8").tofile(folder / "wt.bin")
    inputs["hp"].astype("<f8").tofile(folder / "hp.bin")
    r_expected(f"""
        m <- readRDS("{examples}/mtcars/1/model.rds")
        rd <- function(f) readBin(f, "double", 200, size = 8, endian = "little")
        p <- predict(m, data.frame(wt = rd("wt.bin"), hp = rd("hp.bin")))
        writeBin(unname(p), "expected.bin", size = 8, endian = "little")
    """)
    expected = read_doubles(folder / "expected.bin")
    assert result.outputs["mpg"].dtype == np.dtype("<f8")
    assert result.outputs["mpg"].tobytes() == expected.tobytes()
    assert result.r_nanos > 0


async def test_iris_rf_factor_labels_equal_r_predict(
    pool: RWorkerPool, examples: Path, r_expected: Callable[[str], Path]
) -> None:
    folder = r_expected(f"""
        suppressPackageStartupMessages(library(randomForest))
        rf <- readRDS("{examples}/iris-rf/1/model.rds")
        set.seed(1)
        rows <- iris[sample(nrow(iris), 40), 1:4]
        rows$Sepal.Length <- rows$Sepal.Length + runif(40, -0.3, 0.3)
        writeBin(as.vector(t(as.matrix(rows))), "rows.bin", size = 8, endian = "little")
        writeLines(as.character(predict(rf, rows)), "labels.txt")
    """)
    rows = read_doubles(folder / "rows.bin").reshape(40, 4)
    inputs = {name: rows[:, i].copy() for i, name in enumerate(IRIS_COLUMNS)}
    result = await pool.predict("iris-rf", iris_spec(examples), inputs, [("species", "BYTES")])
    expected = (folder / "labels.txt").read_text().split()
    assert [b.decode() for b in result.outputs["species"]] == expected


async def test_script_model_with_two_outputs(
    pool: RWorkerPool, examples: Path, r_expected: Callable[[str], Path]
) -> None:
    inputs = {"wt": np.array([1.8, 2.2, 3.4, 5.1]), "hp": np.array([66.0, 110.0, 175.0, 230.0])}
    spec = RModelSpec(str(examples / "mtcars-am" / "1" / "model.R"))
    result = await pool.predict("mtcars-am", spec, inputs, [("probability", "FP64"), ("manual", "BOOL")])
    folder = r_expected(f"""
        fit <- readRDS("{examples}/mtcars-am/1/fit.rds")
        p <- predict(fit, data.frame(wt = c(1.8, 2.2, 3.4, 5.1), hp = c(66, 110, 175, 230)), type = "response")
        writeBin(unname(p), "p.bin", size = 8, endian = "little")
    """)
    expected = read_doubles(folder / "p.bin")
    assert result.outputs["probability"].tobytes() == expected.tobytes()
    assert result.outputs["manual"].tolist() == (expected > 0.5).tolist()


async def test_outputs_take_their_declared_datatype(pool: RWorkerPool, examples: Path) -> None:
    result = await pool.predict("mtcars", mtcars_spec(examples), mtcars_inputs(3), [("mpg", "FP32")])
    assert result.outputs["mpg"].dtype == np.dtype("<f4")


async def test_fifty_concurrent_requests_over_two_workers(pool: RWorkerPool, examples: Path) -> None:
    async def one(i: int) -> np.ndarray:
        result = await pool.predict("mtcars", mtcars_spec(examples), mtcars_inputs(5, seed=i % 3), MTCARS_OUT)
        return result.outputs["mpg"]

    answers = await asyncio.gather(*(one(i) for i in range(50)))
    for i, answer in enumerate(answers):
        assert answer.tobytes() == answers[i % 3].tobytes()


async def test_model_reloads_when_its_file_changes(
    pool: RWorkerPool, tmp_path: Path, r_expected: Callable[[str], Path]
) -> None:
    path = tmp_path / "m" / "model.rds"
    path.parent.mkdir()
    r_expected(f'saveRDS(lm(mpg ~ wt, data = mtcars), "{path}")')
    spec = RModelSpec(str(path))
    inputs = {"wt": np.array([3.0])}
    first = await pool.predict("reload", spec, inputs, MTCARS_OUT)
    r_expected(f'saveRDS(lm(mpg ~ wt + I(wt^2), data = mtcars), "{path}")')
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    await asyncio.sleep(1.1)  # workers look at a kept model's mtime at most once a second
    for _ in range(4):  # reaches both workers
        second = await pool.predict("reload", spec, inputs, MTCARS_OUT)
        assert second.outputs["mpg"][0] != first.outputs["mpg"][0]


async def test_model_output_on_stdout_does_not_corrupt_the_protocol(
    pool: RWorkerPool, tmp_path: Path
) -> None:
    spec = script_model(tmp_path, "chatty", """
        print(data); cat(strrep("x", 100000), "\\n"); message("a note on stderr"); warning("careful")
        cat(rawToChar(as.raw(1:255)))
        data$x * 2
    """)
    result = await pool.predict("chatty", spec, {"x": np.array([1.5, 2.5])}, [("y", "FP64")])
    assert result.outputs["y"].tolist() == [3.0, 5.0]
    log = (tmp_path / "r-workers.log").read_bytes()
    assert b"a note on stderr" in log and b"careful" in log
