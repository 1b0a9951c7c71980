"""A real ``consul agent -dev`` for tests: loopback ports of its own, stopped
by its pid.

``ConsulAgent(workdir).start()`` runs the pinned binary (on PATH, else in
``$FLOTILLA_CACHE/bin``, which `make consul` fills) and returns once the
agent has elected itself leader; ``restart()`` brings it back on the same
ports with the empty state of a fresh dev agent; ``stop()`` ends it.
The ``consul`` fixture gives each test one and stops it afterwards; a
missing binary fails the test (`make test` installs it), it never skips.

Contract: everything binds 127.0.0.1, and every process started here is
ended by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import consul as py_consul
import pytest

from tests.harness import end_process

READY_SECONDS = 30.0
#: The ports a dev agent listens on, each chosen free on 127.0.0.1.
PORTS = ("http", "grpc", "dns", "serf-lan", "serf-wan", "server")


def flotilla_cache() -> Path:
    return Path(os.environ.get("FLOTILLA_CACHE", Path.home() / ".cache" / "flotilla"))


def find_consul() -> Path | None:
    """The consul binary on PATH, else the one `make consul` builds; None if neither."""
    found = shutil.which("consul")
    path = Path(found) if found else flotilla_cache() / "bin" / "consul"
    return path if os.access(path, os.X_OK) else None


def consul_binary() -> Path:
    """:func:`find_consul`, failing the test with what to run when it is missing."""
    path = find_consul()
    if path is None:
        pytest.fail(f"no consul on PATH or at {flotilla_cache() / 'bin' / 'consul'}: run "
                    "`make consul` (it builds the pinned version; `make test` runs it)",
                    pytrace=False)
    return path


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel hands out on 127.0.0.1, distinct from one another."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ConsulAgent:
    """One dev agent. Its ports are chosen once, so a restarted agent is at
    the same address; ``pid`` changes with every start."""

    def __init__(self, workdir: Path, binary: Path | None = None) -> None:
        self.binary = binary or consul_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "consul.log"
        self.node = f"flotilla-test-{uuid.uuid4().hex[:8]}"
        self.ports = dict(zip(PORTS, free_loopback_ports(len(PORTS)), strict=True))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port of the HTTP API."""
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def http(self) -> str:
        """The HTTP API's base URL."""
        return f"http://{self.address}"

    @property
    def url(self) -> str:
        """What `flotilla server --catalog` takes."""
        return f"consul://{self.address}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the dev Consul agent is not running; call start()")
        return self._process.pid

    @property
    def client(self) -> py_consul.Consul:
        return py_consul.Consul(host="127.0.0.1", port=self.ports["http"])

    def start(self) -> ConsulAgent:
        if self._process is not None:
            raise RuntimeError(f"dev Consul already runs as pid {self._process.pid}")
        ports = self.ports
        command = [
            str(self.binary), "agent", "-dev", "-node", self.node,
            "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", str(ports["http"]), "-grpc-port", str(ports["grpc"]),
            "-grpc-tls-port", "-1", "-dns-port", str(ports["dns"]),
            "-serf-lan-port", str(ports["serf-lan"]), "-serf-wan-port", str(ports["serf-wan"]),
            "-server-port", str(ports["server"]),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, cwd=self.workdir, stdout=log,
                                             stderr=subprocess.STDOUT)
        self._wait_for_leader(time.monotonic() + READY_SECONDS)
        return self

    def stop(self) -> None:
        """Terminates the agent by its pid and waits for it (kills after 15 s)."""
        process, self._process = self._process, None
        end_process(process)

    def restart(self) -> ConsulAgent:
        self.stop()
        return self.start()

    def get(self, path: str) -> Any:
        """GET ``path`` (``/v1/...``) from the HTTP API, decoded from JSON."""
        with urllib.request.urlopen(self.http + path, timeout=10) as response:
            return json.load(response)

    def put(self, path: str, body: Any = None) -> None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http + path, data=data, method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def _wait_for_leader(self, deadline: float) -> None:
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                self._fail(f"exited with status {self._process.returncode}")
            try:
                if self.get("/v1/status/leader"):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"elected no leader within {READY_SECONDS:.0f} s")
            time.sleep(0.05)

    def _fail(self, what: str) -> NoReturn:
        tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        pytest.fail(f"dev Consul at {self.address} {what}; log:\n" + "\n".join(tail))


@pytest.fixture
def consul(tmp_path: Path) -> Iterator[ConsulAgent]:
    """A started dev agent for one test (import this fixture into a test module)."""
    agent = ConsulAgent(tmp_path / "consul")
    try:
        yield agent.start()
    finally:
        agent.stop()
