"""Fixtures shared by every test: real etcd on loopback, in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserve.cli.context import CONTEXT_ENV
from meshserve.local.etcd import EtcdServer


@pytest.fixture(scope="session", autouse=True)
def _own_mesh_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests' own context file (none at first): their `meshserve up` never takes the user's, nor their
    commands act on the user's mesh."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONTEXT_ENV, str(tmp_path_factory.mktemp("context") / "context.json"))
        yield


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
