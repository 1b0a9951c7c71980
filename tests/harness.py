"""Test harness shared by every test folder: a real `flotilla server`
subprocess on a free loopback port with a data dir of its own, and a CLI runner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.api.flotilla.v1 import agent_pb2, nodes_pb2
from controlplane.client import Client
from sidecar.link import ControlPlaneLink

STARTUP_DEADLINE = 30.0
T = TypeVar("T")

#: Every server and agent process started through this module and not yet
#: stopped; ``stop_leftovers`` (run by tests/conftest.py after the session)
#: ends the ones a fixture whose own setup failed could not reach.
_STARTED: list[ServerProcess | AgentProcess] = []


def stop_leftovers() -> list[str]:
    """Stops (by pid) every process this module started that still runs;
    returns what it stopped, for a warning."""
    stopped = []
    while _STARTED:
        process = _STARTED.pop()
        if process.proc is not None and process.proc.poll() is None:
            stopped.append(f"{type(process).__name__} pid {process.proc.pid}")
            process.cleanup()
    return stopped


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def end_process(process: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """Terminate a process the test started (by its pid) and wait; kill it
    after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_serving(address: str, deadline: float = STARTUP_DEADLINE,
                 process: subprocess.Popen[Any] | None = None) -> None:
    """Poll the grpc health service until it says SERVING (or *process* exits)."""
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
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"flotilla server for {address} exited with "
                                   f"{process.returncode} before serving")
            if time.monotonic() > end:
                raise TimeoutError(f"flotilla server at {address} not serving after {deadline}s")
            time.sleep(0.05)


@dataclass
class ServerProcess:
    """A `flotilla server` subprocess; tests may kill and restart it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    agent_port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "server", "--listen", self.address,
             "--agent-listen", f"127.0.0.1:{self.agent_port}",
             "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        _STARTED.append(self)
        try:
            wait_serving(self.address, process=self.proc)
        except BaseException:
            self.stop()  # never leave a server running that the caller will not stop
            raise
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        end_process(self.proc)

    cleanup = stop

    def client(self) -> Client:
        return Client(self.address)

    @property
    def join_token(self) -> str:
        return (self.data_dir / "join-token").read_text().strip()

    def join(self, node: str, address: str = "127.0.0.9", token: str | None = None
             ) -> ControlPlaneLink:
        """A node joined as an agent would (no agent runs): its link's stubs
        call the agent port with the node's certificate. Close it."""
        link = ControlPlaneLink(self.address, self.join_token if token is None else token)
        try:
            link.join(agent_pb2.JoinRequest(
                name=node, address=address, drivers=["process"],
                capacity=nodes_pb2.Capacity(cpu_millis=64_000, memory_mib=64_000)))
        except BaseException:
            link.close()
            raise
        return link

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


@dataclass
class AgentProcess:
    """A `flotilla agent` subprocess with the process driver and a data dir of
    its own. ``cleanup()`` also ends the workloads it started (by pid)."""

    server: ServerProcess
    name: str
    address: str
    data_dir: Path
    labels: tuple[str, ...] = ()
    cpu: int = 4000
    memory: int = 4096
    drivers: tuple[str, ...] = ("process",)
    proc: subprocess.Popen[bytes] | None = None
    #: Every replica's address, comma-separated [default: the server's].
    servers: str = ""

    def start(self) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "agent.log", "ab")  # noqa: SIM115
        args = [sys.executable, "-m", "controlplane", "--server",
                self.servers or self.server.address, "agent",
                "--name", self.name, "--address", self.address, "--cpu", str(self.cpu),
                "--memory", str(self.memory), "--data-dir", str(self.data_dir),
                "--join-token-file", str(self.server.data_dir / "join-token")]
        for label in self.labels:
            args += ["--label", label]
        for driver in self.drivers:
            args += ["--driver", driver]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _STARTED.append(self)
        return self

    def again(self) -> AgentProcess:
        """A new agent process for the same node: name, address, labels, data dir."""
        return AgentProcess(self.server, self.name, self.address, self.data_dir,
                            labels=self.labels, cpu=self.cpu, memory=self.memory,
                            drivers=self.drivers, servers=self.servers).start()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def workload_pids(self) -> dict[str, int]:
        """instance id -> pid of each process-driver workload on disk."""
        pids = {}
        for state in (self.data_dir / "instances").glob("*/state.json"):
            pids[state.parent.name] = int(json.loads(state.read_text())["pid"])
        return pids

    def envoy_pids(self) -> dict[str, int]:
        """instance id -> pid of each process-driver sidecar Envoy on disk."""
        pids = {}
        for state in (self.data_dir / "instances").glob("*/state.json"):
            pid = int(json.loads(state.read_text()).get("envoy_pid") or 0)
            if pid:
                pids[state.parent.name] = pid
        return pids

    def cleanup(self) -> None:
        self.kill(signal.SIGTERM)
        for pid in [*self.workload_pids().values(), *self.envoy_pids().values()]:
            if pid <= 0:  # not started yet: killpg(0) would be our own group
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def log(self) -> str:
        path = self.data_dir / "agent.log"
        return path.read_text() if path.exists() else ""


@contextmanager
def running_cluster(data: Path, *nodes: tuple[str, str], server_args: tuple[str, ...] = (),
                    **agent_options: Any) -> Iterator[tuple[ServerProcess, list[AgentProcess]]]:
    """A server in ``data/server`` and one agent per ``(name, address)`` in
    ``data/<name>`` (``agent_options`` for each: labels, drivers, ...), once
    every node is ready; everything stopped after, also when a start fails."""
    server = ServerProcess(data / "server", extra_args=server_args).start()
    agents: list[AgentProcess] = []
    try:
        for name, address in nodes:
            agents.append(AgentProcess(server, name, address, data / name,
                                       **agent_options).start())
        wanted = sorted(name for name, _ in nodes)
        with server.client() as client:
            eventually(lambda: sorted(n["metadata"]["name"] for n in client.list("Node", "")[0]
                                      if n.get("status", {}).get("state") == "ready") == wanted,
                       30, f"nodes {', '.join(wanted)} ready")
        yield server, agents
    finally:
        for agent in agents:
            agent.cleanup()
        server.stop()


def eventually(check: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    end = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def dump_endpoints(dump: dict[str, Any], cluster: str) -> set[tuple[str, int]]:
    """The (address, port) endpoints of ``cluster`` in an Envoy
    ``/config_dump?include_eds`` (``Client.proxy_config``): what that Envoy
    balances over."""
    found: set[tuple[str, int]] = set()
    for section in dump.get("configs", []):
        for config in section.get("dynamic_endpoint_configs", []):
            assignment = config.get("endpoint_config", {})
            if assignment.get("cluster_name") != cluster:
                continue
            for locality in assignment.get("endpoints", []):
                for lb in locality.get("lb_endpoints", []):
                    where = lb["endpoint"]["address"]["socket_address"]
                    found.add((where["address"], int(where["port_value"])))
    return found
