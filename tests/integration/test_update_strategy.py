"""A Service's ``update``: rolling updates bounded by ``maxSurge`` and
``maxUnavailable``, and ``recreate``, with a real server, a real agent and real
processes. The instances are read through the API every 50 ms while the
rollout runs.

An instance counts while it is not draining: a draining one has left every
client's EDS and is being stopped, and the bounds leave it out (README,
``update``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controlplane.client import Client
from tests.harness import ServerProcess, eventually, running_cluster
from tests.integration.test_scheduling import deploy, instances, web

REPLICAS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_cluster(tmp_path_factory.mktemp("update"), ("n2", "127.0.0.2")) as (server, _):
        yield server


@dataclass
class Seen:
    """What the API showed, poll after poll, while a Service rolled."""

    #: The most instances at once.
    most: int = 0
    #: The fewest healthy instances at once.
    fewest_healthy: int = REPLICAS
    #: An old instance was there next to a new one.
    mixed: bool = False


def roll(client: Client, name: str, update: dict[str, Any]) -> Seen:
    """Deploy ``name`` (healthy), change its template with ``update``, and
    watch until every instance is a healthy new one; then delete it."""
    old = deploy(client, name, REPLICAS)
    client.apply([(web(name, REPLICAS, env={"VERSION": "2"}, update=update), f"{name} v2")])
    seen = Seen()

    def rolled() -> bool:
        found = [i for i in instances(client, name) if not i["spec"].get("draining")]
        names = {i["metadata"]["name"] for i in found}
        healthy = sum(i.get("status", {}).get("state") == "healthy" for i in found)
        seen.most = max(seen.most, len(found))
        seen.fewest_healthy = min(seen.fewest_healthy, healthy)
        seen.mixed = seen.mixed or bool(names & old and names - old)
        return len(found) == healthy == REPLICAS and not names & old

    try:
        eventually(rolled, 60, f"every {name} instance replaced by a healthy new one",
                   interval=0.05)
    finally:
        client.delete([("Service", "default", name)])
        eventually(lambda: not instances(client, name), 30, f"{name}'s instances to go")
    return seen


def test_max_surge_0_max_unavailable_1_never_exceeds_replicas(cluster: ServerProcess) -> None:
    with cluster.client() as client:
        seen = roll(client, "tight", {"maxSurge": 0, "maxUnavailable": 1})
    assert seen.most == REPLICAS, f"{seen.most} instances at once for {REPLICAS} replicas"
    # An old instance went before its replacement was ready (the default never allows that).
    assert seen.fewest_healthy == REPLICAS - 1


def test_max_surge_2_runs_up_to_two_more_than_replicas(cluster: ServerProcess) -> None:
    with cluster.client() as client:
        seen = roll(client, "surging", {"maxSurge": 2, "maxUnavailable": 0})
    assert seen.most == REPLICAS + 2, f"at most {seen.most} instances at once"
    assert seen.fewest_healthy == REPLICAS


def test_recreate_removes_every_old_instance_before_a_new_one(cluster: ServerProcess) -> None:
    with cluster.client() as client:
        seen = roll(client, "recreated", {"strategy": "recreate"})
    assert not seen.mixed, "an old instance served next to a new one"
    assert seen.fewest_healthy == 0 and seen.most == REPLICAS
