"""The mesh scenarios (tests/mesh_scenarios.py) with the docker driver: pods of
pause + Envoy + app on a real Docker Engine, two agents advertising the docker
bridge's gateway (which the host and every container reach), the ingress
gateway's Envoy run by an agent as a process on that address."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    GRPC_IMAGE,
    HTTP_IMAGE,
    flotilla_images,
    remove_node_containers,
)
from tests.e2e.test_docker_sidecar import bridge_gateway
from tests.harness import AgentProcess, ServerProcess, eventually, free_port
from tests.mesh_scenarios import *  # noqa: F403 - the scenarios run here
from tests.mesh_scenarios import Mesh, _answers, manifests, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

READY_SECONDS = 180.0


def docker_workload(module: str) -> dict[str, Any]:
    image = HTTP_IMAGE if module == "http_echo" else GRPC_IMAGE
    return {"image": image, "driver": "docker",
            "command": ["python3", "-m", f"flotilla_examples.{module}"]}


def kill_envoy(client: docker.DockerClient) -> Callable[[dict[str, Any]], object]:
    def kill(instance: dict[str, Any]) -> object:
        container = client.containers.get(f"flotilla-{instance['metadata']['name']}-envoy")
        started = container.attrs["State"]["StartedAt"]
        container.kill()
        return (container.id, started)
    return kill


def envoy_restarted(client: docker.DockerClient
                    ) -> Callable[[dict[str, Any], object], bool]:
    def restarted(instance: dict[str, Any], old: object) -> bool:
        try:
            container = client.containers.get(f"flotilla-{instance['metadata']['name']}-envoy")
        except docker.errors.NotFound:
            return False
        state = container.attrs["State"]
        return bool(state["Running"]) and (container.id, state["StartedAt"]) != old
    return restarted


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
         flotilla_images: None) -> Iterator[Mesh]:  # noqa: F811 - the imported fixture
    tmp = tmp_path_factory.mktemp("docker-mesh")
    address = bridge_gateway(docker_client)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    port = free_port(address)
    server = ServerProcess(tmp / "server", extra_args=("--node-grace", "5")).start()
    agents: list[AgentProcess] = []
    try:
        agents += [AgentProcess(server, f"{prefix}-n{i}", address, tmp / f"n{i}",
                                drivers=("docker", "process")).start() for i in (1, 2)]
        with server.client() as client:
            eventually(lambda: len(client.list("Node", "")[0]) == 2, 30, "two nodes")
            client.apply([(doc, "mesh") for doc in manifests(port, docker_workload)])
            eventually(lambda: serving(client, "backend", 3), READY_SECONDS, "3 backends")
            eventually(lambda: serving(client, "frontend", 1), READY_SECONDS, "a frontend")
            eventually(lambda: serving(client, "static", 1), READY_SECONDS, "static")
            eventually(lambda: serving(client, "ingress", 1), READY_SECONDS, "the gateway")
        mesh = Mesh(server, agents, f"{address}:{port}", tmp,
                    kill_envoy=kill_envoy(docker_client),
                    envoy_restarted=envoy_restarted(docker_client))
        eventually(lambda: _answers(mesh), 60, "a first answer through the ingress")
        yield mesh
    finally:
        for agent in agents:
            agent.cleanup()  # the gateway's Envoy runs as a process
            remove_node_containers(docker_client, agent.name)
        server.stop()
