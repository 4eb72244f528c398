"""Assembling and running the audit service: store, JetStream consumer and AuditService."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from meshserve import tracing
from meshserve.auth.jwt_settings import verifier_from_settings
from meshserve.errors import MeshError
from meshserve.grpcutil.handlers import add_service
from meshserve.grpcutil.server import ServiceServer
from meshserve.lifecycle import Parts, run_until_signalled
from meshserve.metrics import MetricsServer
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.registry.cache import RegistryCache
from meshserve.settings import load_settings, setup_logging

from .access import AuditAccess
from .consumer import Consumer
from .dialects import StoreError
from .metrics import AuditMetrics
from .servicer import AuditServicer
from .settings import AuditSettings
from .store import Store

log = logging.getLogger(__name__)

AUDIT_SERVICE = "meshserve.audit.v1.AuditService"


class AuditService:
    """The store, the consumer feeding it, the keys and rules of who may read it and the gRPC server."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.parts = Parts("audit service")
        self._grace = 2.0
        self.tracing = tracing.setup(settings, "audit")
        self.parts.on_stop("tracing", self.tracing.shutdown)  # stopped last: the spans not exported yet go
        self.mesh_tls = settings.mesh_tls()
        self.grpc = ServiceServer([AUDIT_SERVICE], max_message_bytes=settings.max_message_bytes, tracing=self.tracing)
        self.store: Store | None = None
        self.consumer: Consumer | None = None
        self.metrics = AuditMetrics()
        self.metrics.watch(lambda: self.consumer is not None and self.consumer.connected)
        self.metrics_server = MetricsServer(self.metrics.registry)
        # Only keys and rules are used, but the registry cache is the one tested watch-fed copy of them.
        self.registry = (RegistryCache(settings.etcd_endpoint, mesh_tls=self.mesh_tls,
                                       credentials=settings.etcd_credentials())
                         if settings.etcd_endpoint else None)
        self.access = AuditAccess(self.registry, dev_mode=settings.dev_mode, jwt=verifier_from_settings(settings))

    @property
    def address(self) -> str:
        return self.grpc.address

    async def start(self) -> None:
        """Take the port, open the database and load keys and rules (failing fast), serve, and start consuming."""
        settings, parts = self.settings, self.parts
        # A port in use fails here, at once.
        address = self.grpc.bind(settings.host, settings.port, mesh_tls=self.mesh_tls)
        self.metrics_server.start(settings.host, settings.metrics_port)
        parts.on_stop("metrics server", self.metrics_server.stop)
        store = self.store = await asyncio.to_thread(Store.open, settings.database)
        parts.on_stop("store", lambda: asyncio.to_thread(store.close))
        if self.registry is not None:
            parts.on_stop("registry cache", self.registry.stop)
            await self.registry.start(wait=settings.etcd_wait_s)
        elif not settings.dev_mode:
            log.warning("no --etcd-endpoint: every Query and Verify is refused, since audit:read cannot be checked")
        if settings.dev_mode:
            log.warning("DEV MODE: callers WITHOUT A KEY may read and verify the WHOLE audit trail; "
                        "never run the audit service with --dev-mode outside local development")
        add_service(self.grpc, audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
                    AuditServicer(store, self.access))
        parts.on_stop("gRPC server", lambda: self.grpc.stop(self._grace))
        await self.grpc.start()
        consumer = self.consumer = Consumer(store, settings, self.metrics, mesh_tls=self.mesh_tls)
        parts.on_stop("consumer", consumer.stop)
        consumer.start()
        await parts.background(self.metrics.check_database(store.ping), "database-check")
        log.info("audit service on %s (database %s, NATS %s, etcd %s)", address, store.dialect.describe(),
                 settings.nats_url, settings.etcd_endpoint or "none")

    def announcement(self) -> dict[str, str]:
        return {"address": self.address, "metrics_address": self.metrics_server.address}

    async def stop(self, grace: float = 2.0) -> None:
        """Stop the database check and the consumer, then serving (calls in flight get ``grace`` s), then the rest."""
        self._grace = grace
        await self.parts.stop()


def create_server(settings: AuditSettings) -> AuditService:
    return AuditService(settings)


async def serve(settings: AuditSettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    await run_until_signalled(create_server(settings), "audit service", settings.announce_file)


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(AuditSettings, argv, prog="meshserve audit-service")
    setup_logging(settings.log_level)
    if settings.nice:
        os.nice(settings.nice)
    try:
        asyncio.run(serve(settings))
    except (StoreError, MeshError) as e:  # an unusable database, etcd not answering
        log.error("%s", e)
        sys.exit(1)
