"""Settings every runtime serving a model repository has; each runtime subclasses them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field

from meshserve.settings import MetricsSettings, RuntimeSettings


def default_runtime_id(kind: str) -> str:
    """``<kind>-<host>-<pid>``: the registry id of a runtime started without one."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


class ModelRuntimeSettings(MetricsSettings, RuntimeSettings):
    """Fields of a runtime serving a model repository.

    A runtime subclasses this with its own ``model_config`` (environment prefix such as
    ``MESHSERVE_PYTHON_``; set ``protected_namespaces=()`` for the ``model_`` fields) and
    the fields of its own backends.
    """

    model_repository: Path = Field(description="folder laid out <model>/<version>/manifest.yaml")
    load: str = Field(
        "*", description='models to load at start: "*" for all, "" for none, or comma-separated names'
    )
    runtime_id: str = Field("", description="id in the registry (default <kind>-<host>-<pid>)")
    dev_mode: bool = Field(
        False, description="take calls from anyone who reaches the port (local development only); otherwise the "
        "runtime requires TLS with mesh certificates or a mesh credential, and refuses to start without either")
    predict_threads: int = Field(4, ge=1, description="threads running synchronous predict calls")
    memory_budget_mb: float = Field(
        0.0, ge=0, description="memory loaded models may take (their estimates); a load past it evicts the least "
        "recently used, one-off models first (0: no limit)")
    idle_unload_s: float = Field(0.0, ge=0, description="unload a model after this long without a call (0: never)")
    artifact_roots: str = Field(
        "", description="comma-separated folders (besides the model repository) a catalog artifact may be in")

    def artifact_root_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.artifact_roots.split(",") if p.strip()]

    def models_to_load(self, available: list[str]) -> list[str]:
        """The model names ``load`` selects among ``available``."""
        text = self.load.strip()
        if text == "*":
            return available
        return [name.strip() for name in text.split(",") if name.strip()]
