"""Connecting to etcd with aetcd."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc, watcher

from meshserve.errors import MeshError, PermissionDenied, Unauthenticated, Unavailable, error_for
from meshserve.registry import keys
from meshserve.registry.etcd_token import EtcdCredentials, TokenKeeper
from meshserve.tls import MeshTls, aio_channel, required

log = logging.getLogger(__name__)
T = TypeVar("T")


TLS_SCHEME = "https://"
# A router reads the whole registry in one range request at start: 10,000 models on two
# runtimes each are about 5 MiB, past gRPC's default 4 MiB limit on a received message.
# Each client has connections of its own: gRPC otherwise shares a connection between channels
# to one address, and a process presenting two certificates (a test, a tool) would be taken
# for whichever user connected first.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 512 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1))


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """host and port of ``[http://|https://]host:port``."""
    for scheme in ("http://", TLS_SCHEME):
        endpoint = endpoint.removeprefix(scheme)
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return host, int(port)


class _Client(aetcd.Client):  # type: ignore[misc]
    """An aetcd client, over TLS with a mesh identity when given one, authenticated as an etcd
    user when given credentials, its token kept valid (see :mod:`.etcd_token`).

    aetcd opens plain-text channels and authenticates once: this opens the channel itself.
    """

    def __init__(self, *, mesh_tls: MeshTls | None, credentials: EtcdCredentials | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mesh_tls = mesh_tls
        self._credentials = credentials
        self._keeper = TokenKeeper(self._authenticate) if credentials is not None else None
        self._refresh: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        interceptors = self._keeper.interceptors() if self._keeper is not None else []
        channel = aio_channel(target, self._mesh_tls, list(self._options.items()), interceptors)
        self.channel = channel
        self.auth_stub = rpc.AuthStub(channel)
        self.metadata = None  # the token travels through the keeper
        if self._keeper is not None:
            await self._keeper.renew()
            if self._refresh is None:
                self._refresh = asyncio.create_task(self._keeper.keep_fresh(), name="etcd-token")
        self.kvstub = rpc.KVStub(channel)
        self.clusterstub = rpc.ClusterStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(channel), timeout=self._timeout, metadata=None)
        self._connected.set()

    async def _authenticate(self) -> str:
        assert self._credentials is not None
        try:
            reply = await self.auth_stub.Authenticate(
                rpc.AuthenticateRequest(name=self._credentials.user, password=self._credentials.password),
                timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise aetcd.exceptions.ConnectionFailedError(e.details()) from e
            raise aetcd.exceptions.UnauthenticatedError(
                f"etcd refused user {self._credentials.user!r}: {e.details()}") from e
        return str(reply.token)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        await super().close()


async def connect(endpoint: str, *, mesh_tls: MeshTls | None = None, wait: float = 10.0,
                  call_timeout: float = 5.0, credentials: EtcdCredentials | None = None) -> aetcd.Client:
    """Connect to etcd at ``endpoint`` (as the user of ``credentials``), retrying for up to ``wait`` seconds.

    An ``https://`` endpoint is reached over TLS with ``mesh_tls`` (FailedPrecondition
    without one). Raises Unavailable naming the endpoint when etcd does not answer in
    time, so a service fails fast at start-up with a message that says what to fix.
    """
    host, port = split_endpoint(endpoint)
    client = _Client(host=host, port=port, timeout=int(max(1, call_timeout)), options=dict(CHANNEL_OPTIONS),
                     mesh_tls=required(mesh_tls) if endpoint.startswith(TLS_SCHEME) else None,
                     credentials=credentials)
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            await client.connect()
            await client.get(keys.ROOT.encode())
            return client
        except (aetcd.exceptions.UnauthenticatedError, aetcd.exceptions.InvalidArgumentError) as e:
            if isinstance(e, aetcd.exceptions.InvalidArgumentError) and "user name is empty" not in str(e):
                raise
            await client.close()
            raise Unauthenticated(f"etcd at {endpoint} refused this service: {e} (etcd has authentication on: "
                                  "give --etcd-user and --etcd-password-file, or a mesh certificate under TLS)") from e
        except aetcd.ClientError as e:
            if "permission denied" in str(e):
                await client.close()
                raise PermissionDenied(f"etcd at {endpoint} does not let this service read the registry: {e} "
                                       "(no etcd user of its name, or a user without its role)") from e
            if time.monotonic() >= deadline:
                await client.close()
                raise Unavailable(f"etcd at {endpoint} did not answer within {wait:.0f} s: {e}") from e
            log.debug("etcd at %s not ready yet: %s", endpoint, e)
            await client.close()
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


def command_credentials() -> EtcdCredentials | None:
    """The etcd user of commands run by hand: ``$MESHSERVE_ETCD_USER`` and ``$MESHSERVE_ETCD_PASSWORD_FILE``."""
    file = os.environ.get("MESHSERVE_ETCD_PASSWORD_FILE", "").strip()
    return EtcdCredentials.from_file(os.environ.get("MESHSERVE_ETCD_USER", "").strip(), Path(file) if file else None)


def with_etcd(endpoint: str, work: Callable[[aetcd.Client], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the etcd at ``endpoint`` (for commands; waits 3 s for etcd).

    Commands reach an ``https://`` etcd with the certificate in ``$MESHSERVE_TLS_CA``/``_CERT``/``_KEY``,
    as the user :func:`command_credentials` names, if any.
    """
    mesh_tls = MeshTls.from_env() if endpoint.startswith(TLS_SCHEME) else None

    async def run() -> T:
        client = await connect(endpoint, mesh_tls=mesh_tls, wait=3, credentials=command_credentials())
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
