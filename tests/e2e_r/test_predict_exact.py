"""Predictions through the router equal R's own predict() on the same .rds, bit for bit.

Rscript computes the expected answers in the test: it draws the inputs (full-precision
doubles, not round numbers), runs predict() on the same files the runtime serves and
writes inputs and results with writeBin (little-endian float64) or writeLines (labels).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from .helpers import R_MARKS, infer, run_rscript

pytestmark = R_MARKS

EXPECTED = r"""
args <- commandArgs(trailingOnly = TRUE)
models <- args[[1]]
out <- args[[2]]
put <- function(x, name) writeBin(as.double(x), file.path(out, name), size = 8L, endian = "little")

# mtcars and mtcars-am: the 32 cars, then 32 random cars with all 53 bits of their doubles.
set.seed(20261123)
wt <- c(mtcars$wt, runif(32, 1.5, 5.5))
hp <- c(mtcars$hp, runif(32, 50, 340))
put(wt, "wt")
put(hp, "hp")
cars <- data.frame(wt = wt, hp = hp)
put(predict(readRDS(file.path(models, "mtcars", "1", "model.rds")), cars), "mpg")

am <- new.env()
sys.source(file.path(models, "mtcars-am", "1", "model.R"), envir = am)
res <- am$predict(am$load(file.path(models, "mtcars-am", "1")), cars)
put(res$probability, "probability")
writeLines(ifelse(res$manual, "1", "0"), file.path(out, "manual"))

# iris-rf: iris with noise, keeping rows with a clear majority (a tied vote is broken at random).
suppressPackageStartupMessages(library(randomForest))
rf <- readRDS(file.path(models, "iris-rf", "1", "model.rds"))
flowers <- iris[, 1:4] + matrix(rnorm(600, sd = 0.3), ncol = 4)
votes <- predict(rf, flowers, type = "vote")
flowers <- flowers[apply(votes, 1, max) > 0.5, ]
for (col in names(flowers)) put(flowers[[col]], col)
writeLines(as.character(predict(rf, flowers)), file.path(out, "species"))
"""

IRIS_COLUMNS = {"sepal_length": "Sepal.Length", "sepal_width": "Sepal.Width",
                "petal_length": "Petal.Length", "petal_width": "Petal.Width"}


@pytest.fixture(scope="module")
def expected(r_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("r-expected")
    run_rscript(EXPECTED, str(r_repository), str(out), folder=out)
    return out


def f64(folder: Path, name: str) -> np.ndarray:
    return np.fromfile(folder / name, dtype="<f8")


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float64 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    differ = np.flatnonzero(got.view("<u8") != want.view("<u8"))
    assert differ.size == 0, [(float(got[i]).hex(), float(want[i]).hex()) for i in differ[:5]]


@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
def test_mtcars_matches_r_bit_for_bit(router: grpc.Channel, r_runtime: str, expected: Path, raw: bool) -> None:
    inputs = {"wt": f64(expected, "wt"), "hp": f64(expected, "hp")}
    assert len(inputs["wt"]) == 64
    got = infer(router, "mtcars", inputs, raw=raw)
    assert_same_bits(got["mpg"], f64(expected, "mpg"))


def test_iris_rf_labels_match_r(router: grpc.Channel, r_runtime: str, expected: Path) -> None:
    inputs = {name: f64(expected, column) for name, column in IRIS_COLUMNS.items()}
    want = (expected / "species").read_text().split()
    assert len(want) > 100 and set(want) == {"setosa", "versicolor", "virginica"}
    got = infer(router, "iris-rf", inputs)["species"]
    assert [label.decode() for label in got] == want


def test_mtcars_am_script_matches_r(router: grpc.Channel, r_runtime: str, expected: Path) -> None:
    got = infer(router, "mtcars-am", {"wt": f64(expected, "wt"), "hp": f64(expected, "hp")})
    assert_same_bits(got["probability"], f64(expected, "probability"))
    want_manual = np.array([line == "1" for line in (expected / "manual").read_text().split()])
    assert got["manual"].dtype == np.bool_
    np.testing.assert_array_equal(got["manual"], want_manual)
    assert 0 < want_manual.sum() < len(want_manual)  # both answers occur
