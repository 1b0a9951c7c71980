"""The mesh scenarios (tests/mesh_scenarios.py) with the process driver: real
Envoy sidecars, three agents on 127.0.0.2-4, a real server."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.drivers.process import start_ticks_of
from tests.harness import AgentProcess, ServerProcess, eventually, free_port
from tests.mesh_scenarios import *  # noqa: F403 - the scenarios run here
from tests.mesh_scenarios import Mesh, _answers, manifests, process_workload, serving

NODES = [("n2", "127.0.0.2"), ("n3", "127.0.0.3"), ("n4", "127.0.0.4")]


def _agent_of(agents: list[AgentProcess], instance: dict[str, Any]) -> AgentProcess:
    return next(a for a in agents if a.name == instance["spec"]["node"])


def kill_envoy(agents: list[AgentProcess]) -> Callable[[dict[str, Any]], object]:
    def kill(instance: dict[str, Any]) -> object:
        pid = _agent_of(agents, instance).envoy_pids()[instance["metadata"]["name"]]
        os.kill(pid, signal.SIGKILL)
        return pid
    return kill


def envoy_restarted(agents: list[AgentProcess]) -> Callable[[dict[str, Any], object], bool]:
    def restarted(instance: dict[str, Any], old: object) -> bool:
        new = _agent_of(agents, instance).envoy_pids().get(instance["metadata"]["name"])
        return bool(new) and new != old and start_ticks_of(new or 0) is not None
    return restarted


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    server = ServerProcess(tmp / "server", extra_args=("--node-grace", "5")).start()
    agents: list[AgentProcess] = []
    port = free_port()
    try:
        agents += [AgentProcess(server, name, address, tmp / name).start()
                   for name, address in NODES]
        with server.client() as client:
            eventually(lambda: len(client.list("Node", "")[0]) == 3, 30, "three nodes")
            client.apply([(doc, "mesh") for doc in manifests(port, process_workload)])
            eventually(lambda: serving(client, "backend", 3), 60, "3 serving backends")
            eventually(lambda: serving(client, "frontend", 1), 60, "a serving frontend")
            eventually(lambda: serving(client, "static", 1), 60, "a serving static")
            gateway = eventually(lambda: serving(client, "ingress", 1), 60, "the gateway")[0]
            node = client.get("Node", gateway["spec"]["node"], "cluster")
        mesh = Mesh(server, agents, f"{node['spec']['address']}:{port}", tmp,
                    kill_envoy=kill_envoy(agents), envoy_restarted=envoy_restarted(agents))
        eventually(lambda: _answers(mesh), 30, "a first answer through the ingress")
        yield mesh
    finally:
        for agent in agents:
            agent.cleanup()
        server.stop()


