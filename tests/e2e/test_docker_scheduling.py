"""Scheduling onto Docker: three real agents with the docker driver on
127.0.0.2-4, a real server, real containers of flotilla/example-http:dev, real
health checks. The same scenarios as tests/integration/test_scheduling.py,
where they make sense for containers.

Each test's nodes have names of their own (``e2e-<hex>-n2`` ...), so containers
left by another test or session can never be taken for this one's. Teardown
stops the agents first (they create containers), then force-removes every
container labelled with one of the test's nodes.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from controlplane.client import Client
from sidecar.drivers.docker import LABEL_INSTANCE, LABEL_NODE, LABEL_ROLE, LABEL_SERVICE, Summaries
from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    HTTP_IMAGE,
    flotilla_images,
    remove_node_containers,
)
from tests.harness import AgentProcess, ServerProcess, eventually
from tests.integration.test_scheduling import healthy, instances, ready_nodes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

GRACE = 3.0
REPLICAS = 6
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
#: Containers of a first start: the image is local, so this is mostly Python startup.
READY_SECONDS = 60.0
#: How long a scenario watches that nothing changes once it should have settled.
SETTLE_SECONDS = 4.0
#: Straight to the published port, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def web(replicas: int = REPLICAS) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {
            "image": HTTP_IMAGE, "port": 8080, "replicas": replicas,
            "resources": {"cpu": 100, "memory": 64},
            "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms",
                            "failureThreshold": 2},
        },
    }  # fmt: skip


@dataclass
class Cluster:
    """The test's server and agents; a test that restarts one replaces it here,
    so teardown stops the current ones."""

    server: ServerProcess
    agents: list[AgentProcess]
    nodes: tuple[str, ...]
    docker: docker.DockerClient

    def agent(self, node: str) -> AgentProcess:
        return next(a for a in self.agents if a.name == node)

    def restart_agent(self, node: str) -> AgentProcess:
        """A new agent process for *node*: same name, address and data dir."""
        old = self.agent(node)
        new = AgentProcess(self.server, old.name, old.address, old.data_dir,
                           labels=old.labels, drivers=old.drivers).start()
        self.agents[self.agents.index(old)] = new
        return new

    def containers(self, **labels: str) -> Summaries:
        """Summaries of every container (any state) of this test's nodes with
        *labels*. Summaries, not inspected containers: the agents may remove
        one between the listing and its inspection."""
        wanted = [f"{key}={value}" for key, value in labels.items()]
        found: Summaries = []
        for node in self.nodes:
            found += self.docker.api.containers(
                all=True, filters={"label": [f"{LABEL_NODE}={node}", *wanted]})
        return found

    def running_apps(self) -> Summaries:
        return [c for c in self.containers(**{LABEL_SERVICE: "web", LABEL_ROLE: "app"})
                if c["State"] == "running"]


@pytest.fixture
def cluster(tmp_path: Path, docker_client: docker.DockerClient,
            flotilla_images: None) -> Iterator[Cluster]:  # noqa: F811 - the imported fixture
    suffix = uuid.uuid4().hex[:8]
    nodes = tuple(f"e2e-{suffix}-n{address[-1]}" for address in ADDRESSES)
    # Scheduling, not the mesh: the tests call instances on their published
    # ports in plaintext, so sidecars do not require mesh certificates here.
    server = ServerProcess(tmp_path / "server",
                           extra_args=("--node-grace", str(GRACE), "--no-mtls"))
    found = Cluster(server.start(), [], nodes, docker_client)
    try:
        for name, address in zip(nodes, ADDRESSES, strict=True):
            found.agents.append(AgentProcess(found.server, name, address, tmp_path / name,
                                             drivers=("docker",)).start())
        with found.server.client() as client:
            eventually(lambda: sorted(ready_nodes(client)) == sorted(nodes), 30,
                       "three ready nodes")
        yield found
    finally:
        for agent in found.agents:
            agent.kill(signal.SIGTERM)  # the agent leaves its containers running...
        for node in nodes:
            remove_node_containers(docker_client, node)  # ...so they go here
        found.server.stop()
    assert found.containers() == [], "containers of this test's nodes survived teardown"


def six_healthy(client: Client) -> list[dict[str, Any]]:
    return eventually(lambda: healthy(client, "web", REPLICAS), READY_SECONDS,
                      f"{REPLICAS} healthy instances")


def get_healthz(address: str, port: int) -> tuple[int, bytes] | None:
    try:
        with DIRECT.open(f"http://{address}:{port}/healthz", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None


@dataclass(frozen=True)
class Pod:
    """What must not change about one instance's running app container."""

    instance: str
    node: str
    container_id: str
    started_at: str


def pods(cluster: Cluster) -> dict[str, Pod]:
    """instance -> its running app container; fails on two for one instance."""
    found: dict[str, Pod] = {}
    for app in cluster.running_apps():
        labels, instance = app["Labels"], app["Labels"][LABEL_INSTANCE]
        assert instance not in found, f"two running app containers for {instance}"
        try:
            started_at = cluster.docker.api.inspect_container(app["Id"])["State"]["StartedAt"]
        except docker.errors.NotFound:
            continue  # removed since the listing
        found[instance] = Pod(instance, labels[LABEL_NODE], app["Id"], started_at)
    return found


def never_exceeds_replicas(client: Client,
                           cluster: Cluster) -> tuple[list[dict[str, Any]], Summaries]:
    """Instances and running app containers now, asserting neither exceeds replicas."""
    found, running = instances(client, "web"), cluster.running_apps()
    assert len(found) <= REPLICAS, f"{len(found)} Instance objects for {REPLICAS} replicas"
    assert len(running) <= REPLICAS, f"{len(running)} running app containers for {REPLICAS}"
    return found, running


def restarts(found: list[dict[str, Any]]) -> dict[str, int]:
    """instance -> its restart count."""
    return {i["metadata"]["name"]: i.get("status", {}).get("restarts", 0) for i in found}


def stays_untouched(client: Client, cluster: Cluster, before: dict[str, Pod],
                    restarted: dict[str, int], seconds: float = SETTLE_SECONDS) -> None:
    """For *seconds*: the same app containers run, no container is added, and
    the same instances exist; at the end all of them are healthy and none has
    restarted (*restarted*: the instances and their restart counts before)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert pods(cluster) == before, "an app container was restarted, replaced or added"
        assert len(cluster.containers()) == 3 * REPLICAS, "a container was added or removed"
        assert {i["metadata"]["name"] for i in instances(client, "web")} == set(restarted)
        time.sleep(0.2)
    after = eventually(lambda: healthy(client, "web", REPLICAS), 10,
                       f"{REPLICAS} healthy instances")
    assert set(restarts(after)) == set(restarted), "instances were replaced"
    assert restarts(after) == restarted, (
        f"restart counts changed: before {restarted}, after {restarts(after)}")
    assert pods(cluster) == before


def test_six_replicas_land_two_per_node_and_answer_on_their_ports(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        client.apply([(web(), "web")])
        placed = six_healthy(client)

    assert Counter(i["spec"]["node"] for i in placed) == dict.fromkeys(cluster.nodes, 2)
    address_of = dict(zip(cluster.nodes, ADDRESSES, strict=True))
    for instance in placed:
        name, node = instance["metadata"]["name"], instance["spec"]["node"]
        status = instance["status"]
        common = {LABEL_NODE: node, LABEL_INSTANCE: name, LABEL_SERVICE: "web"}
        for role in ("app", "pause"):
            container = cluster.docker.containers.get(f"flotilla-{name}-{role}")
            assert container.status == "running", f"{container.name} is {container.status}"
            assert container.labels.items() >= {**common, LABEL_ROLE: role}.items()
        assert status["address"] == address_of[node]
        assert get_healthz(status["address"], int(status["port"])) == (200, b"ok")
    assert len(cluster.containers()) == 3 * REPLICAS


def test_killed_container_is_replaced_within_5s_never_exceeding_replicas(
    cluster: Cluster
) -> None:
    with cluster.server.client() as client:
        client.apply([(web(), "web")])
        six_healthy(client)
        before = pods(cluster)
        victim = next(iter(before.values()))

        cluster.docker.containers.get(victim.container_id).kill()
        killed_at = time.monotonic()

        def replaced() -> float | None:
            found, running = never_exceeds_replicas(client, cluster)
            ids = {c["Id"] for c in running}
            good = [i for i in found if i.get("status", {}).get("state") == "healthy"]
            done = (len(good) == REPLICAS and len(ids) == REPLICAS
                    and victim.container_id not in ids)
            return time.monotonic() - killed_at if done else None

        took = eventually(replaced, 20, "a healthy replacement", interval=0.05)
        assert took < 5.0, f"the replacement was healthy {took:.1f} s after the kill"
        after = pods(cluster)
        assert {k: v for k, v in after.items() if k != victim.instance} == {
            k: v for k, v in before.items() if k != victim.instance}, "other pods were touched"
        # Watch a little longer: nothing more is started.
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            never_exceeds_replicas(client, cluster)
            time.sleep(0.1)


def test_dead_node_instances_move_to_the_other_two(cluster: Cluster) -> None:
    dead = cluster.nodes[0]
    with cluster.server.client() as client:
        client.apply([(web(), "web")])
        six_healthy(client)
        cluster.agent(dead).kill()  # SIGKILL
        died_at = time.monotonic()
        remove_node_containers(cluster.docker, dead)

        def moved() -> list[dict[str, Any]] | None:
            found = healthy(client, "web", REPLICAS)
            return found if found and all(i["spec"]["node"] != dead for i in found) else None

        placed = eventually(moved, GRACE + 20, f"{REPLICAS} healthy instances elsewhere")
        took = time.monotonic() - died_at
        assert took < GRACE + 5, f"the instances were healthy elsewhere after {took:.1f} s"
        assert Counter(i["spec"]["node"] for i in placed) == dict.fromkeys(cluster.nodes[1:], 3)
        states = {n["metadata"]["name"]: n["status"]["state"] for n in client.list("Node")[0]}
        assert states[dead] == "down"
    assert {p.node for p in pods(cluster).values()} == set(cluster.nodes[1:])
    assert len(pods(cluster)) == REPLICAS


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_agent_adopts_its_containers(cluster: Cluster, sig: int) -> None:
    node = cluster.nodes[0]
    with cluster.server.client() as client:
        client.apply([(web(), "web")])
        restarted = restarts(six_healthy(client))
        before = pods(cluster)
        assert sum(p.node == node for p in before.values()) == 2

        cluster.agent(node).kill(sig)
        logged = len(cluster.agent(node).log())  # the new agent appends to the same log
        agent = cluster.restart_agent(node)
        eventually(lambda: "joined" in agent.log()[logged:], 15,
                   f"the new agent of {node} to join")
        stays_untouched(client, cluster, before, restarted)
        assert sorted(ready_nodes(client)) == sorted(cluster.nodes)


def test_server_restart_leaves_containers_untouched(cluster: Cluster) -> None:
    old = cluster.server
    with old.client() as client:
        client.apply([(web(), "web")])
        restarted = restarts(six_healthy(client))
    before = pods(cluster)

    old.kill(signal.SIGKILL)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # the agents notice, and keep their containers
        assert pods(cluster) == before
        time.sleep(0.2)
    cluster.server = ServerProcess(old.data_dir, port=old.port, agent_port=old.agent_port,
                                   extra_args=old.extra_args).start()

    with cluster.server.client() as client:
        eventually(lambda: sorted(ready_nodes(client)) == sorted(cluster.nodes), 30,
                   "the agents to rejoin")
        stays_untouched(client, cluster, before, restarted)
