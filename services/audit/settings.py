"""Settings of the audit service."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.audit.stream import DEFAULT_MAX_AGE_S
from meshserve.auth.jwt_settings import JwtSettings
from meshserve.settings import MetricsSettings, ServiceSettings


class AuditSettings(JwtSettings, MetricsSettings, ServiceSettings):
    """The meshserve audit service: stores every call event in a tamper-evident trail and answers queries."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_AUDIT_")

    port: int = Field(8003, description="port for the AuditService gRPC API")
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server carrying the call-event stream")
    database: str = Field(
        "sqlite:///meshserve-audit.db",
        description="sqlite:///PATH (relative; sqlite:////abs/path for absolute) or postgresql://user@host:port/db",
    )
    nice: int = Field(
        10, ge=0, le=19,
        description="CPU priority decrease: the trail catches up from JetStream, inference on the host comes first",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="events fetched and committed per transaction")
    consumer: str = Field("audit-store", description="name of the durable JetStream consumer")
    stream_max_age_s: float = Field(
        DEFAULT_MAX_AGE_S, gt=0, description="how long the stream keeps events, if this service creates it"
    )
    ack_wait_s: float = Field(
        30.0, gt=0, description="seconds JetStream waits for an ack before redelivering an event"
    )
    etcd_endpoint: str = Field(
        "", description='etcd host:port holding API keys and access rules, to check audit:read; '
                        'without it every Query and Verify is refused (unless --dev-mode)',
    )
    dev_mode: bool = Field(
        False, description="let callers without a key read the whole trail (local development only)"
    )
