"""Connections to runtime replicas: one channel per replica, raw-bytes method handles.

Calls go out as the bytes that came in (no serializer, no deserializer), so tensors
are never decoded or re-encoded on their way through the router.

Each replica has a circuit breaker fed by the forwarder: after ``breaker_failures``
consecutive UNAVAILABLE calls it opens (the replica is avoided for ``eject_s``), then
half-opens: the next call chosen for it is the probe, and the others keep away until
the probe's answer closes the breaker (a success) or opens it again (a failure). A
replica that leaves the registry (its lease expired) is dropped whatever its breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection
from typing import Any

from meshserve.auth import mesh as mesh_credential
from meshserve.errors import Unavailable
from meshserve.grpcutil.server import channel_options
from meshserve.link import LinkClient
from meshserve.registry.cache import Replica
from meshserve.tls import MeshTls, aio_channel
from meshserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
LINK_CONNECT_S = 2.0
LINK_RETRY_S = 1.0
TRITON = "triton"  # the runtime kind of Triton servers, which check the mesh credential under their own name


class _Call:
    """A raw multi-callable that presents the mesh credential on every call (when the router has one)."""

    __slots__ = ("_call", "_extra")

    def __init__(self, call: Any, credential: str | None, triton: bool) -> None:
        self._call = call
        self._extra = mesh_credential.metadata(credential, triton=triton)

    def __call__(self, *request: bytes, timeout: float | None = None,
                 metadata: tuple[tuple[str, str | bytes], ...] = ()) -> Any:
        return self._call(*request, timeout=timeout, metadata=metadata + self._extra)


class Connection:
    """A channel to one replica and its per-method raw callables."""

    __slots__ = ("_credential", "_link", "_link_lock", "_link_retry_at", "_max_message_bytes", "_mesh_tls", "_stream",
                 "_tracing", "_unary", "address", "channel", "ejected_until", "failures", "inflight", "link_address",
                 "replica")

    def __init__(self, replica: Replica, options: list[tuple[str, Any]], max_message_bytes: int,
                 use_link: bool, mesh_tls: MeshTls | None = None, credential: str | None = None,
                 tracing: Tracing = OFF) -> None:
        self.replica = replica
        self.address = replica.address
        self.link_address = replica.link_address if use_link else ""
        # Traced calls (tracing on) get a client span each and carry its context to the runtime.
        self.channel = aio_channel(replica.address, mesh_tls, options, tracing.client_interceptors(replica.address))
        self._tracing = tracing  # the mesh link's too
        self.inflight = 0
        # The breaker: consecutive UNAVAILABLE calls, and until when the replica is avoided.
        self.failures = 0
        self.ejected_until = 0.0
        self._max_message_bytes = max_message_bytes
        self._mesh_tls = mesh_tls
        self._credential = credential
        self._unary: dict[str, _Call] = {}
        self._stream: _Call | None = None
        self._link: LinkClient | None = None
        self._link_lock = asyncio.Lock()
        self._link_retry_at = 0.0

    @property
    def open_link(self) -> LinkClient | None:
        """The mesh link if it is open now (the per-call fast path: no coroutine to await)."""
        link = self._link
        return link if link is not None and not link.closed else None

    async def link(self, remaining_s: float | None) -> LinkClient | None:
        """The open mesh link to this replica, or None when it cannot be had right now.

        One caller connects while the others wait for it; after a failed connect, callers
        get None (and use gRPC) for LINK_RETRY_S seconds instead of each trying again.
        """
        link = self._link
        if link is not None and not link.closed:
            return link
        if time.monotonic() < self._link_retry_at:
            return None
        async with self._link_lock:
            if self._link is not None and not self._link.closed:
                return self._link
            if time.monotonic() < self._link_retry_at:
                return None
            connect_s = LINK_CONNECT_S if remaining_s is None else max(0.01, min(LINK_CONNECT_S, remaining_s))
            try:
                self._link = await LinkClient.connect(self.link_address, self._max_message_bytes, connect_s,
                                                      mesh_tls=self._mesh_tls, credential=self._credential,
                                                      tracing=self._tracing)
            except Unavailable as e:
                log.warning("%s; calling %s over gRPC for %.0f s", e, self.replica.runtime_id, LINK_RETRY_S)
                self._link_retry_at = time.monotonic() + LINK_RETRY_S
                return None
            return self._link

    def unary(self, method: str) -> _Call:
        """``method`` as a raw callable: ``call(request, timeout=..., metadata=...)``."""
        call = self._unary.get(method)
        if call is None:
            call = _Call(self.channel.unary_unary(SERVICE + method, _registered_method=True), self._credential,
                         self.replica.kind == TRITON)
            self._unary[method] = call
        return call

    def stream(self) -> _Call:
        """ModelStreamInfer as a raw callable: ``call(timeout=..., metadata=...)`` opens a stream."""
        if self._stream is None:
            self._stream = _Call(self.channel.stream_stream(SERVICE + "ModelStreamInfer", _registered_method=True),
                                 self._credential, self.replica.kind == TRITON)
        return self._stream

    async def close(self) -> None:
        if self._link is not None:
            self._link.close()
        await self.channel.close()


class ConnectionPool:
    """Connections to every replica the registry lists, opened and closed as it changes.

    ``eject_s`` and ``breaker_failures`` set the replicas' circuit breakers (see the
    module's docstring); ``clock`` is for tests. Calls to the replicas are traced with ``tracing``.
    """

    def __init__(self, max_message_bytes: int, use_link: bool = True, *, eject_s: float = 2.0,
                 breaker_failures: int = 3, clock: Callable[[], float] = time.monotonic,
                 mesh_tls: MeshTls | None = None, credential: str | None = None, tracing: Tracing = OFF) -> None:
        self._options = channel_options(max_message_bytes)
        self._tracing = tracing
        self._mesh_tls = mesh_tls  # TLS to runtimes; each new connection presents the current certificate
        self._credential = credential  # the mesh credential every call to a runtime presents
        self._max_message_bytes = max_message_bytes
        self._use_link = use_link
        self.eject_s = eject_s
        self.breaker_failures = max(1, breaker_failures)
        self._clock = clock
        self._by_address: dict[str, Connection] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.ejections = 0  # breaker openings, for metrics

    def get(self, replica: Replica) -> Connection:
        conn = self._by_address.get(replica.address)
        if conn is not None and (conn.replica is replica or conn.replica == replica):
            return conn
        if conn is not None:
            self._close_later(conn)
        conn = Connection(replica, self._options, self._max_message_bytes, self._use_link, self._mesh_tls,
                          self._credential, self._tracing)
        self._by_address[replica.address] = conn
        return conn

    def choose(self, replicas: tuple[Replica, ...], exclude: Collection[Connection] = ()) -> Connection:
        """Power of two choices: the fewer calls in flight of two random replicas.

        Replicas in ``exclude`` (already tried) and those whose breaker is open are left
        out while any other remains. A half-open replica, when chosen, takes this call as
        its probe.
        """
        if len(replicas) == 1:
            return self.get(replicas[0])
        candidates = [self.get(r) for r in replicas]
        if exclude:
            candidates = [c for c in candidates if c not in exclude] or candidates
        now = self._clock()
        usable = [c for c in candidates if c.ejected_until <= now] or candidates  # breaker not open
        if len(usable) == 1:
            chosen = usable[0]
        else:
            a, b = random.sample(usable, 2)
            chosen = a if a.inflight <= b.inflight else b
        if chosen.failures >= self.breaker_failures and chosen.ejected_until <= now:
            # Half-open: this call is the probe; other calls keep away until it answers.
            chosen.ejected_until = now + self.eject_s
        return chosen

    def succeeded(self, conn: Connection) -> None:
        """A call to ``conn`` was answered: its breaker closes (called only when it counted failures)."""
        if conn.failures >= self.breaker_failures:
            log.info("replica %s (%s) answers again: calling it again", conn.replica.runtime_id, conn.address)
        conn.failures = 0
        conn.ejected_until = 0.0

    def failed(self, conn: Connection, why: str) -> None:
        """A call to ``conn`` was UNAVAILABLE: one more failure, and the breaker opens at the threshold."""
        conn.failures += 1
        if conn.failures >= self.breaker_failures:
            self.ejections += 1
            if conn.failures == self.breaker_failures:
                log.warning("replica %s (%s) failed %d calls in a row; avoiding it for %.1f s: %s",
                            conn.replica.runtime_id, conn.address, conn.failures, self.eject_s, why)
            conn.ejected_until = self._clock() + self.eject_s

    def breaker(self, conn: Connection) -> str:
        """``closed``, ``open`` or ``half-open`` (for logs and tests)."""
        if conn.failures < self.breaker_failures:
            return "closed"
        return "open" if conn.ejected_until > self._clock() else "half-open"

    def retain(self, live_addresses: set[str]) -> None:
        """Close connections to replicas that left the registry."""
        for address in list(self._by_address):
            if address not in live_addresses:
                self._close_later(self._by_address.pop(address))

    def _close_later(self, conn: Connection) -> None:
        async def close() -> None:
            # Let calls in flight finish before the channel goes.
            for _ in range(100):
                if conn.inflight == 0:
                    break
                await asyncio.sleep(0.1)
            await conn.close()

        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        closing = [*self._by_address.values()]
        self._by_address.clear()
        await asyncio.gather(*(c.close() for c in closing), *self._closing, return_exceptions=True)
