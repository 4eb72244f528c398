"""Checking a request's inputs against a model's signature, and casting its outputs.

This is on the hot path: the checks are plain loops over precomputed tuples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from meshserve.errors import Internal, InvalidArgument
from meshserve.oip.datatypes import DATATYPES, datatype_of

from .backend import Arrays
from .manifest import FLOAT_DATATYPES, Manifest, TensorSpec


def _shape_ok(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    if len(expected) != len(actual):
        return False
    return all(e in (-1, a) for e, a in zip(expected, actual, strict=True))


def _position(array: np.ndarray, mask: np.ndarray) -> list[int]:
    """The index of the first true element of ``mask`` (shaped like ``array``)."""
    return [int(i) for i in np.unravel_index(int(np.flatnonzero(mask)[0]), array.shape)]


class _Spec:
    __slots__ = ("allow_inf", "allow_nan", "datatype", "dtype", "high", "is_float", "low", "maximum", "minimum", "name",
                 "ranged", "shape")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.datatype = spec.datatype
        self.dtype = DATATYPES[spec.datatype].dtype
        self.shape = tuple(spec.shape)
        self.is_float = spec.datatype in FLOAT_DATATYPES
        self.allow_nan, self.allow_inf = spec.allow_nan, spec.allow_inf
        self.minimum, self.maximum = spec.minimum, spec.maximum
        self.ranged = spec.minimum is not None or spec.maximum is not None
        self.low = -math.inf if spec.minimum is None else spec.minimum
        self.high = math.inf if spec.maximum is None else spec.maximum


class Signature:
    """A model version's inputs and outputs, ready for fast checks."""

    def __init__(self, model: str, version: str, manifest: Manifest) -> None:
        self.label = f"model {model!r} version {version!r}"
        self.inputs = tuple(_Spec(s) for s in manifest.inputs)
        self.outputs = tuple(_Spec(s) for s in manifest.outputs)
        self.input_names = frozenset(s.name for s in self.inputs)
        # Inputs whose values are checked: floats (NaN, infinity) and those with a range.
        self.valued = tuple(s for s in self.inputs if s.is_float or s.ranged)
        self.output_names: tuple[str, ...] = tuple(s.name for s in self.outputs)
        self.datatypes = {s.name: s.datatype for s in self.outputs}

    def check_inputs(self, inputs: Arrays) -> None:
        """InvalidArgument naming the model and tensor for any mismatch."""
        if len(inputs) != len(self.inputs) or not self.input_names.issuperset(inputs):
            unknown = sorted(set(inputs) - self.input_names)
            missing = sorted(self.input_names - set(inputs))
            parts = []
            if missing:
                parts.append(f"missing input {', '.join(map(repr, missing))}")
            if unknown:
                parts.append(f"unknown input {', '.join(map(repr, unknown))}")
            raise InvalidArgument(
                f"{self.label}: {'; '.join(parts)}; its inputs are "
                f"{', '.join(s.name for s in self.inputs)}"
            )
        for spec in self.inputs:
            array = inputs[spec.name]
            if array.dtype != spec.dtype:
                raise InvalidArgument(
                    f"{self.label}: input {spec.name!r} must be {spec.datatype}, "
                    f"got {datatype_of(array).name}"
                )
            shape = array.shape
            if not _shape_ok(spec.shape, shape):
                raise InvalidArgument(
                    f"{self.label}: input {spec.name!r} must have shape {list(spec.shape)} "
                    f"(-1 = any), got {list(shape)}"
                )
            if shape and shape[0] == 0:
                raise InvalidArgument(
                    f"{self.label}: input {spec.name!r} has an empty batch (shape {list(shape)}); "
                    "send at least one row"
                )

    def check_values(self, inputs: Arrays, allow_nan: bool, allow_inf: bool) -> None:
        """InvalidArgument for values the model cannot take: NaN or infinity, or outside the manifest's range.

        ``allow_nan`` and ``allow_inf`` say what the model's framework takes; an input's
        manifest fields, when set, decide instead. Inputs are already checked by
        :meth:`check_inputs`.
        """
        for spec in self.valued:
            array = inputs[spec.name]
            if not array.size:
                continue
            nan_ok = allow_nan if spec.allow_nan is None else spec.allow_nan
            inf_ok = allow_inf if spec.allow_inf is None else spec.allow_inf
            if spec.ranged:
                # The usual case costs two reductions: NaN makes both NaN and fails the comparisons.
                low, high = np.minimum.reduce(array, axis=None), np.maximum.reduce(array, axis=None)
                if spec.low <= low and high <= spec.high and math.isfinite(low) and math.isfinite(high):
                    continue
            elif not spec.is_float or (nan_ok and inf_ok) or np.isfinite(array).all():
                continue
            if spec.is_float and not (nan_ok and inf_ok):
                self._refuse_nonfinite(spec, array, nan_ok, inf_ok)
            if spec.ranged:
                self._check_range(spec, array)

    def _refuse_nonfinite(self, spec: _Spec, array: np.ndarray, nan_ok: bool, inf_ok: bool) -> None:
        nan = np.zeros(array.shape, bool) if nan_ok else np.isnan(array)
        inf = np.zeros(array.shape, bool) if inf_ok else np.isinf(array)
        refused = nan | inf
        count = int(refused.sum())
        if not count:
            return
        first = _position(array, refused)
        what = "NaN" if nan.any() and not inf.any() else "an infinite value" if not nan.any() else \
            "NaN and infinite values"
        takes = "finite numbers only" if not (nan_ok or inf_ok) else "no NaN" if inf_ok else \
            "no infinite values (NaN stands for a missing value)"
        raise InvalidArgument(
            f"{self.label}: input {spec.name!r} holds {what} ({count} value{'s' if count > 1 else ''}, the first at "
            f"{first}); it takes {takes}: replace them before calling"
        )

    def _check_range(self, spec: _Spec, array: np.ndarray) -> None:
        bad = (array < spec.low) | (array > spec.high)  # NaN, taken care of before, compares false
        if not bad.any():
            return
        first = _position(array, bad)
        value = array[tuple(first)].item()
        allowed = f"[{_bound(spec.minimum, '-inf')}, {_bound(spec.maximum, 'inf')}]"
        count = int(bad.sum())
        raise InvalidArgument(
            f"{self.label}: input {spec.name!r} holds {value:g} at {first}, outside {allowed}, the range it takes "
            f"({count} value{'s' if count > 1 else ''} outside in all)"
        )

    def check_requested(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The outputs to compute: the requested ones, or all when none are named."""
        if not requested:
            return self.output_names
        unknown = [r for r in requested if r not in self.datatypes]
        if unknown:
            raise InvalidArgument(
                f"{self.label} has no output {', '.join(map(repr, unknown))}; "
                f"its outputs are {', '.join(self.output_names)}"
            )
        return tuple(requested)

    def cast_outputs(self, outputs: Arrays, wanted: Sequence[str]) -> Arrays:
        """The wanted outputs as numpy arrays of the manifest's datatypes."""
        result: Arrays = {}
        for spec in self.outputs:
            if spec.name not in wanted:
                continue
            value = outputs.get(spec.name)
            if value is None:
                raise Internal(f"{self.label} returned no output {spec.name!r}")
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if array.dtype != spec.dtype:
                try:
                    array = array.astype(spec.dtype)
                except (TypeError, ValueError) as e:
                    raise Internal(
                        f"{self.label}: output {spec.name!r} of dtype {array.dtype} "
                        f"cannot be cast to {spec.datatype}: {e}"
                    ) from e
            if len(array.shape) != len(spec.shape):
                raise Internal(
                    f"{self.label}: output {spec.name!r} has shape {list(array.shape)}, "
                    f"the manifest says {list(spec.shape)}"
                )
            result[spec.name] = array
        return result


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"
