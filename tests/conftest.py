"""Fixtures shared by every test folder (see tests/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import Client
from tests.harness import ServerProcess, stop_leftovers


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session() -> Iterator[None]:
    """Whatever a fixture started and, failing in its own setup, could not
    stop is stopped here, by pid."""
    yield
    leftovers = stop_leftovers()
    if leftovers:
        print(f"\nstopped processes that no fixture stopped: {', '.join(leftovers)}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole module, for tests that leave the store as they found it."""
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def module_client(module_server: ServerProcess) -> Iterator[Client]:
    with module_server.client() as c:
        yield c
