"""The mutable bookkeeping of one scheduling pass.

An :class:`Allocation` starts from a :class:`ClusterSnapshot` and records
every placement the pass makes, so later placements in the same plan see the
capacity, host ports and service counts the earlier ones took.

Contract: one Allocation belongs to one call of ``schedule`` or
``check_plan``; it is never shared, stored or returned. Nodes are addressed
by their index in ``snapshot.nodes``.
"""

from __future__ import annotations

from controlplane.model.cluster import Capacity, ClusterSnapshot, Node

#: (namespace, service)
ServiceKey = tuple[str, str]


class Allocation:
    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self.nodes: tuple[Node, ...] = snapshot.nodes
        self.index: dict[str, int] = {node.name: i for i, node in enumerate(self.nodes)}
        #: Free cpu and memory per node; negative when a snapshot is overcommitted.
        self.free_cpu: list[int] = [node.capacity.cpu_millis for node in self.nodes]
        self.free_mem: list[int] = [node.capacity.memory_mib for node in self.nodes]
        #: 1 / capacity per node (0 for a zero capacity), for utilisation scores.
        self.inv_cpu: list[float] = [_inverse(node.capacity.cpu_millis) for node in self.nodes]
        self.inv_mem: list[float] = [_inverse(node.capacity.memory_mib) for node in self.nodes]
        #: Host ports in use per node.
        self.ports: list[set[int]] = [set() for _ in self.nodes]
        #: Instances per node of each service: {(namespace, service): {node index: count}}.
        self.services: dict[ServiceKey, dict[int, int]] = {}
        #: Node name of every placed instance, including those on unlisted nodes.
        self.placed_on: dict[str, str] = {}
        for instance in snapshot.placed:
            self.place(instance.id, instance.node, instance.resources, instance.host_ports,
                       (instance.namespace, instance.service))

    def fits(self, i: int, cpu: int, memory: int, host_ports: frozenset[int]) -> bool:
        """True when node ``i`` has the cpu, memory and host ports free."""
        return (self.free_cpu[i] >= cpu and self.free_mem[i] >= memory
                and (not host_ports or self.ports[i].isdisjoint(host_ports)))

    def place(self, instance_id: str, node: str, resources: Capacity,
              host_ports: frozenset[int], service: ServiceKey | None = None) -> None:
        """Record that the instance holds ``resources`` and ``host_ports`` on
        ``node``, counting it as one of ``service``'s instances there."""
        self.placed_on[instance_id] = node
        i = self.index.get(node)
        if i is None:
            return
        self.free_cpu[i] -= resources.cpu_millis
        self.free_mem[i] -= resources.memory_mib
        if host_ports:
            self.ports[i].update(host_ports)
        if service is not None:
            counts = self.services.setdefault(service, {})
            counts[i] = counts.get(i, 0) + 1

    def free(self, i: int) -> Capacity:
        return Capacity(self.free_cpu[i], self.free_mem[i])


def _inverse(amount: int) -> float:
    return 1.0 / amount if amount > 0 else 0.0
