"""The mesh credential: how a runtime tells the mesh's own calls from a stranger's without TLS.

With TLS (``meshserve up --tls``) a runtime takes calls only from callers holding a mesh
certificate. In plain text, the mesh shares a secret instead: routers send it as the
``meshserve-mesh-credential`` metadata entry of every call they make to a runtime, and a
runtime given the same secret refuses every call without it, except gRPC health checks.
Triton, started with ``--grpc-restricted-protocol``, checks the same secret in the entry
``triton-grpc-protocol-meshserve-mesh-credential`` (Triton's prefix) on every call but its
health probes; routers and the Triton registrar send it there. So a caller who reaches a runtime's port but not
the secret cannot infer, read metadata or load and unload models there: the router, which
authenticates callers and audits every call, is the only door.

The secret lives in a file readable by the mesh's services only (``meshserve up`` writes
``<data-dir>/secrets/mesh-credential``, mode 0600); it is never logged and never forwarded
from a caller (the router drops a caller's own ``meshserve-mesh-credential`` entry). Over
plain text it is visible to whoever can watch the mesh's traffic: on a network you do not
trust, use TLS.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from meshserve.errors import FailedPrecondition, Unauthenticated
from meshserve.ratelog import RateLimitedLog
from meshserve.secretfiles import write_private

log = logging.getLogger(__name__)

HEADER = "meshserve-mesh-credential"
# Triton checks a restricted protocol's header under this prefix (--grpc-restricted-protocol).
TRITON_HEADER = "triton-grpc-protocol-" + HEADER
PREFIX = "msm_"
# Calls any caller may make: load balancers and supervisors probe these.
OPEN_METHODS = frozenset(("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"))
REFUSAL_LOG_EVERY_S = 10.0

Metadata = Iterable[tuple[str, str | bytes]]


def generate() -> str:
    """A new random mesh credential."""
    return PREFIX + secrets.token_urlsafe(32)


def write(path: Path, credential: str | None = None) -> str:
    """Write a credential (a new one by default) to ``path``, readable by its owner only."""
    credential = credential or generate()
    write_private(path, (credential + "\n").encode())
    return credential


def read(path: Path) -> str:
    """The credential in ``path``; FailedPrecondition naming the file when it cannot be used."""
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as e:
        raise FailedPrecondition(f"cannot read the mesh credential file {path}: {e.strerror}") from e
    if not text.startswith(PREFIX) or len(text) < len(PREFIX) + 32 or not text.isprintable():
        raise FailedPrecondition(f"{path} does not hold a mesh credential (make one with `meshserve up "
                                 "--no-dev-mode`, or write 'msm_' and 43 random URL-safe characters)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the mesh credential file %s can be read by other users: chmod 600 it", path)
    return text


def read_optional(path: Path | None) -> str | None:
    return read(path) if path is not None else None


def metadata(credential: str | None, *, triton: bool = False) -> tuple[tuple[str, str], ...]:
    """The metadata entry that presents ``credential`` to a runtime, or to Triton (none without one)."""
    if not credential:
        return ()
    return ((TRITON_HEADER if triton else HEADER, credential),)


class MeshGate:
    """The runtime's check that a call comes from the mesh: its credential, when it has one.

    ``credential`` None lets every caller in (dev mode, or TLS, where the mesh certificate
    that the server requires is the check).
    """

    def __init__(self, credential: str | None, what: str) -> None:
        self._expected = credential.encode() if credential else None
        self.what = what
        # One line for the first refusals, then one every REFUSAL_LOG_EVERY_S, counting the rest.
        self.log = RateLimitedLog(log, logging.WARNING, per_s=1 / REFUSAL_LOG_EVERY_S, burst=1)

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, metadata: Metadata) -> bool:
        expected = self._expected
        if expected is None:
            return True
        for key, value in metadata:
            if key == HEADER:
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, expected)
        return False

    def check(self, method: str, metadata: Metadata, peer: str) -> None:
        """Raise Unauthenticated, and log (rate-limited), unless the call presents the credential."""
        if not self.allows(metadata):
            self.log("%s refused %s from %s: no valid mesh credential", self.what, method, peer or "an unknown peer")
            raise Unauthenticated(f"{method} refused: this runtime takes calls from the mesh only; call the "
                                  "model through a meshserve router")

    def interceptor(self) -> grpc.aio.ServerInterceptor | None:
        """A server interceptor enforcing the gate on every method but health checks (None when open)."""
        return _GateInterceptor(self) if self.enabled else None

    def link_handler(self, handler: Callable[[int, bytes, dict[str, str]], Awaitable[bytes]]
                     ) -> Callable[[int, bytes, dict[str, str]], Awaitable[bytes]]:
        """``handler`` of the mesh link, refusing frames that do not present the credential."""
        if not self.enabled:
            return handler

        async def gated(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
            self.check("the mesh link", metadata.items(), "")
            return await handler(method, payload, metadata)

        return gated


class _GateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, gate: MeshGate) -> None:
        self._gate = gate

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        method: str = details.method
        if method in OPEN_METHODS or self._gate.allows(details.invocation_metadata or ()):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        return _refusal(handler, self._gate, method)


def _refusal(handler: grpc.RpcMethodHandler[Any, Any], gate: MeshGate, method: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""
    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            gate.check(method, (), context.peer())
        except Unauthenticated as e:
            await context.abort(e.code, e.message)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)
        yield  # pragma: no cover - never reached: an async generator for grpc's streaming shapes

    # The request is never read: refused calls cost no parsing.
    options = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **options)
    return grpc.unary_unary_rpc_method_handler(unary, **options)
