"""The audit service's Prometheus series (docs/operating.md says what each means and what to do).

The consumer counts the events it takes from JetStream and times each batch's
transaction; how far it lags behind the stream comes free with every message (JetStream
puts the consumer's pending count in each message's reply subject). Connectivity to NATS
and to the database is read when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshserve.metrics import SLOW_BUCKETS, Sampled, up

log = logging.getLogger(__name__)

PREFIX = "meshserve_audit"
DATABASE_CHECK_S = 5.0


class AuditMetrics:
    """Every series of one audit service, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        events = Counter(f"{PREFIX}_events", "Call events taken from JetStream, by result: stored, duplicate "
                         "(already held) or quarantined (malformed)", ["result"], registry=self.registry)
        self.stored = events.labels("stored")
        self.duplicates = events.labels("duplicate")
        self.quarantined = events.labels("quarantined")
        self.batch_seconds = Histogram(f"{PREFIX}_store_batch_duration_seconds", "Seconds storing one fetched "
                                       "batch of events in one transaction", registry=self.registry,
                                       buckets=SLOW_BUCKETS)
        self.store_failures = Counter(f"{PREFIX}_store_failures", "Batches the database did not take (they are "
                                      "redelivered)", registry=self.registry)
        self.lag = 0  # events in the stream not yet delivered to this consumer, as of the last fetch
        self.database_up = True

    def watch(self, nats_connected: Callable[[], bool]) -> None:
        """Add the series read when Prometheus scrapes, and register them."""
        s = Sampled()
        s.gauge(f"{PREFIX}_consumer_lag_events", "Call events in the stream not yet delivered to the audit "
                "consumer (JetStream's pending count at the last fetch)", lambda: self.lag)
        s.gauge(f"{PREFIX}_nats_connected", "1 while the consumer is connected to NATS", lambda: up(nats_connected()))
        s.gauge(f"{PREFIX}_database_connected", "1 while the database answers (last batch stored, or a "
                f"check every {DATABASE_CHECK_S:g} s)", lambda: up(self.database_up))
        s.register(self.registry)

    async def check_database(self, ping: Callable[[], None]) -> None:
        """Every DATABASE_CHECK_S, ask the database whether it answers (until cancelled)."""
        while True:
            await asyncio.sleep(DATABASE_CHECK_S)
            try:
                await asyncio.to_thread(ping)
            except Exception as e:  # noqa: BLE001 - any failure means: not answering
                if self.database_up:
                    log.warning("the audit database does not answer: %s: %s", type(e).__name__, e)
                self.database_up = False
            else:
                self.database_up = True
