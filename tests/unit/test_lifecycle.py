"""A service's parts: stopped in reverse order, each tried even when one fails; a crashed loop stops the service."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshserve.lifecycle import Parts


async def test_parts_stop_in_reverse_order_and_a_failing_stop_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []
    parts = Parts("test service")

    async def stop_async(name: str) -> None:
        await asyncio.sleep(0)
        stopped.append(name)

    def broken() -> None:
        stopped.append("broken")
        raise RuntimeError("the socket was already closed")

    parts.on_stop("first", lambda: stop_async("first"))
    parts.on_stop("broken part", broken)
    parts.on_stop("last", lambda: stopped.append("last"))
    with caplog.at_level(logging.ERROR):
        await parts.stop()
    assert stopped == ["last", "broken", "first"]
    assert "test service: stopping its broken part failed" in caplog.text
    assert "the socket was already closed" in caplog.text
    await parts.stop()  # a second stop has nothing left to do
    assert stopped == ["last", "broken", "first"]


async def test_loops_are_cancelled_before_any_part_stops() -> None:
    seen: list[str] = []
    parts = Parts("test service")
    parts.on_stop("part", lambda: seen.append("part stopped"))

    async def loop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("loop cancelled")
            raise

    task = await parts.background(loop(), "loop")
    await asyncio.sleep(0)
    await parts.stop()
    assert task.cancelled() and seen == ["loop cancelled", "part stopped"]


async def test_a_crashed_loop_stops_the_service_and_says_why() -> None:
    stopped: list[str] = []

    async def run() -> None:  # what run_until_signalled does: start, wait for the end, stop
        parts = Parts("test service")
        parts.on_stop("part", lambda: stopped.append("part"))

        async def crash() -> None:
            await asyncio.sleep(0.01)
            raise ValueError("a bug in a loop")

        await parts.background(crash(), "crashing loop")
        try:
            await asyncio.sleep(3600)  # the service's life: cut short by the crash
        finally:
            await parts.stop()

    with pytest.raises(BaseExceptionGroup) as raised:
        await asyncio.wait_for(run(), 5)
    assert raised.group_contains(ValueError, match="a bug in a loop")
    assert stopped == ["part"]
