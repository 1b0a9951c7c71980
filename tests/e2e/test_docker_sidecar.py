"""Sidecar pods on Docker: a real server, a real agent with the docker driver
on the docker bridge's gateway address, real Envoys configured only by the
control plane's delta ADS (through the agent's unix-socket relay), and the
example HTTP app.

A ``backend`` Service of three replicas and a ``client`` Service that
declares it as an upstream: from inside the client's app container,
``http://backend:9090/`` reaches every backend instance (the pod's hosts file
names a loopback VIP where the client's Envoy listens); a killed Envoy is
started again by the agent and traffic flows again; deleting the Services
removes every container of their pods.

The driver is also checked on its own: an Envoy that gets no config fails the
start with its own words and leaves no container behind; a pod's wiring
(VIPs, hosts entries, upstream variables) is a table. The relay is checked
with many concurrent connections.

Each test's node has a name of its own (``e2e-<hex>-mesh``); teardown stops
the agent first (it creates containers), then force-removes every container
labelled with the node.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from sidecar.drivers.base import DriverError, Sidecar
from sidecar.drivers.docker import (
    LABEL_NODE,
    LABEL_ROLE,
    LABEL_SERVICE,
    DockerDriver,
    Summaries,
    pod_mesh,
)
from sidecar.drivers.docker import bridge_gateway as docker_bridge_gateway
from sidecar.relay import Relay
from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    HTTP_IMAGE,
    flotilla_images,
    http_workload,
    new_id,
    remove_node_containers,
)
from tests.harness import AgentProcess, ServerProcess, eventually, free_port
from tests.integration.test_scheduling import healthy, ready_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BACKENDS = 3
BACKEND_PORT = 9090
#: Four pods, each Envoy first: the machine may be slow.
READY_SECONDS = 120.0
#: Until every backend answered the client once more.
TRAFFIC_SECONDS = 60.0
#: Requests one `docker exec` sends: round robin over three endpoints meets
#: each of them many times.
REQUESTS = 12

#: Runs in the client's app container: REQUESTS GETs of the URL in argv[1],
#: one line each: the answering instance, or "error: ...".
CALLER = """
import json, sys, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
            print(json.load(reply)["instance"])
    except Exception as error:
        print("error:", error)
"""


def service(name: str, port: int, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
        "spec": {
            "image": HTTP_IMAGE, "port": port, "replicas": replicas,
            "resources": {"cpu": 100, "memory": 64},
            "healthCheck": {"http": {"path": "/healthz"}, "interval": "500ms",
                            "failureThreshold": 3},
            **spec,
        },
    }  # fmt: skip


def bridge_gateway(client: docker.DockerClient) -> str:
    """The docker bridge's address (the product's own helper): the host and
    every container reach it."""
    found = docker_bridge_gateway(client)
    assert found is not None, "the Docker Engine has no IPv4 bridge (docker0)"
    return found


@dataclass
class Mesh:
    server: ServerProcess
    agent: AgentProcess
    node: str
    docker: docker.DockerClient

    def containers(self, **labels: str) -> Summaries:
        """Summaries of the node's containers (any state) with *labels*."""
        wanted = [f"{LABEL_NODE}={self.node}", *(f"{k}={v}" for k, v in labels.items())]
        found: Summaries = self.docker.api.containers(all=True, filters={"label": wanted})
        return found

    def container(self, instance: str, role: str) -> Any:
        return self.docker.containers.get(f"flotilla-{instance}-{role}")

    def why(self) -> str:
        """The agent's last lines, for a failure message."""
        return "agent log:\n" + "\n".join(self.agent.log().splitlines()[-30:])


@pytest.fixture
def mesh(tmp_path: Path, docker_client: docker.DockerClient,
         flotilla_images: None) -> Iterator[Mesh]:  # noqa: F811 - the imported fixture
    node = f"e2e-{uuid.uuid4().hex[:8]}-mesh"
    address = bridge_gateway(docker_client)
    server = ServerProcess(tmp_path / "server").start()
    agent = AgentProcess(server, node, address, tmp_path / "agent", drivers=("docker",))
    found = Mesh(server, agent, node, docker_client)
    try:
        agent.start()
        with server.client() as client:
            eventually(lambda: ready_nodes(client) == [node], 30, "the docker node to be ready")
        yield found
    finally:
        agent.kill(signal.SIGTERM)  # the agent leaves its containers running...
        remove_node_containers(docker_client, node)  # ...so they go here
        server.stop()
    assert found.containers() == [], "containers of this test's node survived teardown"


def answering(mesh: Mesh, client_instance: str) -> set[str]:
    """The backend instances that answered REQUESTS calls from inside the
    client's app container, by name through its sidecar."""
    app = mesh.container(client_instance, "app")
    result = app.exec_run(["python3", "-c", CALLER, f"http://backend:{BACKEND_PORT}/",
                           str(REQUESTS)])
    lines = result.output.decode(errors="replace").split()
    return {line for line in lines if not line.startswith("error:")}


def every_backend_answers(mesh: Mesh, client_instance: str, backends: set[str]) -> None:
    seen: set[str] = set()

    def all_seen() -> bool:
        seen.update(answering(mesh, client_instance))
        return seen >= backends

    try:
        eventually(all_seen, TRAFFIC_SECONDS, "every backend to answer the client",
                   interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}; answered: {sorted(seen)} of {sorted(backends)}; "
                             f"{mesh.why()}") from None


def names(found: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["name"] for i in found}


def test_client_reaches_every_backend_by_name_through_its_sidecar(mesh: Mesh) -> None:
    with mesh.server.client() as client:
        client.apply([
            (service("backend", BACKEND_PORT, BACKENDS), "backend"),
            (service("client", 8080, 1, upstreams=[{"name": "backend"}]), "client"),
        ])
        try:
            backends = names(eventually(lambda: healthy(client, "backend", BACKENDS),
                                        READY_SECONDS, f"{BACKENDS} healthy backends"))
            (caller,) = names(eventually(lambda: healthy(client, "client", 1),
                                         READY_SECONDS, "a healthy client"))
        except AssertionError as error:
            raise AssertionError(f"{error}; {mesh.why()}") from None

        # Each pod: pause + envoy + app, running, labelled with its role.
        for instance in backends | {caller}:
            for role in ("pause", "envoy", "app"):
                container = mesh.container(instance, role)
                assert container.status == "running", f"{container.name} is {container.status}"
                assert container.labels[LABEL_ROLE] == role
        # The endpoint is Envoy's inbound port, published on the node's address.
        for instance in client.list("Instance", "default")[0]:
            pause = mesh.container(instance["metadata"]["name"], "pause")
            published = pause.attrs["NetworkSettings"]["Ports"]["15001/tcp"][0]
            assert instance["status"]["address"] == mesh.agent.address
            assert int(instance["status"]["port"]) == int(published["HostPort"])

        every_backend_answers(mesh, caller, backends)

        # Kill the client's Envoy and one backend's: the agent starts them again.
        victims = [mesh.container(caller, "envoy"),
                   mesh.container(sorted(backends)[0], "envoy")]
        started = {v.id: v.attrs["State"]["StartedAt"] for v in victims}
        for victim in victims:
            victim.kill()

        def restarted() -> bool:
            for victim in victims:
                victim.reload()
                if victim.status != "running" or \
                        victim.attrs["State"]["StartedAt"] == started[victim.id]:
                    return False
            return True

        eventually(restarted, 30, "the killed Envoys to run again", interval=0.2)
        every_backend_answers(mesh, caller, backends)
        assert names(healthy(client, "backend", BACKENDS) or []) == backends, \
            "a backend instance was replaced: only its Envoy should have restarted"

        client.delete([("Service", "default", "backend"), ("Service", "default", "client")])
        eventually(lambda: not mesh.containers(**{LABEL_SERVICE: "backend"})
                   and not mesh.containers(**{LABEL_SERVICE: "client"}),
                   60, "every container of the deleted services to be removed", interval=0.5)


def test_an_envoy_without_config_fails_the_start_and_leaves_nothing(
        docker_client: docker.DockerClient, flotilla_images: None,  # noqa: F811
        tmp_path: Path) -> None:
    node = new_id("e2e-node")
    driver = DockerDriver(docker_client, node, "127.0.0.1", data_dir=tmp_path)
    # Nothing listens there: Envoy never gets its first config.
    sidecar = Sidecar(envoy="", xds=f"127.0.0.1:{free_port()}", node=node, ready_timeout=3)
    workload = http_workload(new_id("web"), sidecar=sidecar)
    try:
        with pytest.raises(DriverError, match="got no config from the control plane") as caught:
            driver.start(workload)
        assert "Connection refused" in str(caught.value), "the relay's failure is named"
        assert "Envoy said: [" in str(caught.value), "Envoy's own words are quoted"
        assert docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_NODE}={node}"}) == []
        assert driver.inspect(workload.instance_id) is None
    finally:
        driver.close()
        remove_node_containers(docker_client, node)
    assert not (tmp_path / "xds" / "xds.sock").exists(), "close() removes the relay's socket"


def test_relay_serves_many_connections_at_once_and_closes_them(tmp_path: Path) -> None:
    """Every connection's bytes arrive whole in both directions, half-closes
    pass through, and ``close()`` ends the connections still open."""
    echo = socket.create_server(("127.0.0.1", 0), backlog=256)
    port = echo.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    relay = Relay(tmp_path / "xds.sock", f"127.0.0.1:{port}")
    relay.start()
    failures: list[str] = []

    def call(number: int) -> None:
        payload = os.urandom(100_000 + number)
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(30)
            conn.connect(str(relay.path))
            sender = threading.Thread(target=lambda: (conn.sendall(payload),
                                                      conn.shutdown(socket.SHUT_WR)))
            sender.start()
            received = b""
            while data := conn.recv(65536):
                received += data
            sender.join()
        if received != payload:
            failures.append(f"connection {number}: {len(received)} of {len(payload)} bytes")

    try:
        callers = [threading.Thread(target=call, args=(n,)) for n in range(100)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
        assert failures == []
        eventually(lambda: relay.connections == 0, 5, "finished connections to be closed")

        held = []
        for _ in range(10):
            conn = socket.socket(socket.AF_UNIX)
            conn.settimeout(5)
            conn.connect(str(relay.path))
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            held.append(conn)
        assert relay.connections == 10
        relay.close()
        for conn in held:
            assert conn.recv(1) == b"", "close() ends open connections"
            conn.close()
        assert not relay.path.exists()
        eventually(lambda: relay.connections == 0, 5, "closed connections to be let go")
    finally:
        relay.close()
        echo.close()



@pytest.mark.parametrize(("upstreams", "hosts", "env", "bound"), [
    pytest.param(
        (("shop", "backend", None), ("shop", "cache", 6379)),
        {"backend": "127.1.0.1", "backend.shop": "127.1.0.1",
         "cache": "127.1.0.2", "cache.shop": "127.1.0.2"},
        {"FLOTILLA_UPSTREAM_BACKEND": "127.1.0.1", "FLOTILLA_UPSTREAM_CACHE": "127.1.0.2:6379"},
        {"shop/backend": ("127.1.0.1", None), "shop/cache": ("127.1.0.2", 6379)},
        id="in-order-vips-port-only-when-overridden"),
    pytest.param(
        (("other", "db", None), ("shop", "db", None)),
        {"db": "127.1.0.2", "db.shop": "127.1.0.2", "db.other": "127.1.0.1"},
        {"FLOTILLA_UPSTREAM_DB_OTHER": "127.1.0.1", "FLOTILLA_UPSTREAM_DB": "127.1.0.2"},
        {"other/db": ("127.1.0.1", None), "shop/db": ("127.1.0.2", None)},
        id="bare-name-goes-to-the-own-namespace"),
    pytest.param((), {}, {}, {}, id="no-upstreams"),
])
def test_pod_wiring(upstreams: tuple[tuple[str, str, int | None], ...], hosts: dict[str, str],
                    env: dict[str, str], bound: dict[str, tuple[str, int | None]]) -> None:
    sidecar = Sidecar(envoy="", xds="127.0.0.1:1", node="n1", upstreams=upstreams)
    mesh = pod_mesh(http_workload("web-1"), sidecar)
    assert (mesh.hosts, mesh.env, dict(mesh.proxy.upstreams)) == (hosts, env, bound)
    assert (mesh.proxy.inbound, mesh.proxy.app_port) == (("0.0.0.0", 15001), 8080)


@pytest.mark.parametrize(("port", "upstream_port", "message"), [
    (15001, None, "spec.port 15001 is taken in a docker pod by its Envoy's inbound listener"),
    (15000, None, "spec.port 15000 is taken in a docker pod by its Envoy's admin"),
    (8080, 8080, "spec.upstreams shop/backend port 8080 is taken in a docker pod by the app"),
    (8080, 15000, "spec.upstreams shop/backend port 15000 is taken in a docker pod by its "),
], ids=["app-on-inbound", "app-on-admin", "upstream-on-app", "upstream-on-admin"])
def test_pod_ports_that_collide_are_refused(port: int, upstream_port: int | None,
                                            message: str) -> None:
    sidecar = Sidecar(envoy="", xds="127.0.0.1:1", node="n1",
                      upstreams=(("shop", "backend", upstream_port),))
    with pytest.raises(DriverError, match=re.escape(message)):
        pod_mesh(http_workload("web-1", port=port), sidecar)
