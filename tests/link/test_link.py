"""Mesh link client and server over real loopback sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from meshserve.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from meshserve.link import LinkClient, LinkServer, serve_link

MiB = 1024 * 1024


class Backend:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.seen_metadata: dict[str, str] = {}

    async def handle(self, method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        self.seen_metadata = metadata
        if payload == b"fail":
            raise InvalidArgument("input 'x' has the wrong shape")
        if payload == b"crash":
            raise RuntimeError("boom")
        if payload.startswith(b"sleep"):
            try:
                await asyncio.sleep(float(payload[5:]))
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return payload[::-1]


@pytest.fixture
async def link() -> AsyncIterator[tuple[Backend, LinkClient, LinkServer]]:
    backend = Backend()
    server = await serve_link("127.0.0.1", 0, backend.handle, 8 * MiB)
    client = await LinkClient.connect(server.address, 8 * MiB)
    yield backend, client, server
    client.close()
    await server.close()


async def test_concurrent_calls_get_their_own_answers(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    _, client, _ = link
    payloads = [f"call {i}".encode() for i in range(200)]
    answers = await asyncio.gather(*(client.call(1, p) for p in payloads))
    assert answers == [p[::-1] for p in payloads]


async def test_large_payload_round_trip(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    _, client, _ = link
    payload = bytes(range(256)) * (4 * MiB // 256)
    assert await client.call(1, payload) == payload[::-1]


async def test_errors_keep_their_status_and_message(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    _, client, _ = link
    with pytest.raises(InvalidArgument, match="wrong shape"):
        await client.call(1, b"fail")
    with pytest.raises(Internal, match=r"internal error in the runtime's mesh link \(error id [0-9a-f]{8}\)") as crash:
        await client.call(1, b"crash")
    assert "boom" not in crash.value.message and "RuntimeError" not in crash.value.message  # those are in the log
    assert await client.call(1, b"ok") == b"ko"  # the connection survives both


async def test_an_answer_over_the_callers_limit_fails_alone() -> None:
    # A runtime allowing larger messages than its router: the router drops that answer unread
    # (RESOURCE_EXHAUSTED naming both sizes); the connection and the calls beside it go on.
    async def handle(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        if payload.startswith(b"big"):
            await asyncio.sleep(0.05)
            return b"x" * (2 * MiB)
        await asyncio.sleep(0.1)
        return payload[::-1]

    server = await serve_link("127.0.0.1", 0, handle, 8 * MiB)
    client = await LinkClient.connect(server.address, MiB)
    try:
        big, *small = await asyncio.gather(client.call(1, b"big"), *(client.call(1, b"s%d" % i) for i in range(20)),
                                           return_exceptions=True)
        assert isinstance(big, ResourceExhausted), big
        assert f"{2 * MiB:,} bytes" in big.message and f"at most {MiB:,}" in big.message, big.message
        assert small == [(b"s%d" % i)[::-1] for i in range(20)]
        assert not client.closed and await client.call(1, b"after") == b"retfa"
    finally:
        client.close()
        await server.close()


async def test_a_request_over_the_runtimes_limit_fails_alone() -> None:
    seen: list[int] = []

    async def handle(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        seen.append(len(payload))
        return payload[:2]

    server = await serve_link("127.0.0.1", 0, handle, MiB)
    client = await LinkClient.connect(server.address, 8 * MiB)
    try:
        with pytest.raises(ResourceExhausted, match=rf"the request is {2 * MiB:,} bytes; this runtime takes at most "
                                                    rf"{MiB:,} \(max_message_bytes\)"):
            await client.call(1, b"y" * (2 * MiB))
        assert seen == []  # the handler never saw it
        assert await client.call(1, b"ok") == b"ok"
    finally:
        client.close()
        await server.close()


async def test_metadata_reaches_the_handler(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    backend, client, _ = link
    await client.call(1, b"x", metadata={"x-request-id": "abc", "authorization": "Bearer k"})
    assert backend.seen_metadata == {"x-request-id": "abc", "authorization": "Bearer k"}


async def test_deadline_ends_the_call_and_the_work(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    backend, client, _ = link
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await client.call(1, b"sleep5", remaining_s=0.2)
    assert time.monotonic() - started < 1.0
    await asyncio.wait_for(backend.cancelled.wait(), 2.0)


async def test_cancelling_the_caller_cancels_the_work(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    backend, client, _ = link
    task = asyncio.create_task(client.call(1, b"sleep5"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(backend.cancelled.wait(), 2.0)


async def test_calls_in_flight_fail_unavailable_when_the_peer_dies() -> None:
    async def accept_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)  # the magic and a request arrive; then the "runtime" is gone
        writer.transport.abort()

    server = await asyncio.start_server(accept_then_die, "127.0.0.1", 0)
    client = await LinkClient.connect(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", MiB)
    with pytest.raises(Unavailable, match="closed"):
        await asyncio.wait_for(client.call(1, b"hello"), 2.0)
    with pytest.raises(Unavailable):
        await client.call(1, b"again")
    server.close()


async def test_connecting_to_nothing_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="cannot connect"):
        await LinkClient.connect("127.0.0.1:1", MiB)


async def test_cancelling_a_large_request_mid_write_keeps_the_link_usable() -> None:
    seen: list[int] = []

    async def handle(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        seen.append(len(payload))
        return b"ok:" + payload[:8]

    server = await serve_link("127.0.0.1", 0, handle, 16 * MiB)
    client = await LinkClient.connect(server.address, 16 * MiB)
    try:
        big = asyncio.create_task(client.call(1, b"B" * (8 * MiB)))
        await asyncio.sleep(0)  # the first chunks are out, the rest waits for the socket
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        answer = await asyncio.wait_for(client.call(1, b"small-request"), 3)
        assert answer == b"ok:small-re"
        assert 8 * MiB in seen or len(seen) == 1  # the large frame arrived whole, or was cancelled in time
    finally:
        client.close()
        await server.close()


async def test_closing_the_server_fails_calls_in_flight(link: tuple[Backend, LinkClient, LinkServer]) -> None:
    _, client, server = link
    task = asyncio.create_task(client.call(1, b"sleep5"))
    await asyncio.sleep(0.1)
    await server.close()
    with pytest.raises(Unavailable, match="closed"):
        await asyncio.wait_for(task, 2.0)
