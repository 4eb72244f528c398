"""Checking a request's inputs against a model's signature, and casting its outputs.

This is on the hot path: the checks are plain loops over precomputed tuples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meshserve.errors import Internal, InvalidArgument
from meshserve.oip.datatypes import DATATYPES, datatype_of

from .backend import Arrays
from .manifest import Manifest, TensorSpec


def _shape_ok(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    if len(expected) != len(actual):
        return False
    return all(e in (-1, a) for e, a in zip(expected, actual, strict=True))


class _Spec:
    __slots__ = ("datatype", "dtype", "name", "shape")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.datatype = spec.datatype
        self.dtype = DATATYPES[spec.datatype].dtype
        self.shape = tuple(spec.shape)


class Signature:
    """A model version's inputs and outputs, ready for fast checks."""

    def __init__(self, model: str, version: str, manifest: Manifest) -> None:
        self.label = f"model {model!r} version {version!r}"
        self.inputs = tuple(_Spec(s) for s in manifest.inputs)
        self.outputs = tuple(_Spec(s) for s in manifest.outputs)
        self.input_names = frozenset(s.name for s in self.inputs)
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
