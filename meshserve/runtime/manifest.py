"""The ``manifest.yaml`` that describes one model version in a model repository.

The manifest is shared by every runtime: ``runtime`` says which kind of runtime serves
the version, ``framework`` which of that runtime's loaders loads it (each runtime
validates the frameworks and framework-specific fields it serves).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meshserve.errors import InvalidArgument
from meshserve.oip.datatypes import DATATYPES

MANIFEST = "manifest.yaml"
DEFAULT_RUNTIME = "python"
SklearnMethod = Literal["predict", "predict_proba", "decision_function", "transform"]
FLOAT_DATATYPES = ("FP16", "FP32", "FP64")


class TensorSpec(BaseModel):
    """One input or output: name, OIP datatype and shape (-1 for a variable dimension)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    datatype: str
    shape: list[int]
    method: SklearnMethod | None = Field(
        None, description="sklearn outputs: the estimator method that produces this output"
    )
    onnx_name: str | None = Field(None, description="onnx: the graph's tensor name when it differs")
    allow_nan: bool | None = Field(
        None, description="float inputs: whether NaN may be sent (unset: what the framework takes; sklearn: the "
        "estimator's allow_nan tag)")
    allow_inf: bool | None = Field(
        None, description="float inputs: whether infinite values may be sent (unset: what the framework takes; "
        "sklearn: never)")
    minimum: float | None = Field(None, description="numeric inputs: the smallest value the model takes")
    maximum: float | None = Field(None, description="numeric inputs: the largest value the model takes")

    @model_validator(mode="after")
    def _value_fields(self) -> TensorSpec:
        if self.datatype not in FLOAT_DATATYPES and (self.allow_nan is not None or self.allow_inf is not None):
            raise ValueError(f"allow_nan and allow_inf are for {', '.join(FLOAT_DATATYPES)} inputs, "
                             f"not {self.datatype}")
        if self.datatype in ("BYTES", "BOOL") and (self.minimum is not None or self.maximum is not None):
            raise ValueError(f"minimum and maximum are for numeric inputs, not {self.datatype}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        return self

    @property
    def checks_values(self) -> bool:
        """Whether the manifest says anything about this tensor's values."""
        return any(v is not None for v in (self.allow_nan, self.allow_inf, self.minimum, self.maximum))

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; use one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 for d in value):
            raise ValueError("dimensions are >= 0, or -1 for a variable one")
        return value


class RSection(BaseModel):
    """The ``r:`` section: how the R runtime hands tensors to R and reads its results back."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    columns: dict[str, str] = Field(
        default_factory=dict, description="input tensor -> data.frame column (default: the same name)"
    )
    as_: Literal["data.frame", "matrix"] = Field(
        "data.frame", alias="as", description="what predict() receives: a data.frame or a matrix"
    )
    script: str | None = Field(None, description="an R file in the version folder defining load() and predict()")
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="output -> column or element of predict()'s result (default: the whole result for one output)",
    )
    type: str = Field("", description="the type= argument to predict() (e.g. response, prob)")
    packages: list[str] = Field(default_factory=list, description="R packages to attach before loading")


class Manifest(BaseModel):
    """What a runtime needs to load and serve one model version."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the model's name; when given it must match its folder")
    runtime: str = Field(DEFAULT_RUNTIME, min_length=1, description="kind of runtime that serves it: python, r ...")
    framework: str = Field(min_length=1, description="which of its runtime's loaders loads it (sklearn, onnx ...)")
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    artifact: str | None = Field(None, description="artifact file, relative to the version folder")
    parameters: dict[str, Any] = Field(default_factory=dict, description="free mapping handed to the model")
    trusted_types: list[str] = Field(
        default_factory=list, description="sklearn/skops: types to trust beyond skops' defaults"
    )
    allow_pickle: bool = Field(False, description="sklearn: allow plain pickle/joblib artifacts")
    entrypoint: str | None = Field(None, description='python: "file.py:ClassName" in the version folder')
    intra_op_threads: int = Field(1, ge=1, description="onnx: onnxruntime intra-op threads")
    r: RSection = Field(
        default_factory=lambda: RSection.model_validate({}), description="r: columns, matrix or data.frame, script"
    )

    @field_validator("framework")
    @classmethod
    def _served_framework(cls, value: str, info: ValidationInfo) -> str:
        # parse_manifest passes the serving runtime's kind and frameworks in the context.
        served: Mapping[str, str] | None = (info.context or {}).get("frameworks")
        if served is not None and value not in served:
            kind = (info.context or {}).get("kind", "this")
            raise ValueError(
                f"the {kind} runtime does not serve framework {value!r}; its frameworks are {', '.join(served)}"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names repeat: {names}")
        checked = [s.name for s in self.outputs if s.checks_values]
        if checked:
            raise ValueError(f"allow_nan, allow_inf, minimum and maximum are for inputs; outputs {checked} set them")
        return self


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest file as a mapping, not yet validated."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InvalidArgument(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"invalid {path}: a manifest is a mapping of fields, got {type(data).__name__}")
    return data


def runtime_of(data: dict[str, Any]) -> str:
    """The kind of runtime a raw manifest names (``python`` when it names none)."""
    return str(data.get("runtime") or DEFAULT_RUNTIME)


def parse_manifest(data: dict[str, Any], path: Path, kind: str | None = None,
                   frameworks: Mapping[str, str] | None = None) -> Manifest:
    """Validate a raw manifest; InvalidArgument says what is wrong and where.

    With ``frameworks``, a framework not among them is one of the problems reported.
    """
    try:
        return Manifest.model_validate(data, context={"kind": kind, "frameworks": frameworks})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidArgument(f"invalid {path}: {problems}") from e


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; InvalidArgument says what is wrong and where."""
    return parse_manifest(read_manifest(path), path)
