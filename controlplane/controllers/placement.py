"""Between stored objects and the scheduler: build the snapshot and the
requests from Node and Instance resources, run the scheduler, and name the
driver each placement runs with."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.model import Resource, node_state
from controlplane.model.cluster import (
    Capacity,
    ClusterSnapshot,
    Constraint,
    Node,
    NodeState,
    PlacedInstance,
    PlacementRequest,
    Plan,
    Strategy,
)
from controlplane.scheduler import check_plan, schedule



@dataclass(frozen=True)
class Placed:
    namespace: str
    instance: str
    node: str
    driver: str


@dataclass(frozen=True)
class Failed:
    namespace: str
    instance: str
    explanation: str


@dataclass(frozen=True)
class InstancePlan:
    placements: tuple[Placed, ...]
    failures: tuple[Failed, ...]
    #: The scheduler's own plan, for the applier's re-check.
    scheduled: Plan


def _id(instance: Resource) -> str:
    return f"{instance.namespace}/{instance.name}"


def _capacity(resources: Mapping[str, Any]) -> Capacity:
    return Capacity(int(resources.get("cpu", 100)), int(resources.get("memory", 128)))


def _node(node: Resource) -> Node:
    spec = node.spec
    return Node(
        name=node.name, address=str(spec.get("address", "")),
        capacity=_capacity(spec.get("capacity") or {}), labels=dict(spec.get("labels") or {}),
        drivers=frozenset(spec.get("drivers") or ()),
        state=node_state(node.spec, node.status),
    )


def required_driver(workload: Mapping[str, Any]) -> str | None:
    """The driver a workload needs: as declared, else docker for an image
    alone, process for a command alone, either when it has both."""
    declared = workload.get("driver")
    if declared:
        return str(declared)
    has_image, has_command = bool(workload.get("image")), bool(workload.get("command"))
    if has_image and not has_command:
        return "docker"
    if has_command and not has_image:
        return "process"
    return None


def _request(instance: Resource) -> PlacementRequest:
    """The scheduler's view of a pending instance; ``spec.placement`` is the
    Service's, as validated (an instance stored without a field gets the
    model's default)."""
    workload = instance.spec.get("workload") or {}
    placement = instance.spec.get("placement") or {}

    def names(field: str) -> tuple[str, ...]:
        return tuple(placement.get(field) or ())

    return PlacementRequest(
        instance_id=_id(instance), namespace=instance.namespace,
        service=instance.spec["service"], resources=_capacity(workload.get("resources") or {}),
        host_ports=frozenset(int(p) for p in workload.get("hostPorts") or ()),
        driver=required_driver(workload),
        constraints=tuple(Constraint.of(c["key"], c.get("operator", "="), c.get("value"),
                                        c.get("values"))
                          for c in placement.get("constraints") or ()),
        strategy=Strategy(placement.get("strategy", PlacementRequest.strategy)),
        affinity=names("affinity"), anti_affinity=names("antiAffinity"),
        preferred_affinity=names("preferredAffinity"),
        preferred_anti_affinity=names("preferredAntiAffinity"),
        spread_by=names("spreadBy"),
    )


def snapshot(nodes: Sequence[Resource], instances: Sequence[Resource]) -> ClusterSnapshot:
    placed = tuple(
        PlacedInstance(
            id=_id(i), namespace=i.namespace, service=i.spec["service"], node=i.spec["node"],
            resources=_capacity((i.spec.get("workload") or {}).get("resources") or {}),
            host_ports=frozenset(int(p) for p in
                                 (i.spec.get("workload") or {}).get("hostPorts") or ()),
        )
        for i in instances if i.spec.get("node")
    )
    return ClusterSnapshot(nodes=tuple(_node(n) for n in nodes), placed=placed)


def plan(nodes: Sequence[Resource], instances: Sequence[Resource],
         pending: Sequence[Resource], rng: random.Random) -> InstancePlan:
    world = snapshot(nodes, instances)
    decided = schedule(world, [_request(i) for i in pending], rng)
    by_id = {_id(i): i for i in pending}
    drivers = {n.name: frozenset(n.spec.get("drivers") or ()) for n in nodes}
    placements = []
    for p in decided.placements:
        instance = by_id[p.instance_id]
        workload = instance.spec.get("workload") or {}
        driver = required_driver(workload) or (
            "docker" if "docker" in drivers.get(p.node, ()) else "process")
        placements.append(Placed(instance.namespace, instance.name, p.node, driver))
    failures = tuple(Failed(by_id[f.instance_id].namespace, by_id[f.instance_id].name,
                            f.explanation) for f in decided.failures)
    return InstancePlan(tuple(placements), failures, decided)


def recheck(nodes: Sequence[Resource], instances: Sequence[Resource],
            decided: InstancePlan) -> dict[tuple[str, str], str]:
    """The plan applier's re-check against fresh state: (namespace, instance)
    -> why its placement no longer holds."""
    found: dict[tuple[str, str], str] = {}
    for conflict in check_plan(snapshot(nodes, instances), decided.scheduled):
        namespace, _, name = conflict.instance_id.partition("/")
        found[(namespace, name)] = str(conflict)
    return found
