"""A Gateway's ``replicas`` and ``placement``, with a real server, two real
agents (n2 on 127.0.0.2, n3 on 127.0.0.3, process driver) and real Envoys.

The backend ``web`` runs on n3 (zone b), so left to itself (spread) a gateway
goes to the emptier n2 and under binpack to the fuller n3: each placement
field below moves it away from where it would go without that field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import Client
from tests.harness import AgentProcess, ServerProcess, eventually, free_port
from tests.integration.test_scheduling import deploy, instances, ready_nodes, web
from tests.mesh_scenarios import DIRECT, serving

NODES = [("n2", "127.0.0.2", ("zone=a", "rack=r1")), ("n3", "127.0.0.3", ("zone=b",))]
ADDRESSES = {name: address for name, address, _ in NODES}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """The server, and the name of the backend instance (on n3)."""
    tmp: Path = tmp_path_factory.mktemp("gateways")
    server = ServerProcess(tmp / "server").start()
    agents: list[AgentProcess] = []
    try:
        agents += [AgentProcess(server, name, address, tmp / name, labels=labels).start()
                   for name, address, labels in NODES]
        with server.client() as client:
            eventually(lambda: len(ready_nodes(client)) == 2, 30, "two ready nodes")
            (backend,) = deploy(client, "web", 1,
                                placement={"constraints": [{"key": "zone", "value": "b"}]})
        yield server, backend
    finally:
        for agent in agents:
            agent.cleanup()
        server.stop()


def gateway(name: str, port: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Gateway", "metadata": {"name": name},
            "spec": {"listeners": [{"name": "web", "port": port,
                                    "routes": [{"service": "web"}]}], **spec}}


def answer(node: str, port: int) -> str | None:
    """What the gateway on ``node`` answers on ``port`` (the backend's
    instance name), or None while it does not."""
    try:
        with DIRECT.open(f"http://{ADDRESSES[node]}:{port}/", timeout=2) as reply:
            return str(reply.read().decode().strip())
    except OSError:
        return None


def remove(client: Client, name: str) -> None:
    client.delete([("Gateway", "default", name)])
    eventually(lambda: not instances(client, name), 30, f"{name}'s instances to go")


def test_two_replicas_run_one_per_node_and_both_answer(cluster: tuple[ServerProcess, str]
                                                       ) -> None:
    server, backend = cluster
    port = free_port()
    with server.client() as client:
        client.apply([(gateway("edge", port, replicas=2), "edge")])
        try:
            running = eventually(lambda: serving(client, "edge", 2), 60, "two gateway replicas")
            assert sorted(i["spec"]["node"] for i in running) == ["n2", "n3"]
            for node in ("n2", "n3"):
                assert eventually(lambda: answer(node, port), 30,
                                  f"an answer from the gateway on {node}") == backend
            # Their ports are taken on both nodes: a third replica has nowhere to go.
            client.apply([(gateway("edge", port, replicas=3), "edge")])

            def waiting() -> str | None:
                found = [i for i in instances(client, "edge") if not i["spec"]["node"]]
                return found[0].get("status", {}).get("reason") if found else None

            reason = eventually(waiting, 15, "the third replica's reason")
            assert reason == f"0/2 nodes fit: 2 host port {port} in use"
            assert sorted(i["spec"]["node"] for i in instances(client, "edge")
                          if i["spec"]["node"]) == ["n2", "n3"]
        finally:
            remove(client, "edge")


@pytest.mark.parametrize(
    ("placement", "node"),
    [
        ({}, "n2"),
        ({"strategy": "binpack"}, "n3"),
        ({"constraints": [{"key": "zone", "value": "b"}]}, "n3"),
        ({"constraints": [{"key": "zone", "operator": "in", "values": ["b", "c"]}]}, "n3"),
        ({"affinity": ["web"]}, "n3"),
        ({"strategy": "binpack", "antiAffinity": ["web"]}, "n2"),
        ({"preferredAffinity": ["web"]}, "n3"),
        ({"strategy": "binpack", "preferredAntiAffinity": ["web"]}, "n2"),
        ({"strategy": "binpack", "spreadBy": ["rack"]}, "n2"),
    ],
    ids=["spread-by-default", "binpack", "constraint-equals", "constraint-in", "affinity",
         "anti-affinity-under-binpack", "preferred-affinity",
         "preferred-anti-affinity-under-binpack", "spread-by-a-label-under-binpack"],
)
def test_placement_decides_where_a_gateway_runs(cluster: tuple[ServerProcess, str],
                                                placement: dict[str, Any], node: str) -> None:
    server, _ = cluster
    with server.client() as client:
        client.apply([(gateway("placed", free_port(), placement=placement), "placed")])
        try:
            (placed,) = eventually(
                lambda: [i for i in instances(client, "placed") if i["spec"]["node"]], 30,
                "the gateway placed")
        finally:
            remove(client, "placed")
    assert placed["spec"]["node"] == node
