"""Connecting to etcd with aetcd."""

from __future__ import annotations

import asyncio
import logging
import time

import aetcd

from meshserve.errors import Unavailable

log = logging.getLogger(__name__)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    return host, int(port)


async def connect(endpoint: str, *, wait: float = 10.0, call_timeout: float = 5.0) -> aetcd.Client:
    """Connect to etcd at ``endpoint``, retrying for up to ``wait`` seconds.

    Raises Unavailable naming the endpoint when etcd does not answer in time, so a
    service fails fast at start-up with a message that says what to fix.
    """
    host, port = split_endpoint(endpoint)
    client = aetcd.Client(host=host, port=port, timeout=int(max(1, call_timeout)))
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
