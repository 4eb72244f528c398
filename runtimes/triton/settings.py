"""Settings of the Triton registrar (environment prefix ``MESHSERVE_TRITON_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.settings import RuntimeSettings


class TritonRegistrarSettings(RuntimeSettings):
    """Triton registrar: registers one Triton server and mirrors its models into the registry."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_TRITON_")

    triton_address: str = Field(description="host:port of Triton's gRPC endpoint")
    runtime_id: str = Field("", description="id in the registry (default triton-<host>-<port>)")
    poll_s: float = Field(0.25, gt=0, description="seconds between two looks at Triton's health and model index")
    misses: int = Field(2, ge=1, description="consecutive unanswered looks after which Triton leaves the registry")
    call_timeout_s: float = Field(1.0, gt=0, description="deadline of each look at Triton")
