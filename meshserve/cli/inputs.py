"""Inputs given on the command line, turned into numpy arrays shaped by model metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshserve.cli.common import UserError
from meshserve.errors import MeshError
from meshserve.oip.datatypes import lookup
from meshserve.protos.inference import grpc_service_pb2 as pb


def parse_input_flags(flags: Iterable[str]) -> dict[str, Any]:
    """``NAME=JSON`` pairs (``features=[[5.1, 3.5, 1.4, 0.2]]``) to a mapping."""
    values: dict[str, Any] = {}
    for flag in flags:
        name, sep, text = flag.partition("=")
        if not sep or not name:
            raise UserError(f"--input {flag!r}: write NAME=JSON, e.g. features='[[5.1, 3.5, 1.4, 0.2]]'")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--input {name}: not JSON ({e.msg}): {text!r}") from None
    return values


def parse_json_inputs(text: str) -> dict[str, Any]:
    """A JSON object of name to nested array, given inline or as ``@file.json``."""
    source = "--json"
    if text.startswith("@"):
        path = Path(text[1:])
        source = str(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f'{source}: expected an object of input name to array, e.g. {{"features": [[...]]}}')
    return data


def to_array(name: str, value: Any, meta: pb.ModelMetadataResponse.TensorMetadata) -> np.ndarray:
    """``value`` as an array of the input's datatype; one sample gains the batch dimension."""
    try:
        dt = lookup(meta.datatype)
    except MeshError as e:
        raise UserError(f"input {name}: the model declares {e.message}") from None
    array: np.ndarray
    try:
        if dt.name == "BYTES":
            raw = np.asarray(value, dtype=object)
            array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(raw)
        else:
            array = np.asarray(value, dtype=dt.dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"input {name}: expected {meta.datatype} values: {e}") from None
    shape: Sequence[int] = list(meta.shape)
    if shape and array.ndim == len(shape) - 1 and shape[0] == -1:
        return np.expand_dims(array, 0)
    return array


def shape_inputs(values: Mapping[str, Any], metadata: pb.ModelMetadataResponse) -> dict[str, np.ndarray]:
    """Check names against the model's inputs and convert every value."""
    declared = {t.name: t for t in metadata.inputs}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise UserError(
            f"model {metadata.name} has no input {', '.join(unknown)}; inputs: {', '.join(declared) or 'none'}"
        )
    missing = [n for n in declared if n not in values]
    if missing:
        wanted = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in metadata.inputs)
        raise UserError(f"missing input {', '.join(missing)}; model {metadata.name} takes {wanted}")
    return {n: to_array(n, values[n], declared[n]) for n in declared}
