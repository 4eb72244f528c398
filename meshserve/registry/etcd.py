"""Connecting to etcd with aetcd."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc, watcher

from meshserve import tls
from meshserve.errors import MeshError, Unavailable, error_for

log = logging.getLogger(__name__)
T = TypeVar("T")


TLS_SCHEME = "https://"
# A router reads the whole registry in one range request at start: 10,000 models on two
# runtimes each are about 5 MiB, past gRPC's default 4 MiB limit on a received message.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 512 * 1024 * 1024),)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """host and port of ``[http://|https://]host:port``."""
    for scheme in ("http://", TLS_SCHEME):
        endpoint = endpoint.removeprefix(scheme)
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return host, int(port)


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """An aetcd client speaking TLS with the process's mesh identity.

    aetcd opens plain-text channels only; this swaps the channel (before any call is made
    on it) for a TLS one and rebuilds the stubs on it.
    """

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        await super().connect()
        plain: grpc.aio.Channel = getattr(self, "channel")  # noqa: B009 - aetcd leaves it untyped
        secure = tls.aio_channel(f"{self._host}:{self._port}", list(self._options.items()))
        self.channel = secure
        self.kvstub = rpc.KVStub(secure)
        self.clusterstub = rpc.ClusterStub(secure)
        self.leasestub = rpc.LeaseStub(secure)
        self.maintenancestub = rpc.MaintenanceStub(secure)
        self._watcher = watcher.Watcher(rpc.WatchStub(secure), timeout=self._timeout, metadata=self.metadata)
        await plain.close()


async def connect(endpoint: str, *, wait: float = 10.0, call_timeout: float = 5.0) -> aetcd.Client:
    """Connect to etcd at ``endpoint``, retrying for up to ``wait`` seconds.

    Raises Unavailable naming the endpoint when etcd does not answer in time, so a
    service fails fast at start-up with a message that says what to fix.
    """
    host, port = split_endpoint(endpoint)
    client_class = _TlsClient if endpoint.startswith(TLS_SCHEME) else aetcd.Client
    client = client_class(host=host, port=port, timeout=int(max(1, call_timeout)), options=dict(CHANNEL_OPTIONS))
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            await client.connect()
            await client.get(b"/meshserve/v1/")
            return client
        except aetcd.ClientError as e:
            if time.monotonic() >= deadline:
                await client.close()
                raise Unavailable(f"etcd at {endpoint} did not answer within {wait:.0f} s: {e}") from e
            log.debug("etcd at %s not ready yet: %s", endpoint, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def read_records(client: aetcd.Client, prefix: str, parse_key: Callable[[bytes], str | None],
                       message: Any) -> dict[str, Any]:
    """Every record under ``prefix`` as ``message`` objects, keyed by the name ``parse_key`` finds."""
    records = {}
    for kv in await client.get_prefix(prefix.encode()):
        name = parse_key(kv.key)
        if name:
            records[name] = message.FromString(kv.value)
    return records


def with_etcd(endpoint: str, work: Callable[[aetcd.Client], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the etcd at ``endpoint`` (for commands; waits 3 s for etcd)."""
    async def run() -> T:
        client = await connect(endpoint, wait=3)
        try:
            return await work(client)
        finally:
            await client.close()
    try:
        return asyncio.run(run())
    except (aetcd.ClientError, grpc.RpcError) as e:
        raise etcd_error(endpoint, e) from e


# What aetcd's errors stand for, as gRPC status codes (aetcd maps etcd's answers to these classes).
_ETCD_CODES: tuple[tuple[type[aetcd.ClientError], grpc.StatusCode], ...] = (
    (aetcd.exceptions.ConnectionFailedError, grpc.StatusCode.UNAVAILABLE),
    (aetcd.exceptions.ConnectionTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (aetcd.exceptions.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (aetcd.exceptions.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (aetcd.exceptions.PreconditionFailedError, grpc.StatusCode.FAILED_PRECONDITION),
)


def etcd_error(endpoint: str, error: Exception) -> MeshError:
    """An error of the etcd at ``endpoint`` (aetcd's or gRPC's) as a MeshError naming that address."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code, text = error.code(), error.details() or error.code().name
    else:
        code = next((c for cls, c in _ETCD_CODES if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
        text = str(error) or type(error).__name__
    return error_for(code, f"etcd at {endpoint}: {text}")
