"""A real NATS broker for the publisher tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserve.local.nats import NatsServer


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()
