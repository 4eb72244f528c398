"""One error vocabulary for every meshserve service.

Domain code raises a :class:`MeshError` subclass; servicers wrap handlers with
:func:`grpc_errors` (or call :func:`abort`) so each becomes ``context.abort`` with the
error's status code and a message a person can act on. Clients turn an ``RpcError``
back into the same class with :func:`from_rpc_error`.

Anything else a handler raises is a bug: :func:`as_mesh_error` logs it once, with its
traceback, under a fresh error id, and the caller gets INTERNAL naming only that id.
:func:`too_large` words the RESOURCE_EXHAUSTED of a message over a size limit.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

log = logging.getLogger(__name__)


# Messages quote what callers sent (names, values); a hostile request must not make them huge.
MAX_MESSAGE_CHARS = 1000


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message``, cut to ``limit`` characters with a note of how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


class MeshError(Exception):
    """Base of every error meshserve reports to a caller (its message at most about 1,000 characters)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(MeshError):
    """The request is malformed or does not match the model's signature."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MeshError):
    """An unknown model, version or runtime."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(MeshError):
    """Nothing can serve the call right now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(MeshError):
    """A size, queue or rate limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MeshError):
    """The system is not in a state where the call can run (a model not loaded)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


# The codes of a refused caller, which the router audits on every method.
REFUSALS = frozenset((grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED))


class Unimplemented(MeshError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MeshError):
    """A bug or a failure inside a model; the message says which."""

    code = grpc.StatusCode.INTERNAL


def internal_error(error: BaseException, where: str) -> Internal:
    """Log ``error`` and its traceback once under a fresh id; the Internal to answer with, naming only the id.

    ``where`` names the part that failed ("the python runtime", "the router"): its log
    holds the details. The exception's type and message never reach the caller.
    """
    error_id = secrets.token_hex(4)
    log.error("internal error %s in %s: %s", error_id, where, bounded(f"{type(error).__name__}: {error}"),
              exc_info=error)
    return Internal(f"internal error in {where} (error id {error_id}); its log has the details")


def as_mesh_error(error: Exception, where: str) -> MeshError:
    """``error`` itself when it is a :class:`MeshError`; otherwise a bug, made :func:`internal_error`."""
    if isinstance(error, MeshError):
        return error
    return internal_error(error, where)


def too_large(what: str, size: int, limit: int, who: str, hint: str = "") -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for a message over a size limit, naming both sizes.

    ``what`` is the message ("the answer of 'iris'"), ``who`` the holder of the limit and
    what it does ("this runtime sends").
    """
    hint = hint or "send fewer rows per call, or raise max_message_bytes on the runtimes and routers"
    return ResourceExhausted(f"{what} is {size:,} bytes; {who} at most {limit:,} (max_message_bytes): {hint}")


_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, Unavailable, ResourceExhausted,
        FailedPrecondition, DeadlineExceeded, Unauthenticated, PermissionDenied,
        Unimplemented, Internal,
    )
}


def error_for(code: grpc.StatusCode, message: str) -> MeshError:
    """The :class:`MeshError` for a status code (a plain MeshError carrying it when no class has it)."""
    cls = _BY_CODE.get(code, MeshError)
    error = cls(message or code.name)
    error.code = code
    return error


def from_rpc_error(err: grpc.RpcError) -> MeshError:
    """Map a client-side ``RpcError`` back to the matching :class:`MeshError`."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return error_for(code, details)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: MeshError) -> NoReturn:
    await context.abort(error.code, error.message)
    raise AssertionError("unreachable")  # context.abort always raises


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def grpc_errors(handler: F) -> F:
    """Turn a :class:`MeshError` raised by an async unary handler into ``context.abort``.

    Anything else is a bug (:func:`as_mesh_error`): logged with its traceback under an
    error id, and the caller gets INTERNAL naming the servicer's ``component`` ("the
    router") and that id, never the exception's text.
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as e:
            if isinstance(e, grpc.aio.AbortError):
                raise
            error = as_mesh_error(e, getattr(self, "component", "this service"))
            await context.abort(error.code, error.message)

    return wrapper  # type: ignore[return-value]
