"""Registry sync into a real Consul: a dev ``consul agent`` (tests/consul.py),
a real server with ``--catalog consul://...``, three agents on 127.0.0.2-4
running the web app with the process driver and real Envoy sidecars.

Consul's health API must list exactly the instances EDS publishes (their
sidecars' addresses and ports, on Flotilla's catalog nodes), follow scaling,
and repair what changes behind Flotilla's back within 10 s — also a Consul
that restarts empty. The adapter's transactions are checked against the same
Consul.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.catalog.consul import ConsulCatalog
from controlplane.catalog.registrations import (
    MANAGED,
    CatalogEntry,
    catalog_node,
    catalog_nodes,
    shard_node,
)
from controlplane.client import Client
from tests.consul import ConsulAgent
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli
from tests.integration.test_scheduling import web
from tests.mesh_scenarios import serving

NODES = [("n2", "127.0.0.2"), ("n3", "127.0.0.3"), ("n4", "127.0.0.4")]
SERVICE = "shop-web"
#: What the issue promises for repairs (anti-entropy runs every 2 s).
REPAIR_SECONDS = 10.0
#: How long the tests wait at most: generous, for slow machines; the repair
#: bound is asserted on the measured time.
PATIENCE = 60.0
#: What the names of the catalog nodes Flotilla's entries live on start with
#: (the server's default trust domain), and those nodes.
NODE = catalog_node("flotilla.local")
NODES_OF_FLOTILLA = catalog_nodes(NODE)

Endpoints = set[tuple[str, int]]


@dataclass
class Cluster:
    consul: ConsulAgent
    server: ServerProcess
    agents: list[AgentProcess]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("catalog")
    consul = ConsulAgent(tmp / "consul")
    server: ServerProcess | None = None
    agents: list[AgentProcess] = []
    try:
        consul.start()
        server = ServerProcess(tmp / "server", extra_args=(
            "--node-grace", "5", "--catalog", consul.url)).start()
        agents = [AgentProcess(server, name, address, tmp / name).start()
                  for name, address in NODES]
        with server.client() as client:
            eventually(lambda: len(client.list("Node", "")[0]) == 3, 30, "three nodes")
        yield Cluster(consul, server, agents)
    finally:
        for agent in agents:
            agent.cleanup()
        if server is not None:
            server.stop()
        consul.stop()


def deploy(client: Client, replicas: int) -> Endpoints:
    """Apply the service with ``replicas`` and wait until that many serve;
    returns the endpoints EDS publishes (each sidecar's address and port)."""
    client.apply([(web(SERVICE, replicas), SERVICE)])
    found = eventually(lambda: serving(client, SERVICE, replicas), PATIENCE,
                       f"{replicas} serving {SERVICE} instances")
    return {(i["status"]["address"], int(i["status"]["port"])) for i in found}


def passing(consul: ConsulAgent) -> list[dict[str, Any]]:
    """The service's entries Consul's health API lists as passing (with the
    name of the node each is on added as ``Node``)."""
    entries: list[dict[str, Any]] = consul.get(
        f"/v1/health/service/{urllib.parse.quote(SERVICE)}?passing")
    return [{**e["Service"], "Node": e["Node"]["Node"]} for e in entries]


def listed(consul: ConsulAgent) -> Endpoints:
    return {(s["Address"], int(s["Port"])) for s in passing(consul)}


def settles(consul: ConsulAgent, expected: Endpoints) -> Callable[[], bool]:
    """Consul lists exactly ``expected`` as passing (each once)."""
    def check() -> bool:
        found = passing(consul)
        return len(found) == len(expected) and listed(consul) == expected
    return check


def timed(check: Callable[[], bool], what: str) -> float:
    """Seconds until ``check`` holds (fails after PATIENCE)."""
    start = time.monotonic()
    eventually(check, PATIENCE, what, interval=0.05)
    elapsed = time.monotonic() - start
    print(f"{what}: {elapsed:.2f} s")
    return elapsed


def test_three_replicas_are_listed_passing_at_their_sidecars(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        published = deploy(client, 3)
        timed(settles(cluster.consul, published), "3 passing in Consul")
        instances = {i["metadata"]["name"]: i for i in serving(client, SERVICE, 3) or ()}
    for entry in passing(cluster.consul):
        name = entry["Meta"]["flotilla-instance"]
        instance = instances[name]
        assert entry["ID"] == f"flotilla-default-{name}"
        assert (entry["Address"], entry["Port"]) == (instance["status"]["address"],
                                                     instance["status"]["port"])
        assert entry["Meta"] == {
            "flotilla-namespace": "default", "flotilla-instance": name,
            "flotilla-node": instance["spec"]["node"],
            "flotilla-version": str(instance["spec"]["revision"]), "flotilla-managed": "true",
        }
        assert set(entry["Tags"]) == {"flotilla", "default"}
    for entry in passing(cluster.consul):
        assert entry["Node"] == shard_node(NODE, entry["ID"])  # Flotilla's own nodes
        on_node = cluster.consul.get(f"/v1/health/node/{entry['Node']}")
        check = {c["CheckID"]: c for c in on_node}[f"service:{entry['ID']}"]
        assert (check["ServiceID"], check["Status"]) == (entry["ID"], "passing")
        node = cluster.consul.get(f"/v1/catalog/node/{entry['Node']}")["Node"]
        assert node["Meta"]["external-node"] == "true" and node["Meta"][MANAGED] == "true"
    assert {s["Meta"]["flotilla-node"] for s in passing(cluster.consul)} <= {"n2", "n3", "n4"}


def test_scaling_to_one_leaves_exactly_one(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        deploy(client, 3)
        published = deploy(client, 1)
    timed(settles(cluster.consul, published), "exactly 1 passing in Consul")


def test_a_planted_entry_and_a_deleted_one_are_repaired_within_10s(cluster: Cluster) -> None:
    consul = cluster.consul
    with cluster.server.client() as client:
        published = deploy(client, 2)
    eventually(settles(consul, published), PATIENCE, "2 passing in Consul")
    victim = passing(consul)[0]
    ghost = "flotilla-default-shop-web-ghost"
    consul.put("/v1/catalog/register", {  # on one of Flotilla's nodes, as an outsider would
        "Node": NODES_OF_FLOTILLA[3], "Address": "127.0.0.1",
        "Service": {"ID": ghost, "Service": SERVICE, "Address": "127.0.0.9", "Port": 1,
                    "Tags": ["flotilla", "default"],
                    "Meta": {"flotilla-managed": "true", "flotilla-namespace": "default",
                             "flotilla-instance": "shop-web-ghost"}},
    })
    consul.put("/v1/catalog/deregister", {"Node": victim["Node"], "ServiceID": victim["ID"]})
    assert ("127.0.0.9", 1) in listed(consul) and len(listed(consul) & published) == 1

    elapsed = timed(settles(consul, published), "planted and deleted entries repaired")
    assert elapsed < REPAIR_SECONDS
    assert ghost not in consul.get(f"/v1/catalog/node/{NODES_OF_FLOTILLA[3]}")["Services"]


def test_others_entries_are_left_alone(cluster: Cluster) -> None:
    consul = cluster.consul
    consul.put("/v1/agent/service/register", {
        "ID": "outsider-1", "Name": "outsider", "Address": "127.0.0.9", "Port": 2,
        "Meta": {"owner": "someone else"},
    })
    with cluster.server.client() as client:
        published = deploy(client, 1)
    eventually(settles(consul, published), PATIENCE, "1 passing in Consul")
    consul.put("/v1/catalog/register", {  # even on Flotilla's nodes, without its meta
        "Node": NODES_OF_FLOTILLA[0], "Address": "127.0.0.1",
        "Service": {"ID": "outsider-2", "Service": "outsider", "Address": "127.0.0.9",
                    "Port": 3},
    })
    time.sleep(3)  # more than one anti-entropy period
    assert "outsider-1" in consul.get("/v1/agent/services")
    assert "outsider-2" in consul.get(f"/v1/catalog/node/{NODES_OF_FLOTILLA[0]}")["Services"]


def test_a_restarted_empty_consul_gets_every_live_instance_back_within_10s(
        cluster: Cluster) -> None:
    consul = cluster.consul
    with cluster.server.client() as client:
        published = deploy(client, 3)
    eventually(settles(consul, published), PATIENCE, "3 passing in Consul")
    old = consul.pid
    consul.restart()
    assert consul.pid != old and not listed(consul)

    elapsed = timed(settles(consul, published), "all live instances back after a restart")
    assert elapsed < REPAIR_SECONDS


def test_consul_down_stops_nothing_and_changes_reach_it_when_back(cluster: Cluster) -> None:
    consul = cluster.consul
    consul.stop()
    with cluster.server.client() as client:
        published = deploy(client, 2)  # the control plane works on without Consul
    time.sleep(6)  # long enough for the registry's backoff to reach its cap
    consul.start()
    elapsed = timed(settles(consul, published), "changes made while Consul was down")
    assert elapsed < REPAIR_SECONDS
    assert cluster.server.proc is not None and cluster.server.proc.poll() is None
    assert f"cannot reach Consul at {consul.address}: connection refused" in cluster.server.log()


def test_checks_stay_passing_while_the_instance_serves(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        published = deploy(client, 1)
    eventually(settles(cluster.consul, published), PATIENCE, "1 passing in Consul")
    # Across several anti-entropy passes the entry never leaves the passing list.
    end = time.monotonic() + 7
    while time.monotonic() < end:
        assert listed(cluster.consul) == published
        time.sleep(0.25)


def test_the_adapter_writes_in_transactions_and_names_what_consul_refuses(
        cluster: Cluster) -> None:
    catalog = ConsulCatalog.from_url(cluster.consul.url, node="flotilla-adapter-test")
    assert catalog.services() == {} and catalog.checks() == {}
    entries = [CatalogEntry(f"flotilla-test-a-{i}", "adapter-test", "127.0.0.9", 20_000 + i,
                            ("flotilla",), {MANAGED: "true"}) for i in range(150)]
    bad = CatalogEntry("flotilla-test-bad", "adapter-test", "127.0.0.9", 1, ("flotilla",),
                       {MANAGED: "true", "consul-reserved": "x"})  # Consul's own meta prefix
    refused = catalog.write(entries[:70] + [bad] + entries[70:])  # 3 transactions, 16 nodes
    assert list(refused) == [bad.id]
    assert set(catalog.services()) == {e.id for e in entries}
    assert set(catalog.checks().values()) == {"passing"} and len(catalog.checks()) == 150
    assert catalog.write([], entries[:100]) == {}
    assert set(catalog.services()) == {e.id for e in entries[100:]}
    assert len(catalog.checks()) == 50  # a service's check leaves with it


def test_a_bad_catalog_url_stops_the_server_before_it_starts(tmp_path: Path) -> None:
    result = run_cli("server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                     "--catalog", "http://127.0.0.1:8500")
    assert result.returncode == 2
    assert "Invalid value for '--catalog'" in result.stderr
    assert "use consul://HOST:PORT" in result.stderr
    assert not (tmp_path / "data").exists()
