"""Test harness shared by every test folder: a real `flotilla server`
subprocess on a free loopback port with a data dir of its own, and a CLI runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.client import Client

STARTUP_DEADLINE = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, deadline: float = STARTUP_DEADLINE) -> None:
    """Poll the grpc health service until it says SERVING."""
    end = time.monotonic() + deadline
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"flotilla server at {address} not serving after {deadline}s")
            time.sleep(0.05)


@dataclass
class ServerProcess:
    """A `flotilla server` subprocess; tests may kill and restart it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "server", "--listen", self.address,
             "--data-dir", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_serving(self.address)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> Client:
        return Client(self.address)

    def log(self) -> str:
        path = self.data_dir.parent / f"server-{self.port}.log"
        return path.read_text() if path.exists() else ""


def run_cli(
    *args: str, server: ServerProcess | None = None, address: str | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `flotilla` CLI in a subprocess."""
    env = {**os.environ, "FLOTILLA_SERVER": address or (server.address if server else "")}
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60,
    )
