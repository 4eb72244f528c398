"""Assembling and running the router."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import grpc

from meshserve import tracing
from meshserve.audit.journal import Journal
from meshserve.audit.publisher import EventPublisher
from meshserve.audit.spool import Spool
from meshserve.auth import mesh as mesh_credential
from meshserve.auth.access import Access
from meshserve.auth.jwt_settings import verifier_from_settings
from meshserve.auth.limits import RateLimiter
from meshserve.errors import MeshError
from meshserve.grpcutil.handlers import add_service
from meshserve.grpcutil.server import ServiceServer
from meshserve.lifecycle import Parts, run_until_signalled
from meshserve.link import MODEL_INFER
from meshserve.metrics import MetricsServer
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.protos.meshserve.registry.v1 import registry_pb2
from meshserve.registry import keys
from meshserve.registry.cache import RegistryCache
from meshserve.registry.registration import Presence, now_ms
from meshserve.settings import load_settings, setup_logging

from .admin import RegistryServicer
from .audit import CallAudit
from .forward import Forwarder
from .metrics import RouterMetrics
from .placement import Placer
from .replicas import ConnectionPool
from .resolve import Resolver
from .scaler import Scaler
from .servicer import MeshServicer
from .settings import RouterSettings

log = logging.getLogger(__name__)

OIP_SERVICE = "inference.GRPCInferenceService"
REGISTRY_SERVICE = "meshserve.registry.v1.RegistryService"


def _typed(handler: Any, request_type: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_type.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )


def _raw(handler: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(handler)


class Router:
    """The router: registry cache, connections and the gRPC server, started and stopped together."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.parts = Parts("router")
        self._grace = 2.0
        # Made once and handed to every part that records spans.
        self.tracing = tracing.setup(settings, "router", settings.router_id)
        self.parts.on_stop("tracing", self.tracing.shutdown)  # stopped last: the spans not exported yet go
        self.mesh_tls = settings.mesh_tls()
        self.metrics = RouterMetrics()
        self.metrics_server = MetricsServer(self.metrics.registry)
        self.pool = ConnectionPool(settings.max_message_bytes, settings.use_link, eject_s=settings.eject_s,
                                   breaker_failures=settings.breaker_failures, mesh_tls=self.mesh_tls,
                                   credential=mesh_credential.read_optional(settings.mesh_credential_file),
                                   tracing=self.tracing)
        self.cache = RegistryCache(settings.etcd_endpoint, on_change=self._registry_changed,
                                   on_routers=self._routers_changed, mesh_tls=self.mesh_tls,
                                   credentials=settings.etcd_credentials())
        self.presence: Presence | None = None  # this router's record in etcd, once it listens
        placer = Placer(self.cache, self.pool, load_timeout_s=settings.load_wait_s, metrics=self.metrics)
        resolver = Resolver(self.cache, placer)
        self.scaler = Scaler(self.cache, placer, target_calls_per_s=settings.scale_calls_per_s,
                             down_after_s=settings.scale_down_after_s, interval_s=settings.scale_interval_s,
                             metrics=self.metrics)
        publisher = journal = None
        if settings.nats_url:
            spool = Spool(settings.data_dir / "audit-spool", settings.audit_spool_max_bytes)
            if settings.audit_journal:
                journal = Journal(settings.data_dir / "audit-journal", settings.audit_journal_fsync,
                                  settings.audit_journal_fsync_interval_s)
            # A call leaves the journal once its event is spooled: the spool is then as durable as the journal.
            publisher = EventPublisher(settings.nats_url, spool, mesh_tls=self.mesh_tls,
                                       sync_spool=journal is not None and journal.fsync != "never")
        self.audit = CallAudit(publisher, self.cache.audit_policies, settings.router_id,
                               settings.audit_capture_max_bytes, settings.audit_flush_s, journal)
        self.access = Access(self.cache.api_keys, self.cache.access_rules, lambda: self.cache.auth_revision,
                             dev_mode=settings.dev_mode, jwt=verifier_from_settings(settings))
        self.rates = RateLimiter(self.cache.rate_limits, auth_pb2.RateLimit(
            calls_per_second=settings.rate_limit_per_s, burst=settings.rate_limit_burst))
        self.forwarder = Forwarder(resolver, self.pool, self.audit, self.access, self.rates,
                                   max_attempts=settings.max_attempts, retry_min_s=settings.retry_min_s,
                                   metrics=self.metrics, max_message_bytes=settings.max_message_bytes,
                                   tracing=self.tracing)
        self.metrics.watch(self.cache, self.pool, placer, self.scaler, publisher, self.rates, self.audit)
        mesh = MeshServicer(self.cache, resolver, self.pool, settings.load_wait_s, self.access, self.audit,
                            tracing=self.tracing)
        self.grpc = ServiceServer([OIP_SERVICE, REGISTRY_SERVICE], max_message_bytes=settings.max_message_bytes,
                                  tracing=self.tracing)
        fwd = self.forwarder
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "ModelInfer": _raw(fwd.unary("ModelInfer", link_method=MODEL_INFER, audited=True, mirrored=True,
                                         id_field=3)),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(fwd.stream_infer),
            "ModelConfig": _raw(fwd.unary("ModelConfig", action="metadata")),
            "ModelStatistics": _raw(fwd.unary("ModelStatistics", action="metadata")),
            "ModelMetadata": _raw(mesh.model_metadata),
            "RepositoryModelLoad": _raw(mesh.repository_model_load),
            "RepositoryModelUnload": _raw(mesh.repository_model_unload),
            "ServerLive": _typed(mesh.server_live, oip.ServerLiveRequest),
            "ServerReady": _typed(mesh.server_ready, oip.ServerReadyRequest),
            "ServerMetadata": _typed(mesh.server_metadata, oip.ServerMetadataRequest),
            "ModelReady": _typed(mesh.model_ready, oip.ModelReadyRequest),
            "RepositoryIndex": _typed(mesh.repository_index, oip.RepositoryIndexRequest),
        }
        self.grpc.add_handlers(OIP_SERVICE, handlers)
        add_service(self.grpc, registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
                    RegistryServicer(self.cache, self.access, self.audit, resolver, self.pool, tracing=self.tracing))

    @property
    def address(self) -> str:
        return self.grpc.address

    def _registry_changed(self, _models: set[str]) -> None:
        self.pool.retain({p.address for p in self.cache.placements.values()})

    def _routers_changed(self, routers: set[str]) -> None:
        """Share every rate limit evenly among the live routers (this one counts before its record is seen)."""
        count = len(routers | {self.settings.router_id})
        if count != self.rates.routers:
            log.info("%d live routers: this one enforces 1/%d of each principal's rate limit", count, count)
        self.rates.share_among(count)

    async def start(self) -> None:
        """Take the port (one in use fails here, at once), serve metrics, load the registry, then serve calls."""
        settings, parts = self.settings, self.parts
        address = self.grpc.bind(settings.host, settings.port, mesh_tls=self.mesh_tls)  # before any wait for etcd
        parts.on_stop("connections", self.pool.close)
        # The default port gives way when taken (several routers on one host); one asked for must be free.
        self.metrics_server.start(settings.host, settings.metrics_port,
                                  fallback="metrics_port" not in settings.model_fields_set)
        parts.on_stop("metrics server", self.metrics_server.stop)
        parts.on_stop("registry cache", self.cache.stop)
        await self.cache.start(wait=settings.etcd_wait_s)
        parts.on_stop("scaler", self.scaler.stop)
        self.scaler.start()
        parts.on_stop("audit events", self.audit.stop)  # after the server: the calls in flight are noted
        await self.audit.start()
        if not self.audit.enabled:
            log.warning("auditing is OFF: no --nats-url, so calls leave no audit trail")
        if settings.dev_mode:
            log.warning("DEV MODE: callers WITHOUT A KEY may infer and read metadata of EVERY model; "
                        "never run a router with --dev-mode outside local development")
        parts.on_stop("gRPC server", lambda: self.grpc.stop(self._grace))
        # Registered before it serves: the others lower their shares before its calls come.
        record = registry_pb2.Router(id=settings.router_id, address=address, started_at_unix_ms=now_ms())
        presence = self.presence = Presence(settings.etcd_endpoint, f"router {record.id} at {address}",
                                            {keys.router_key(record.id): record.SerializeToString()},
                                            ttl=settings.lease_ttl_s, mesh_tls=self.mesh_tls,
                                            credentials=settings.etcd_credentials())
        parts.on_stop("presence", presence.stop)  # stopped first: the others take over its share at once
        await presence.start(wait=settings.etcd_wait_s)
        await self.grpc.start()
        log.info("router serving the inference protocol on %s (etcd %s)", address, settings.etcd_endpoint)

    def announcement(self) -> dict[str, str]:
        return {"address": self.address, "metrics_address": self.metrics_server.address}

    async def stop(self, grace: float = 2.0) -> None:
        """Stop taking calls (those in flight get ``grace`` seconds), then every other part, the last started first."""
        self._grace = grace
        await self.parts.stop()


def create_server(settings: RouterSettings) -> Router:
    return Router(settings)


async def serve(settings: RouterSettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    await run_until_signalled(create_server(settings), "router", settings.announce_file)


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(RouterSettings, argv, prog="meshserve router")
    setup_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except MeshError as e:  # an unreadable mesh credential, etcd not answering: one line, no traceback
        log.error("%s", e.message)
        sys.exit(1)
