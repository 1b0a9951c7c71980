"""Between stored objects and the scheduler (controlplane/controllers/placement.py):
the driver a workload needs, and the one each placement runs with."""

from __future__ import annotations

import random
from typing import Any

import pytest

from controlplane.controllers import placement
from controlplane.model import Resource
from controlplane.model.specs import Workload

IMAGE, COMMAND = {"image": "web:1"}, {"command": ["run"]}


@pytest.mark.parametrize(
    ("workload", "needed"),
    [
        (IMAGE, "docker"),
        (COMMAND, "process"),
        ({**IMAGE, **COMMAND}, None),
        ({**IMAGE, **COMMAND, "driver": "process"}, "process"),
        ({**COMMAND, "driver": "docker"}, "docker"),
        ({**IMAGE, "driver": "process"}, "process"),
    ],
    ids=["image-docker", "command-process", "both-either", "declared-process-wins",
         "declared-docker-with-a-command", "declared-process-with-an-image"],
)
def test_required_driver(workload: dict[str, Any], needed: str | None) -> None:
    assert placement.required_driver(Workload.model_validate(workload)) == needed


def node(drivers: list[str]) -> Resource:
    return Resource("Node", "n1", "cluster", spec={
        "address": "10.0.0.1", "capacity": {"cpu": 4000, "memory": 8192}, "drivers": drivers},
        status={"state": "ready"})


@pytest.mark.parametrize(
    ("workload", "offered", "runs_with"),
    [
        (COMMAND, ["process"], "process"),
        ({**COMMAND, "driver": "docker"}, ["process"], None),
        ({**IMAGE, **COMMAND}, ["docker", "process"], "docker"),
        ({**IMAGE, **COMMAND, "driver": "process"}, ["docker", "process"], "process"),
        ({**IMAGE, **COMMAND}, ["process"], "process"),
    ],
    ids=["command-on-process", "declared-docker-waits-for-a-docker-node",
         "both-prefer-docker", "declared-process-on-a-docker-node", "both-on-process"],
)
def test_the_driver_each_placement_runs_with(workload: dict[str, Any], offered: list[str],
                                             runs_with: str | None) -> None:
    pending = [Resource("Instance", "web-0", spec={
        "service": "web", "workload": workload, "placement": {}, "node": ""})]
    decided = placement.plan([node(offered)], pending, pending, random.Random(0))
    if runs_with is None:
        assert [f.explanation for f in decided.failures] == ["0/1 nodes fit: 1 no driver docker"]
        assert not decided.placements
    else:
        assert [(p.node, p.driver) for p in decided.placements] == [("n1", runs_with)]
