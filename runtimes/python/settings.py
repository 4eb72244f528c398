"""Settings of the Python runtime (environment prefix ``MESHSERVE_PYTHON_``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.settings import RuntimeSettings


def _default_runtime_id() -> str:
    return f"python-{socket.gethostname()}-{os.getpid()}"


class PythonRuntimeSettings(RuntimeSettings):
    """Python runtime: serves scikit-learn, ONNX and Python-class models over OIP gRPC."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_PYTHON_", protected_namespaces=())

    model_repository: Path = Field(description="folder laid out <model>/<version>/manifest.yaml")
    load: str = Field(
        "*", description='models to load at start: "*" for all, "" for none, or comma-separated names'
    )
    runtime_id: str = Field(
        default_factory=_default_runtime_id, description="id in the registry (default python-<host>-<pid>)"
    )
    predict_threads: int = Field(4, ge=1, description="threads running synchronous predict calls")

    def models_to_load(self, available: list[str]) -> list[str]:
        """The model names ``load`` selects among ``available``."""
        text = self.load.strip()
        if text == "*":
            return available
        return [name.strip() for name in text.split(",") if name.strip()]
