"""Settings of the router."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """The meshserve router: one Open Inference Protocol door to every model in the mesh."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ROUTER_")

    port: int = Field(8001, description="port for the inference protocol (8001, as Triton, by default)")
    load_wait_s: float = Field(
        10.0, description="after a load or unload, how long to wait for the registry to show the change"
    )
    use_link: bool = Field(
        True, description="call runtimes that offer one over the mesh link rather than gRPC (faster)"
    )
    eject_s: float = Field(
        2.0, description="how long a replica that failed with UNAVAILABLE is avoided when others exist"
    )
