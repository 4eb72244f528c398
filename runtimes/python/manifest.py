"""The ``manifest.yaml`` that describes one model version in the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meshserve.errors import InvalidArgument
from meshserve.oip.datatypes import DATATYPES

MANIFEST = "manifest.yaml"
SklearnMethod = Literal["predict", "predict_proba", "decision_function", "transform"]


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


class Manifest(BaseModel):
    """What the Python runtime needs to load and serve one model version."""

    model_config = ConfigDict(extra="forbid")

    framework: Literal["sklearn", "onnx", "python"]
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    artifact: str | None = Field(None, description="artifact file, relative to the version folder")
    trusted_types: list[str] = Field(
        default_factory=list, description="sklearn/skops: types to trust beyond skops' defaults"
    )
    allow_pickle: bool = Field(False, description="sklearn: allow plain pickle/joblib artifacts")
    entrypoint: str | None = Field(None, description='python: "file.py:ClassName" in the version folder')
    intra_op_threads: int = Field(1, ge=1, description="onnx: onnxruntime intra-op threads")
    parameters: dict[str, Any] = Field(default_factory=dict, description="python: passed to the class")

    @model_validator(mode="after")
    def _framework_fields(self) -> Manifest:
        if self.framework in ("sklearn", "onnx") and not self.artifact:
            raise ValueError(f"framework {self.framework} needs an 'artifact' file")
        if self.framework == "python" and (not self.entrypoint or ":" not in self.entrypoint):
            raise ValueError('framework python needs an entrypoint "file.py:ClassName"')
        if self.framework == "sklearn":
            if len(self.inputs) != 1:
                raise ValueError("an sklearn model takes exactly one input (its X)")
            missing = [o.name for o in self.outputs if o.method is None]
            if missing:
                raise ValueError(
                    f"sklearn outputs {missing} need a 'method' (predict, predict_proba, "
                    "decision_function or transform)"
                )
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names repeat: {names}")
        return self


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; InvalidArgument says what is wrong and where."""
    try:
        data = yaml.safe_load(path.read_text())
        return Manifest.model_validate(data)
    except (OSError, yaml.YAMLError) as e:
        raise InvalidArgument(f"cannot read {path}: {e}") from e
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidArgument(f"invalid {path}: {problems}") from e
