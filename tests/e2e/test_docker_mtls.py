"""Mutual TLS and intentions with the docker driver: pods get their
certificates over the agent's SDS socket (mounted into each Envoy container),
the ingress gateway originates mTLS, and intentions decide every hop."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    GRPC_IMAGE,
    HTTP_IMAGE,
    flotilla_images,
    remove_node_containers,
)
from tests.e2e.test_docker_sidecar import bridge_gateway
from tests.harness import AgentProcess, ServerProcess, eventually, free_port, run_cli
from tests.mesh_scenarios import DIRECT, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

READY_SECONDS = 180.0


def intention(name: str, source: str, destination: str) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Intention", "metadata": {"name": name},
            "spec": {"source": source, "destination": destination, "action": "allow"}}


def manifests(port: int) -> list[dict[str, Any]]:
    def app(image: str, module: str) -> dict[str, Any]:
        return {"image": image, "driver": "docker",
                "command": ["python3", "-m", f"flotilla_examples.{module}"]}

    return [
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "backend"},
         "spec": {**app(GRPC_IMAGE, "grpc_echo"), "port": 9090, "protocol": "grpc",
                  "replicas": 2, "healthCheck": {"grpc": {}, "interval": "500ms"}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "frontend"},
         "spec": {**app(HTTP_IMAGE, "http_echo"), "port": 8080,
                  "env": {"GRPC_UPSTREAM": "backend:9090"}, "upstreams": [{"name": "backend"}],
                  "healthCheck": {"http": {"path": "/healthz"}, "interval": "500ms"}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Gateway", "metadata": {"name": "ingress"},
         "spec": {"listeners": [{"name": "web", "port": port,
                                 "routes": [{"pathPrefix": "/", "service": "frontend"}]}]}},
        intention("ingress-to-frontend", "ingress", "frontend"),
        intention("frontend-to-backend", "frontend", "backend"),
    ]


@pytest.fixture(scope="module")
def ingress(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient,
            flotilla_images: None) -> Iterator[tuple[ServerProcess, str]]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("docker-mtls")
    address = bridge_gateway(docker_client)
    port = free_port(address)
    server = ServerProcess(tmp / "server", extra_args=(
        "--mtls", "--default-intention", "deny")).start()
    agent = AgentProcess(server, f"e2e-{uuid.uuid4().hex[:8]}-tls", address, tmp / "node",
                         drivers=("docker", "process"))
    try:
        agent.start()
        with server.client() as client:
            client.apply([(doc, "mtls") for doc in manifests(port)])
            for name, count in (("backend", 2), ("frontend", 1), ("ingress", 1)):
                eventually(lambda: serving(client, name, count), READY_SECONDS, name)
        yield server, f"{address}:{port}"
    finally:
        agent.cleanup()
        remove_node_containers(docker_client, agent.name)
        server.stop()


def call(gateway: str) -> tuple[int, dict[str, Any]]:
    try:
        with DIRECT.open(f"http://{gateway}/", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except OSError as error:
        body = getattr(error, "read", lambda: b"{}")()
        try:
            return int(getattr(error, "code", 0)), json.loads(body or b"{}")
        except ValueError:  # Envoy's own answer ("no healthy upstream"), not the app's
            return int(getattr(error, "code", 0)), {}


def test_every_hop_is_mutual_tls_and_intentions_decide(ingress: tuple[ServerProcess, str],
                                                        tmp_path: Path) -> None:
    server, gateway = ingress
    answers = eventually(lambda: (r := call(gateway))[0] == 200 and r[1], 60,
                         "an answer through ingress -> frontend -> backend")
    assert answers["upstream"]["answeredBy"].startswith("backend-")
    with server.client() as client:
        certs = [i["status"].get("certificate", {}) for i in client.list("Instance", "")[0]]
    assert len(certs) == 4 and all(c.get("served") == c.get("serial") for c in certs), certs

    removed = run_cli("delete", "intention", "frontend-to-backend", server=server)
    assert removed.returncode == 0, removed.stderr
    status, body = eventually(lambda: (r := call(gateway))[0] == 502 and r, 30,
                              "frontend's calls to backend denied")
    assert "PERMISSION_DENIED" in body["upstream"]["error"]
    (tmp_path / "again.yaml").write_text(json.dumps(manifests(0)[-1]))
    assert run_cli("apply", "-f", str(tmp_path / "again.yaml"), "--wait",
                   server=server).returncode == 0
    assert call(gateway)[0] == 200
