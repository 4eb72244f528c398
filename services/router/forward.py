"""The per-call path: forwarding inference-protocol calls to replicas as raw bytes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from grpc.aio import ServicerContext as Context

from meshserve import tracing
from meshserve.auth import mesh as mesh_credential
from meshserve.auth.access import Access
from meshserve.auth.limits import RateLimiter, check_request
from meshserve.errors import REFUSALS, InvalidArgument, MeshError, as_mesh_error, error_for, too_large
from meshserve.names import check_request_id, is_request_id
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.tracing import OFF, Tracing

from .audit import Call, CallAudit, Metadata
from .metrics import SHADOW, RouterMetrics
from .pipelines import Forward, PipelineRunner
from .replicas import Connection, ConnectionPool
from .resolve import NotPlaced, Resolver
from .streams import Awaiting
from .wire import request_fields, string_field, string_fields

log = logging.getLogger(__name__)


_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_UNKNOWN = grpc.StatusCode.UNKNOWN
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ROUTER = "the router"  # who failed, in internal errors
_STREAM = "ModelStreamInfer"
STREAM_BUFFER = 64
# Shadow calls run in the background, each with this deadline, at most this many at once.
SHADOW_TIMEOUT_S = 30.0
MAX_SHADOWS_IN_FLIGHT = 256
# A stream refused at its start waits this long for its first request, to audit the model it asked for.
REFUSED_STREAM_WAIT_S = 1.0
REQUEST_ID_HEADER = "x-request-id"


# Metadata gRPC sets itself, never passed on to a runtime.
# The caller's key stays in the router: runtimes never see it. Nor a caller's own mesh
# credential entry: only the router's goes out (see meshserve.auth.mesh).
_TRANSPORT_KEYS = frozenset(("user-agent", "content-type", "te", "host", "grpc-timeout", "grpc-encoding",
                             "grpc-accept-encoding", "authorization", mesh_credential.HEADER))


def forwarded_metadata(context: Context) -> Metadata:
    """The caller's metadata (identity, trace context, ...) to send on with the call."""
    return tuple(
        (m.key, m.value) for m in context.invocation_metadata() or ()
        if m.key not in _TRANSPORT_KEYS and not m.key.startswith(":")
    )


def check_request_ids(request_id: str, metadata: Metadata) -> None:
    """Refuse a request id (the request's own, or its x-request-id header) that is not a valid one."""
    if request_id and not is_request_id(request_id):
        check_request_id(request_id)
    for key, value in metadata:
        if key == REQUEST_ID_HEADER and not (isinstance(value, str) and is_request_id(value)):
            check_request_id(str(value), f"{REQUEST_ID_HEADER} header")


def link_metadata(metadata: Metadata) -> dict[str, str]:
    """Text metadata for the mesh link (binary ``-bin`` entries travel base64-encoded)."""
    return {k: v if isinstance(v, str) else base64.b64encode(v).decode() for k, v in metadata}


# gRPC's own words for a message over a size limit, on the side ("CLIENT", "SERVER") that refused it.
_GRPC_SIZE = re.compile(r"(CLIENT|SERVER): (Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")


def size_details(details: str, answer: str, runtime: str) -> str:
    """gRPC's RESOURCE_EXHAUSTED for a message over a size limit, in meshserve's words (else ``details``).

    ``answer`` names what the runtime answered ("the answer of model 'iris'").
    """
    found = _GRPC_SIZE.search(details)
    if found is None:
        return details
    side, direction, size, limit = found.group(1), found.group(2), int(found.group(3)), int(found.group(4))
    hint = "send fewer rows per call, or raise the runtime's largest message size"
    if side == "CLIENT":  # the router's own channel refused it
        error = too_large(f"{answer} from {runtime}", size, limit, "this router takes") if direction == "Received" \
            else too_large("the request", size, limit, "this router sends")
    elif direction == "Received":
        error = too_large("the request", size, limit, f"{runtime} takes", hint)
    else:
        error = too_large(answer, size, limit, f"{runtime} sends", hint)
    return error.message


class Forwarder:
    """Routes each call by the model name and version inside its bytes (traced with ``tracing``)."""

    def __init__(self, resolver: Resolver, pool: ConnectionPool, audit: CallAudit, access: Access,
                 rates: RateLimiter, *, max_attempts: int = 3, retry_min_s: float = 0.01,
                 metrics: RouterMetrics | None = None, max_message_bytes: int = 64 * 1024 * 1024,
                 tracing: Tracing = OFF) -> None:
        self.resolver = resolver
        self.tracing = tracing
        self.pool = pool
        self.metrics = metrics if metrics is not None else RouterMetrics()
        # Retries of UNAVAILABLE calls on other replicas: at most this many attempts in all,
        # and none once less than retry_min_s of the caller's deadline is left.
        self.max_attempts = max(1, max_attempts)
        self.retry_min_s = retry_min_s
        self.audit = audit
        self._shadows: set[asyncio.Task[None]] = set()
        self.access = access
        self.rates = rates
        # The largest answer this router's gRPC server sends (its max_message_bytes).
        self.max_message_bytes = max_message_bytes

    def unary(self, method: str, name_field: int = 1, version_field: int = 2, link_method: int = 0,
              audited: bool = False, mirrored: bool = False, action: str = "infer",
              id_field: int = 0) -> Callable[[bytes, Context], Coroutine[Any, Any, bytes]]:
        """A gRPC handler forwarding ``method``, routed by the given string fields.

        The model and version are read before the caller is authenticated, so every
        refusal names what was asked for; a request id (field ``id_field``, or the
        x-request-id header) that is not a valid one is refused with INVALID_ARGUMENT.

        With ``link_method``, replicas that offer a mesh link are called over it; others
        over gRPC. ``audited`` calls become call events (when the router audits);
        ``mirrored`` calls are also sent to the model's shadow versions, if it has any.
        """
        forward = self._forwarding(method, name_field, version_field, link_method, action, pipelines=mirrored)
        audit = self.audit
        authenticate = self.access.authenticate
        shadows = self.resolver.shadows if mirrored else None
        mirror = functools.partial(self._mirror, forward, version_field)
        metrics = self.metrics
        done = metrics.done
        limit = self.max_message_bytes
        traced = self.tracing

        def check_size(call: Call, response: bytes) -> None:
            if len(response) > limit:  # gRPC would fail the call after it was audited as answered
                raise too_large(f"the answer of model {call.model!r}", len(response), limit, "this router sends")

        message = f"{method}Request"

        def asked(call: Call, request: bytes) -> str:
            """Note the model and version ``request`` asks for; its request id."""
            call.model, call.requested_version, request_id = request_fields(request, name_field, version_field,
                                                                            id_field, message)
            return request_id

        async def handler(request: bytes, context: Context) -> bytes:
            call = Call(method, traced)
            metadata = forwarded_metadata(context)
            code = _UNKNOWN
            metrics.inflight += 1
            try:
                request_id = asked(call, request)
                call.principal = authenticate(context.invocation_metadata() or ())
                check_request_ids(request_id, metadata)
                response = await forward(call, request, context.time_remaining, metadata)
                check_size(call, response)
                if shadows is not None and (versions := shadows(call.model)):
                    mirror(versions, request, context.peer(), metadata)
                code = _OK
                return response
            except Exception as caught:  # noqa: BLE001 - a MeshError, or a bug logged under an error id
                e = as_mesh_error(caught, ROUTER)
                code = e.code
                if e.code in REFUSALS:
                    audit.record(call, request, None, e.code, e.message, context.peer(), metadata)
                await context.abort(e.code, e.message)
            except asyncio.CancelledError:
                code = _CANCELLED
                raise
            finally:
                metrics.inflight -= 1
                done(method, call, code)
            raise AssertionError("unreachable")

        async def audited_handler(request: bytes, context: Context) -> bytes:
            call = Call(method, traced)
            metadata = forwarded_metadata(context)
            code = _UNKNOWN
            metrics.inflight += 1
            try:
                request_id = asked(call, request)
                call.principal = authenticate(context.invocation_metadata() or ())
                check_request_ids(request_id, metadata)
                response = await forward(call, request, context.time_remaining, metadata)
                check_size(call, response)
                if shadows is not None and (versions := shadows(call.model)):
                    mirror(versions, request, context.peer(), metadata)
                if audit.strict(call.model):
                    await audit.record_durably(call, request, response, _OK, "", context.peer(), metadata)
                    code = _OK
                else:
                    code = _OK  # recorded as answered, even if the caller leaves while it is journaled
                    journaled = audit.record(call, request, response, _OK, "", context.peer(), metadata)
                    if journaled is not None:
                        await journaled  # in the journal (or fsynced) before the answer leaves
                return response
            except Exception as caught:  # noqa: BLE001 - a MeshError, or a bug logged under an error id
                e = as_mesh_error(caught, ROUTER)
                code = e.code
                journaled = audit.record(call, request, None, e.code, e.message, context.peer(), metadata)
                if journaled is not None:
                    await journaled
                await context.abort(e.code, e.message)
            except asyncio.CancelledError:
                if code is not _OK:
                    code = _CANCELLED
                    audit.record(call, request, None, _CANCELLED, "cancelled by the caller", context.peer(),
                                 metadata)
                raise
            finally:
                metrics.inflight -= 1
                done(method, call, code)
            raise AssertionError("unreachable")

        return audited_handler if audited and audit.enabled else handler

    def _mirror(self, forward: Forward, version_field: int, versions: list[str], request: bytes, peer: str,
                metadata: Metadata) -> None:
        """Send ``request`` on to each shadow version in the background; audit, then drop, the answers."""
        for version in versions:
            if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
                log.warning("%d shadow calls in flight: not mirroring more until some finish", len(self._shadows))
                return
            task = asyncio.create_task(
                self._shadow(forward, request + string_field(version_field, version), peer, metadata))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(self, forward: Forward, request: bytes, peer: str, metadata: Metadata) -> None:
        call = Call("ModelInfer", self.tracing)
        call.shadow = call.trusted = True
        deadline = time.monotonic() + SHADOW_TIMEOUT_S
        try:
            response = await forward(call, request, lambda: deadline - time.monotonic(), metadata)
        except MeshError as e:
            self.metrics.done(SHADOW, call, e.code)
            self.audit.record(call, request, None, e.code, e.message, peer, metadata)
        else:
            self.metrics.done(SHADOW, call, _OK)
            self.audit.record(call, request, response, _OK, "", peer, metadata)

    def _forwarding(self, method: str, name_field: int, version_field: int, link_method: int, action: str,
                    pipelines: bool = False) -> Forward:
        """The forwarding itself: the response bytes, or a MeshError saying why not.

        A call that a replica fails with UNAVAILABLE (it was not answered: connection
        refused or reset, the replica gone or going) counts against that replica's
        breaker and is tried again on another replica of the model, up to
        ``max_attempts`` in all and while the caller's deadline leaves ``retry_min_s``.
        Any other answer, success or error, is the caller's.
        """
        resolve = self.resolver.resolve
        place = self.resolver.place
        choose = self.pool.choose
        succeeded = self.pool.succeeded
        failed = self.pool.failed
        max_attempts = self.max_attempts
        retry_min_s = self.retry_min_s
        precheck = self.audit.precheck
        routed = self.resolver.cache.routes
        check = self.access.check
        take = self.rates.take if action == "infer" else None
        model_limits = self.resolver.cache.model_limits
        pipes = self.resolver.cache.pipelines if pipelines else {}
        metrics = self.metrics
        model_inflight = metrics.model_inflight
        traced = self.tracing

        async def forward(call: Call, request: bytes, time_remaining: Callable[[], float | None],
                          metadata: Metadata) -> bytes:
            if call.model:  # the handler read them
                name, version = call.model, call.requested_version
            else:
                call.model, call.requested_version = name, version = string_fields(request, name_field, version_field)
            if not call.trusted:
                check(call.principal, name, action)
                if take is not None:
                    take(call.principal.name)
                    if (limits := model_limits.get(name)) is not None:
                        check_request(limits, request)
            precheck(name)
            if name in pipes and not call.parent_request_id:  # a step never runs a pipeline
                return await runner.run(call, request, time_remaining, metadata)
            try:
                call.resolved_version, replicas = resolve(name, version, metadata, call.principal.sticky_name)
            except NotPlaced as missing:  # a catalog model's first call: place it, then route to it
                await place(missing, time_remaining())
                call.resolved_version, replicas = resolve(name, version, metadata, call.principal.sticky_name)
            if call.resolved_version != version and (version or name in routed):
                # An alias or a route chose the version: the runtime must serve that one.
                request += string_field(version_field, call.resolved_version)
            if traced.active:  # the call's span (the server's, or a pipeline step's) names what it routed to
                tracing.annotate(name, call.resolved_version)
            conn = choose(replicas)
            attempts = min(max_attempts, len(replicas))
            tried: list[Connection] = []
            held = (name, call.resolved_version)
            while True:
                call.replica = conn.replica
                conn.inflight += 1
                model_inflight[held] = model_inflight.get(held, 0) + 1
                remaining = time_remaining()
                try:
                    link = None
                    if link_method and conn.link_address:
                        link = conn.open_link or await conn.link(remaining)
                    if link is not None:
                        response = await link.call(link_method, request, remaining, link_metadata(metadata))
                    else:
                        response = await conn.unary(method)(request, timeout=remaining, metadata=metadata)
                except MeshError as e:
                    code, details = e.code, e.message
                except grpc.aio.AioRpcError as e:
                    code, details = e.code(), e.details() or e.code().name
                    if code is _RESOURCE_EXHAUSTED:
                        details = size_details(details, f"the answer of model {name!r}", conn.replica.runtime_id)
                else:
                    if conn.failures:
                        succeeded(conn)
                    return response
                finally:
                    conn.inflight -= 1
                    model_inflight[held] -= 1
                if code is not _UNAVAILABLE:
                    raise error_for(code, details)
                # UNAVAILABLE: not answered. Over the mesh link a runtime killed mid-call
                # also ends here (the lost connection fails its calls with UNAVAILABLE),
                # so the call may have run there already: trying it again elsewhere is
                # safe because forwarded calls are idempotent (inference computes
                # outputs from inputs and changes nothing; the metadata calls only read).
                failed(conn, details)
                tried.append(conn)
                left = time_remaining()
                if len(tried) < attempts and (left is None or left >= retry_min_s):
                    conn = choose(replicas, tried)
                    metrics.retries += 1
                    continue
                others = f" (after {len(tried) - 1} other replica(s) failed too)" if len(tried) > 1 else ""
                raise error_for(code, f"model {name!r} on {conn.replica.runtime_id} ({conn.address}) is "
                                      f"unavailable{others}: {details}")

        runner = PipelineRunner(forward, self.audit, pipes, metrics, traced)
        return forward

    async def stream_infer(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        """ModelStreamInfer: each request goes to a replica of its own model.

        One upstream stream is opened per replica the stream's requests need; their
        responses are merged back in the order each replica sends them. A request that
        cannot be routed gets an error response, and the stream goes on. Each response is
        audited with the request it answers (see :mod:`.streams`; a decoupled model's
        request gives one event per response).
        """
        # Bounded: a slow reader holds back the runtimes instead of filling the router's memory.
        out: asyncio.Queue[bytes | MeshError | None] = asyncio.Queue(maxsize=STREAM_BUFFER)
        upstreams: dict[str, grpc.aio.StreamStreamCall[bytes, bytes]] = {}
        awaiting: dict[str, Awaiting] = {}
        pumps: list[asyncio.Task[None]] = []
        timeout = context.time_remaining()
        metadata = forwarded_metadata(context)
        audit = self.audit if self.audit.enabled else None
        peer = context.peer() if audit else ""
        refused = Call(_STREAM, self.tracing)
        try:
            principal = refused.principal = self.access.authenticate(context.invocation_metadata() or ())
            check_request_ids("", metadata)
        except MeshError as e:
            # Audited with the model of the first request, if one comes soon.
            first = await _first_request(requests, min(REFUSED_STREAM_WAIT_S, timeout or REFUSED_STREAM_WAIT_S))
            with contextlib.suppress(InvalidArgument):
                refused.model, refused.requested_version = string_fields(first, 1, 2)
            self.metrics.done(_STREAM, refused, e.code)
            self.audit.record(refused, first, None, e.code, e.message, context.peer(), metadata)
            await context.abort(e.code, e.message)

        done = self.metrics.done

        def audited(call: Call, request: bytes, response: bytes | None, code: grpc.StatusCode,
                    message: str) -> asyncio.Future[None] | None:
            done(_STREAM, call, code)  # each request counts once answered (a decoupled model's: per response)
            return audit.record(call, request, response, code, message, peer, metadata) if audit else None

        async def settle(call: Call, request: bytes, response: bytes) -> bytes:
            """Audit one answered request: journaled before the answer goes on; a strict model's waits for a
            durable event."""
            if audit is None or not audit.strict(call.model):
                if (journaled := audited(call, request, response, _OK, "")) is not None:
                    await journaled
                return response
            try:
                await audit.record_durably(call, request, response, _OK, "", peer, metadata)
            except MeshError as e:
                audited(call, request, None, e.code, e.message)
                return oip.ModelStreamInferResponse(error_message=e.message).SerializeToString()
            done(_STREAM, call, _OK)
            return response

        async def pump(conn: Connection, upstream: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
            pending = awaiting[conn.address]
            try:
                async for response in upstream:
                    entry = pending.match(response)  # for the metrics and the audit trail
                    if entry is not None:
                        response = await settle(entry.call, entry.request, response)
                    await out.put(response)
                for entry in pending.drain():  # the upstream ended: decoupled requests are complete
                    if not entry.answers:
                        audited(entry.call, entry.request, None, _OK, "the model sent no response")
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or e.code().name
                if code is _RESOURCE_EXHAUSTED:
                    details = size_details(details, "an answer in this stream", conn.replica.runtime_id)
                for entry in pending.drain():
                    audited(entry.call, entry.request, None, code, details)
                await out.put(error_for(code, details))
            finally:
                conn.inflight -= 1

        async def read_requests() -> None:
            try:
                async for request in requests:
                    call = Call("ModelStreamInfer", self.tracing)
                    call.principal = principal
                    try:
                        name, version, request_id = request_fields(request, 1, 2, 3, "ModelInferRequest")
                        call.model, call.requested_version = name, version
                        check_request_ids(request_id, ())
                        self.access.check(principal, name, "infer")
                        self.rates.take(principal.name)
                        if (limits := self.resolver.cache.model_limits.get(name)) is not None:
                            check_request(limits, request)
                        self.audit.precheck(name)
                        call.resolved_version, replicas = self.resolver.resolve(
                            name, version, metadata, principal.sticky_name)
                        if call.resolved_version != version and (version or name in self.resolver.cache.routes):
                            request += string_field(2, call.resolved_version)
                    except MeshError as e:
                        audited(call, request, None, e.code, e.message)
                        await out.put(oip.ModelStreamInferResponse(error_message=e.message).SerializeToString())
                        continue
                    sticky = next((r for r in replicas if r.address in upstreams), None)
                    conn = self.pool.get(sticky) if sticky else self.pool.choose(replicas)
                    call.replica = conn.replica
                    upstream = upstreams.get(conn.address)
                    if upstream is None:
                        upstream = conn.stream()(timeout=timeout, metadata=metadata)
                        upstreams[conn.address] = upstream
                        awaiting[conn.address] = Awaiting()
                        conn.inflight += 1
                        pumps.append(asyncio.create_task(pump(conn, upstream)))
                    awaiting[conn.address].add(call, request, self.resolver.decoupled(
                        name, call.resolved_version, conn.replica.runtime_id))
                    await upstream.write(request)
                for upstream in upstreams.values():
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await upstream.done_writing()
                await asyncio.gather(*pumps)
            finally:
                await out.put(None)

        reader = asyncio.create_task(read_requests())
        self.metrics.inflight += 1  # an open stream is one call held open
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, MeshError):
                    await context.abort(item.code, item.message)
                assert isinstance(item, bytes)
                yield item
            await reader
        except Exception as caught:
            if isinstance(caught, grpc.aio.AbortError):
                raise
            error = as_mesh_error(caught, ROUTER)
            await context.abort(error.code, error.message)
        finally:
            self.metrics.inflight -= 1
            reader.cancel()
            for upstream in upstreams.values():
                upstream.cancel()
            for task in pumps:
                task.cancel()
            for pending in awaiting.values():  # the caller left before these were answered
                for entry in pending.drain():
                    if not entry.answers:
                        audited(entry.call, entry.request, None, _CANCELLED, "the stream ended before the answer")


async def _first_request(requests: AsyncIterator[bytes], wait: float) -> bytes:
    """The first request of a stream, if it comes within ``wait`` seconds; else b""."""
    try:
        return await asyncio.wait_for(anext(requests), wait)
    except (StopAsyncIteration, TimeoutError, grpc.RpcError):
        return b""
