"""Between stored objects and the scheduler: build the snapshot and the
requests from Node and Instance resources, run the scheduler, and name the
driver each placement runs with."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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
from controlplane.model.specs import InstanceSpec, NodeSpec, Workload
from controlplane.model.specs.service import ResourceLimits
from controlplane.model.specs.system import NodeCapacity
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


def _capacity(resources: ResourceLimits | NodeCapacity) -> Capacity:
    return Capacity(resources.cpu, resources.memory)


def _node(node: Resource) -> Node:
    spec = node.typed(NodeSpec)
    return Node(
        name=node.name, address=spec.address, capacity=_capacity(spec.capacity),
        labels=dict(spec.labels), drivers=frozenset(spec.drivers), state=node_state(node),
    )


def required_driver(workload: Workload) -> str | None:
    """The driver a workload needs: as declared, else docker for an image
    alone, process for a command alone, either when it has both."""
    if workload.driver:
        return workload.driver
    has_image, has_command = bool(workload.image), bool(workload.command)
    if has_image and not has_command:
        return "docker"
    if has_command and not has_image:
        return "process"
    return None


def _request(instance: Resource) -> PlacementRequest:
    """The scheduler's view of a pending instance; ``spec.placement`` is the
    Service's, as validated."""
    spec = instance.typed(InstanceSpec)
    workload, placement = spec.workload, spec.placement
    return PlacementRequest(
        instance_id=_id(instance), namespace=instance.namespace,
        service=spec.service, resources=_capacity(workload.resources),
        host_ports=frozenset(workload.host_ports or ()),
        driver=required_driver(workload),
        constraints=tuple(Constraint.of(c.key, c.operator, c.value, c.values)
                          for c in placement.constraints),
        strategy=Strategy(placement.strategy),
        affinity=tuple(placement.affinity), anti_affinity=tuple(placement.anti_affinity),
        preferred_affinity=tuple(placement.preferred_affinity),
        preferred_anti_affinity=tuple(placement.preferred_anti_affinity),
        spread_by=tuple(placement.spread_by),
    )


def snapshot(nodes: Sequence[Resource], instances: Sequence[Resource]) -> ClusterSnapshot:
    specs = ((i, i.typed(InstanceSpec)) for i in instances)
    placed = tuple(
        PlacedInstance(
            id=_id(i), namespace=i.namespace, service=spec.service, node=spec.node,
            resources=_capacity(spec.workload.resources),
            host_ports=frozenset(spec.workload.host_ports or ()),
        )
        for i, spec in specs if spec.node
    )
    return ClusterSnapshot(nodes=tuple(_node(n) for n in nodes), placed=placed)


def plan(nodes: Sequence[Resource], instances: Sequence[Resource],
         pending: Sequence[Resource], rng: random.Random) -> InstancePlan:
    world = snapshot(nodes, instances)
    decided = schedule(world, [_request(i) for i in pending], rng)
    by_id = {_id(i): i for i in pending}
    drivers = {n.name: frozenset(n.typed(NodeSpec).drivers) for n in nodes}
    placements = []
    for p in decided.placements:
        instance = by_id[p.instance_id]
        driver = required_driver(instance.typed(InstanceSpec).workload) or (
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
