"""Fixtures shared by every test: real etcd on loopback, in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserve.local.etcd import EtcdServer


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd server for the whole session (tests use distinct keys or runtimes)."""
    root: Path = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(root, root / "etcd.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd server of the test's own, for tests that stop and restart it."""
    server = EtcdServer(tmp_path, tmp_path / "etcd.log")
    server.start()
    yield server
    server.stop()
