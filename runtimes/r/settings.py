"""Settings of the R runtime (environment prefix ``MESHSERVE_R_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.runtime import ModelRuntimeSettings


class RRuntimeSettings(ModelRuntimeSettings):
    """R runtime: serves R models (.rds or load/predict scripts) from a pool of Rscript workers."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_R_", protected_namespaces=())

    pool_size: int = Field(2, ge=1, description="Rscript worker processes")
    queue_max: int = Field(256, ge=1, description="requests that may wait for a worker before RESOURCE_EXHAUSTED")
    timeout_s: float = Field(30.0, gt=0, description="a predict() running longer is killed with its worker")
    rscript: str = Field("Rscript", description="the Rscript program")
    worker_log: Path | None = Field(None, description="file for the workers' own output (default: stderr)")
