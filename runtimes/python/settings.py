"""Settings of the Python runtime (environment prefix ``MESHSERVE_PYTHON_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from meshserve.runtime import ModelRuntimeSettings


class PythonRuntimeSettings(ModelRuntimeSettings):
    """Python runtime: serves scikit-learn, ONNX and Python-class models over OIP gRPC."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_PYTHON_", protected_namespaces=())
