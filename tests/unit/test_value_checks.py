"""Values a model cannot take: NaN and infinity as the framework or the manifest says, and the manifest's range."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshserve.errors import InvalidArgument
from meshserve.runtime.manifest import parse_manifest
from meshserve.runtime.signature import Signature


def signature(datatype: str = "FP32", **fields: Any) -> Signature:
    manifest = parse_manifest({"framework": "python", "inputs": [{"name": "x", "datatype": datatype, "shape": [-1],
                                                                   **fields}],
                               "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}, Path("manifest.yaml"))
    return Signature("m", "1", manifest)


def refusal(sig: Signature, x: np.ndarray, allow_nan: bool = False, allow_inf: bool = False) -> str:
    with pytest.raises(InvalidArgument) as caught:
        sig.check_values({"x": x}, allow_nan, allow_inf)
    return caught.value.message


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_and_infinity_refused_where_the_framework_takes_neither(datatype: str) -> None:
    sig = signature(datatype)
    dtype = sig.inputs[0].dtype
    sig.check_values({"x": np.array([1.0, -2.5, 0.0], dtype)}, False, False)  # finite: nothing to say
    assert refusal(sig, np.array([1, np.nan, np.nan], dtype)) == (
        "model 'm' version '1': input 'x' holds NaN (2 values, the first at [1]); it takes finite numbers only: "
        "replace them before calling")
    assert "holds an infinite value (1 value, the first at [0])" in refusal(sig, np.array([-np.inf, 1], dtype))
    assert "holds NaN and infinite values (2 values, the first at [0])" in refusal(sig, np.array([np.inf, np.nan],
                                                                                                   dtype))


def test_what_the_framework_takes_passes() -> None:
    sig = signature()
    sig.check_values({"x": np.array([np.nan, np.inf], np.float32)}, True, True)
    sig.check_values({"x": np.array([np.nan, 1.0], np.float32)}, True, False)  # NaN as a missing value
    assert "holds an infinite value" in refusal(sig, np.array([np.nan, np.inf], np.float32), allow_nan=True)
    assert "takes no infinite values" in refusal(sig, np.array([np.inf], np.float32), allow_nan=True)


def test_the_manifest_decides_over_the_framework() -> None:
    sig = signature(allow_nan=True, allow_inf=False)
    sig.check_values({"x": np.array([np.nan], np.float32)}, False, True)
    assert "holds an infinite value" in refusal(sig, np.array([np.inf], np.float32), True, True)
    assert "it takes no NaN" in refusal(signature(allow_nan=False), np.array([np.nan], np.float32), True, True)


def test_large_finite_values_are_not_mistaken_for_infinity() -> None:
    signature("FP64").check_values({"x": np.array([1e308, 1e308, -1e308])}, False, False)


@pytest.mark.parametrize(("datatype", "values", "message"), [
    ("FP32", [0.5, 3e38, 2000], "input 'x' holds 3e+38 at [1], outside [0, 1000], the range it takes "
                                "(2 values outside in all)"),
    ("FP32", [-1, 5], "holds -1 at [0], outside [0, 1000]"),
    ("INT64", [7, 1001], "holds 1001 at [1], outside [0, 1000]"),
    ("FP64", [np.inf], "holds inf at [0], outside [0, 1000]"),  # infinity allowed, but outside the range
])
def test_values_outside_the_manifests_range(datatype: str, values: list[float], message: str) -> None:
    sig = signature(datatype, minimum=0, maximum=1000)
    sig.check_values({"x": np.array([0, 10, 1000], sig.inputs[0].dtype)}, True, True)  # the bounds are in it
    assert message in refusal(sig, np.array(values, sig.inputs[0].dtype), True, True)


def test_nan_is_not_outside_a_range_it_is_allowed_beside() -> None:
    signature(minimum=0, maximum=1, allow_nan=True).check_values({"x": np.array([np.nan, 0.5], np.float32)},
                                                                 False, False)


def test_one_bound_only() -> None:
    assert "outside [-inf, 1]" in refusal(signature(maximum=1), np.array([2], np.float32), True, True)
    assert "outside [0, inf]" in refusal(signature(minimum=0), np.array([-2], np.float32), True, True)


def test_inputs_without_checks_cost_nothing() -> None:
    assert signature("BYTES").valued == () and signature("INT32").valued == ()
    assert len(signature("INT32", minimum=1).valued) == 1 and len(signature("FP32").valued) == 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"datatype": "INT32", "allow_nan": True}, "allow_nan and allow_inf are for FP16, FP32, FP64 inputs, not INT32"),
    ({"datatype": "BYTES", "minimum": 0}, "minimum and maximum are for numeric inputs, not BYTES"),
    ({"datatype": "FP32", "minimum": 2, "maximum": 1}, "minimum 2 is above maximum 1"),
])
def test_manifest_value_fields_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_manifest({"framework": "python", "inputs": [{"name": "x", "shape": [-1], **fields}],
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}, Path("manifest.yaml"))


def test_value_fields_are_for_inputs() -> None:
    with pytest.raises(InvalidArgument, match=r"are for inputs; outputs \['y'\] set them"):
        parse_manifest({"framework": "python", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1], "maximum": 1}]},
                       Path("manifest.yaml"))


def test_an_empty_tensor_has_no_values_to_refuse() -> None:
    signature(minimum=0, maximum=1).check_values({"x": np.zeros((0,), np.float32)}, False, False)
