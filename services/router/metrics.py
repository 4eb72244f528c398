"""The router's Prometheus series (see docs/operating.md for each one and what to do when it alarms).

Calls are counted and timed when they are answered, by method, model, version, runtime
kind and gRPC status code. A name that is not in the registry (a typo, a caller probing)
counts under the empty model, so callers cannot grow the series without bound. The rest
(calls in flight, retries, breaker openings, the registry and audit spool state) is read
from plain numbers when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from meshserve.metrics import CODE_NAMES, SLOW_BUCKETS, CallSeries, Sampled, Samples, Tally, up

if TYPE_CHECKING:
    from meshserve.audit.publisher import EventPublisher
    from meshserve.auth.limits import RateLimiter
    from meshserve.registry.cache import RegistryCache

    from .audit import Call, CallAudit
    from .placement import Placer
    from .replicas import ConnectionPool
    from .scaler import Scaler

PREFIX = "meshserve_router"
LABELS = ("method", "model", "version", "runtime_kind", "code")
# The method label of the calls the router makes itself, besides ModelInfer and ModelStreamInfer.
PIPELINE = "pipeline"  # a ModelInfer call to a pipeline
PIPELINE_STEP = "pipeline_step"
SHADOW = "shadow"
_PIPELINE_KIND = "pipeline"

Key = tuple[str, str, str, str, grpc.StatusCode]


class RouterMetrics:
    """Every series of one router, in a registry of its own.

    The per-call path touches :meth:`done` (counts and times an answered call),
    :attr:`inflight` (the caller's calls held open) and :attr:`model_inflight` (calls in
    flight to replicas, by model and version); :meth:`watch` adds the series read from
    the router's parts at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.calls = CallSeries(self.registry, PREFIX, LABELS, "Calls the router answered")
        self.inflight = 0
        self.model_inflight: dict[tuple[str, str], int] = {}
        self.retries = 0
        self.placements = Counter(f"{PREFIX}_placements", "Catalog versions this router placed on their first "
                                  "call (cold starts), by result: placed or failed", ["result"],
                                  registry=self.registry)
        self.placed = self.placements.labels("placed")
        self.placement_failed = self.placements.labels("failed")
        self.placement_seconds = Histogram(f"{PREFIX}_placement_duration_seconds", "Seconds from a catalog "
                                           "version's first call until it was ready", registry=self.registry,
                                           buckets=SLOW_BUCKETS)
        self.copies_added = Counter(f"{PREFIX}_scaler_copies_added", "Copies of hot catalog versions the scaler "
                                    "loaded (this router leading)", registry=self.registry)
        self.copies_removed = Counter(f"{PREFIX}_scaler_copies_removed", "Copies of catalog versions the scaler "
                                      "unloaded as their load fell", registry=self.registry)
        self._known: Callable[[str], bool] = lambda _: True
        self._by_key: dict[Key, Tally] = {}

    def done(self, method: str, call: Call, code: grpc.StatusCode) -> None:
        """Count ``call`` (made with ``method``) as answered with ``code``, timed from its arrival."""
        replica = call.replica
        kind = replica.kind if replica is not None else ""
        key = (method, call.model, call.resolved_version, kind, code)
        tally = self._by_key.get(key) or self._tally(key)
        tally.observe(max(time.time_ns() - call.start_ns, 0) / 1e9)

    def _tally(self, key: Key) -> Tally:
        method, model, version, kind, code = key
        if kind == _PIPELINE_KIND and method == "ModelInfer":
            method = PIPELINE
        if model and not self._known(model):  # counted under "": a caller's made-up names are not series
            return self.calls.series((method, "", "", kind, CODE_NAMES[code]))
        tally = self._by_key[key] = self.calls.series((method, model, version, kind, CODE_NAMES[code]))
        return tally

    def model_inflight_samples(self) -> Samples:
        return [((model, version), count) for (model, version), count in self.model_inflight.copy().items()]

    def watch(self, cache: RegistryCache, pool: ConnectionPool, placer: Placer, scaler: Scaler,
              publisher: EventPublisher | None, rates: RateLimiter | None = None,
              audit: CallAudit | None = None) -> None:
        """Add the series read from the router's parts when Prometheus scrapes, and register them."""
        self._known = lambda name: (name in cache.models or name in cache.pipelines or name in cache.catalog
                                    or name in cache.departed)
        s = Sampled()
        s.gauge(f"{PREFIX}_inflight_requests", "Calls the router holds open: unary calls being answered and "
                "open ModelStreamInfer streams (the router HPA scales on it)", lambda: self.inflight)
        s.labelled_gauge(f"{PREFIX}_model_inflight_requests", "Calls in flight from the router to replicas, by "
                         "model and version (pipeline steps under their own models)", ("model", "version"),
                         self.model_inflight_samples)
        s.counter(f"{PREFIX}_retries", "Calls tried again on another replica after an UNAVAILABLE answer",
                  lambda: self.retries)
        s.counter(f"{PREFIX}_replica_ejections", "Circuit-breaker openings: a replica avoided for eject_s after "
                  "breaker_failures UNAVAILABLE calls in a row (or a failed probe)", lambda: pool.ejections)
        s.gauge(f"{PREFIX}_placements_in_progress", "Catalog versions being placed now", lambda: placer.in_progress)
        s.gauge(f"{PREFIX}_scaler_leader", "1 while this router is the one that scales catalog models",
                lambda: up(scaler.leading))
        s.gauge(f"{PREFIX}_etcd_connected", "1 while the registry watch on etcd is open; 0: serving from the "
                "cache, blind to changes", lambda: up(cache.connected))
        s.gauge(f"{PREFIX}_registry_revision", "etcd revision of the registry the router routes by",
                lambda: cache.revision)
        if rates is not None:
            s.gauge(f"{PREFIX}_rate_limit_routers", "Live routers sharing each principal's rate limit, this one "
                    "included: it enforces 1/N of every limit", lambda: rates.routers)
        if publisher is not None:
            s.gauge(f"{PREFIX}_nats_connected", "1 while the router publishes call events to NATS JetStream",
                    lambda: up(publisher.connected))
            s.gauge(f"{PREFIX}_audit_spool_bytes", "Bytes of call events spooled on disk, waiting for NATS",
                    lambda: publisher.spool.size)
            s.gauge(f"{PREFIX}_audit_spool_events", "Call events spooled on disk, waiting for NATS",
                    lambda: publisher.spool_events)
            s.counter(f"{PREFIX}_audit_events_published", "Call events JetStream acknowledged (replays included)",
                      lambda: publisher.events_published)
            s.counter(f"{PREFIX}_audit_events_spooled", "Call events NATS did not take in time, written to the "
                      "spool", lambda: publisher.events_spooled)
            s.counter(f"{PREFIX}_audit_events_dropped", "Call events LOST: the spool was full",
                      lambda: publisher.dropped)
        if audit is not None and (journal := audit.journal) is not None:
            s.gauge(f"{PREFIX}_audit_journal_bytes", "Bytes in the call journal: calls answered whose events are "
                    "not yet acknowledged or spooled", lambda: journal.size)
            s.counter(f"{PREFIX}_audit_journal_failures", "Calls the call journal could not take (a full or failing "
                      "disk): their events waited in memory only", lambda: audit.journal_failures)
        s.register(self.registry)
