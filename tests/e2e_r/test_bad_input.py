"""Bad input through the router: INVALID_ARGUMENT with a message naming the column."""

from __future__ import annotations

import grpc
import numpy as np
from e2e.helpers import rpc_error

from .helpers import R_MARKS, infer

pytestmark = R_MARKS


def invalid(router: grpc.Channel, model: str, inputs: dict[str, np.ndarray]) -> str:
    error = rpc_error(lambda: infer(router, model, inputs))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    return error.details()


def test_na_in_an_input(router: grpc.Channel, r_runtime: str) -> None:
    details = invalid(router, "mtcars", {"wt": np.array([2.62, 3.0]), "hp": np.array([110.0, np.nan])})
    assert "'hp'" in details and "NA" in details and "element 2" in details, details
    assert infer(router, "mtcars", {"wt": np.array([2.62, 3.0]), "hp": np.array([110.0, 150.0])})["mpg"].shape == (2,)


def test_missing_input(router: grpc.Channel, r_runtime: str) -> None:
    details = invalid(router, "mtcars", {"wt": np.array([2.62])})
    assert "missing input 'hp'" in details, details


def test_wrong_column_type_refused_by_r(router: grpc.Channel, r_runtime: str) -> None:
    # mtcars-bytes declares wt as BYTES, so the runtime lets labels through and R refuses them.
    details = invalid(router, "mtcars-bytes", {"wt": np.array([b"heavy"], dtype=object), "hp": np.array([110.0])})
    assert "column 'wt' must be numeric" in details, details


def test_unseen_factor_level(router: grpc.Channel, r_runtime: str) -> None:
    ok = infer(router, "mtcars-cyl", {"wt": np.array([2.62, 3.2]), "cyl": np.array([b"6", b"8"], dtype=object)})
    assert ok["mpg"].shape == (2,)
    details = invalid(router, "mtcars-cyl", {"wt": np.array([2.62]), "cyl": np.array([b"5"], dtype=object)})
    assert "column 'cyl'" in details and "'5'" in details and "never saw" in details, details
    assert "'4', '6', '8'" in details, details  # the levels it knows


def test_infinity_randomforest_refuses(router: grpc.Channel, r_runtime: str) -> None:
    rows = {"sepal_length": np.array([5.1, 6.7]), "sepal_width": np.array([3.5, np.inf]),
            "petal_length": np.array([1.4, 5.2]), "petal_width": np.array([0.2, 2.3])}
    details = invalid(router, "iris-rf", rows)
    assert "NA/NaN/Inf" in details and "Traceback" not in details, details
    rows["sepal_width"][1] = 3.0
    assert list(infer(router, "iris-rf", rows)["species"]) == [b"setosa", b"virginica"]
