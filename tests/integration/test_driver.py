"""A Service's ``driver``, with a real server and a real agent that offers the
process driver only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, eventually, run_cli, running_cluster
from tests.integration.test_scheduling import healthy, instances, web


@pytest.fixture
def process_only(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_cluster(tmp_path, ("n2", "127.0.0.2"), drivers=("process",)) as (server, _):
        yield server


def test_a_declared_driver_no_node_offers_keeps_the_instance_pending(
    process_only: ServerProcess
) -> None:
    with process_only.client() as client:
        # The same command runs where the driver is left to the node...
        client.apply([(web("either", 1), "either")])
        (ran,) = eventually(lambda: healthy(client, "either", 1), 30, "a healthy instance")
        assert ran["spec"]["driver"] == "process"
        # ...and waits, with the reason, where it must be docker.
        client.apply([(web("docker-only", 1, driver="docker"), "docker-only")])

        def explained() -> str | None:
            found = instances(client, "docker-only")
            reason = found[0].get("status", {}).get("reason", "") if found else ""
            return reason if "nodes fit" in reason else None

        assert eventually(explained, 15, "an explanation") == "0/1 nodes fit: 1 no driver docker"
        (waiting,) = instances(client, "docker-only")
        assert not waiting["spec"]["node"] and waiting["status"]["state"] == "pending"
    eventually(lambda: "no driver docker" in run_cli(
        "describe", "service", "docker-only", server=process_only).stdout, 15,
        "the Service's status to explain")
