"""Keeping an etcd user's token valid for the life of a client.

etcd with authentication on wants a token on every call, got by ``Authenticate`` with the
user's password. Tokens stop being valid: after their time to live, after a change of
etcd's users, and (for etcd's default tokens) when etcd restarts. A mesh service lives
longer than all three, so its channel to etcd carries :class:`TokenKeeper`, an
interceptor that puts the current token on every call, renews it on a schedule, and,
when etcd answers a call with an invalid token, authenticates again and repeats that call
once (a stream that ends so, a watch or a lease keep-alive, makes the next call renew first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meshserve.errors import FailedPrecondition

log = logging.getLogger(__name__)

# Renewed this often even when nothing failed (etcd's signed tokens last an hour here).
REFRESH_S = 600.0
_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"


@dataclass(frozen=True)
class EtcdCredentials:
    """An etcd user and its password (see :mod:`meshserve.registry.etcd_auth`)."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def from_file(cls, user: str, password_file: Path | None) -> EtcdCredentials | None:
        """The user with the password in ``password_file``; None without a user."""
        if not user:
            return None
        if password_file is None:
            raise FailedPrecondition(f"etcd user {user!r} needs a password file (--etcd-password-file)")
        try:
            password = password_file.read_text().strip()
        except OSError as e:
            raise FailedPrecondition(f"cannot read the etcd password file {password_file}: {e.strerror}") from e
        return cls(user, password)


def _invalid_token(code: grpc.StatusCode, details: str | None) -> bool:
    return code == grpc.StatusCode.UNAUTHENTICATED and "token" in (details or "")


class TokenKeeper:
    """Puts the current token on every call of a channel (through :meth:`interceptors`);
    ``authenticate`` gets a new one."""

    def __init__(self, authenticate: Callable[[], Awaitable[str]]) -> None:
        self._authenticate = authenticate
        self._token = ""
        self._renewed_at = 0.0
        self._lock = asyncio.Lock()

    async def renew(self, unless_since: float = -1.0) -> None:
        """Authenticate again (once for a crowd of callers: not when renewed after ``unless_since``)."""
        async with self._lock:
            if self._renewed_at > unless_since and self._token:
                return
            self._token = await self._authenticate()
            self._renewed_at = time.monotonic()

    async def keep_fresh(self) -> None:
        """Renew on a schedule (a task for the client's lifetime)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.renew()
            except Exception as e:  # noqa: BLE001 - the token held serves meanwhile; the next call retries
                log.warning("renewing the etcd token failed (%s); trying again", e)
                await asyncio.sleep(5.0)

    def _with_token(self, details: Any) -> Any:
        pairs = [(k, v) for k, v in (details.metadata or ()) if k != "token"]
        return details._replace(metadata=grpc.aio.Metadata(*pairs, ("token", self._token)))

    @staticmethod
    def _exempt(details: Any) -> bool:
        method = details.method
        return (method.decode() if isinstance(method, bytes) else method) == _AUTHENTICATE

    def interceptors(self) -> list[Any]:
        """The channel's interceptors: grpc takes one kind of call from each."""
        return [_Unary(self), _UnaryStream(self), _StreamStream(self)]

    async def unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self._exempt(details):
            return await continuation(details, request)
        if not self._token:
            await self.renew()
        sent_at = time.monotonic()
        call = await continuation(self._with_token(details), request)
        if _invalid_token(await call.code(), await call.details()):
            log.info("etcd refused the token (%s): authenticating again", await call.details())
            await self.renew(unless_since=sent_at)
            call = await continuation(self._with_token(details), request)
        return call

    async def streaming(self, continuation: Any, details: Any, request: Any) -> Any:
        if not self._token:
            await self.renew()
        sent_at = time.monotonic()
        call = await continuation(self._with_token(details), request)

        async def check(done: Any) -> None:
            with contextlib.suppress(Exception):
                if _invalid_token(await done.code(), await done.details()):
                    await self.renew(unless_since=sent_at)

        call.add_done_callback(lambda done: asyncio.ensure_future(check(done)))
        return call



class _Unary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, keeper: TokenKeeper) -> None:
        self.keeper = keeper

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.keeper.unary(continuation, details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, keeper: TokenKeeper) -> None:
        self.keeper = keeper

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.keeper.streaming(continuation, details, request)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, keeper: TokenKeeper) -> None:
        self.keeper = keeper

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await self.keeper.streaming(continuation, details, request_iterator)
