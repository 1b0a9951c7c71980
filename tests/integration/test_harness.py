"""The harness never leaves a process running when a start fails."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import ServerProcess, free_port


def test_a_server_that_cannot_serve_is_stopped_by_its_start(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # the port is taken
        server = ServerProcess(tmp_path / "server", port=port)
        with pytest.raises(RuntimeError, match="exited"):
            server.start()
    assert server.proc is not None and server.proc.poll() is not None
