"""Settings of the router."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.auth.jwt_settings import JwtSettings
from meshserve.settings import MeshCredentialSettings, MetricsSettings, ServiceSettings


class RouterSettings(JwtSettings, MeshCredentialSettings, MetricsSettings, ServiceSettings):
    """The meshserve router: one Open Inference Protocol door to every model in the mesh."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ROUTER_")

    port: int = Field(8001, description="port for the inference protocol (8001, as Triton, by default)")
    metrics_port: int = Field(
        8002, ge=-1, description="port serving Prometheus metrics (HTTP /metrics on host); the default 8002, when "
        "in use, gives way to a free port with a warning; 0 picks a free one, -1 disables it")
    load_wait_s: float = Field(
        10.0, description="after a load or unload, how long to wait for the registry to show the change"
    )
    use_link: bool = Field(
        True, description="call runtimes that offer one over the mesh link rather than gRPC (faster)"
    )
    nats_url: str = Field(
        "", description='NATS server taking call events (e.g. "nats://127.0.0.1:4222"); "" turns auditing off'
    )
    data_dir: Path = Field(
        Path("meshserve-data/router"),
        description="where the router keeps its audit spool and journal (one folder per router)"
    )
    router_id: str = Field(default_factory=lambda: f"router-{socket.gethostname()}-{os.getpid()}",
                           description="this router's name in call events and in the registry "
                           "(one name per router: the routers count each other by it)")
    audit_flush_s: float = Field(
        0.05, description="how long call events gather into one batch before they are published"
    )
    audit_spool_max_bytes: int = Field(256 * 1024 * 1024, description="most disk the audit spool may use")
    audit_journal: bool = Field(
        True, description="append every call to the router's journal (<data_dir>/audit-journal) before its answer "
        "leaves, so a router that dies loses no call events: it publishes the events of what the journal holds when "
        "it starts again. Off, the events of the last few milliseconds' calls wait in memory only")
    audit_journal_fsync: Literal["never", "interval", "always"] = Field(
        "interval", description='when journal records reach the disk: "never" (the page cache only: they survive '
        'the router\'s crash, not the machine\'s), "interval" (an fsync every audit_journal_fsync_interval_s in '
        'the background: a machine crash loses at most that long\'s calls), or "always" (an fsync before each '
        'answer, shared by the calls answered meanwhile; slowest)')
    audit_journal_fsync_interval_s: float = Field(
        0.1, gt=0, description='how often the journal is fsynced under audit_journal_fsync "interval"')
    audit_capture_max_bytes: int = Field(
        64 * 1024, description="largest tensor stored when a model's policy captures payloads (its own cap wins)"
    )
    dev_mode: bool = Field(
        False, description="let callers without a key infer and read metadata of every model (local development only)"
    )
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="calls per second each principal without a rate limit of its own may make across "
        "all routers, which share it evenly (0: none; give every router the same)")
    rate_limit_burst: int = Field(0, ge=0, description="calls a principal may make at once above its rate")
    lease_ttl_s: int = Field(
        3, ge=2, description="seconds the registry keeps this router after it dies; the live routers share every "
        "principal's rate limit evenly, so until then the others hold principals to a smaller share")
    eject_s: float = Field(
        2.0, description="how long a replica whose breaker opened is avoided before one probe call (when others exist)"
    )
    breaker_failures: int = Field(
        3, ge=1, description="consecutive UNAVAILABLE calls after which a replica is avoided for eject_s"
    )
    max_attempts: int = Field(
        3, ge=1, description="most replicas one call is tried on when they fail with UNAVAILABLE (1: no retry)"
    )
    retry_min_s: float = Field(
        0.01, ge=0, description="no retry once less than this is left of the caller's deadline"
    )
    scale_calls_per_s: float = Field(
        100.0, ge=0, description="calls per second per copy of a catalog model before another copy is loaded "
        "(0: never add copies)")
    scale_down_after_s: float = Field(
        60.0, gt=0, description="how long a catalog model needs fewer copies before one is unloaded")
    scale_interval_s: float = Field(2.0, gt=0, description="how often the scaling router looks at the load")
