"""The mutable bookkeeping of one scheduling pass.

An :class:`Allocation` starts from a :class:`ClusterSnapshot` and records
every placement the pass makes, so later placements in the same plan see the
capacity, host ports and service counts (per node, and per node-label value
for ``spread_by``) the earlier ones took.

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
        #: Instances of a service per value of a node label, kept only for the
        #: (service, label key) pairs someone asked for: {key: {value: count}}.
        self._by_label: dict[ServiceKey, dict[str, dict[str, int]]] = {}
        for instance in snapshot.placed:
            self.place(instance.id, instance.node, instance.resources, instance.host_ports,
                       (instance.namespace, instance.service))

    def label_counts(self, service: ServiceKey, key: str) -> dict[str, int]:
        """Instances of ``service`` on the nodes with each value of label
        ``key`` (nodes without the label count nowhere). The mapping stays
        live: later placements update it. Callers must not mutate it."""
        keys = self._by_label.setdefault(service, {})
        counts = keys.get(key)
        if counts is None:
            counts = keys[key] = {}
            for i, count in self.services.get(service, {}).items():
                value = self.nodes[i].labels.get(key)
                if value is not None:
                    counts[value] = counts.get(value, 0) + count
        return counts

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
            by_label = self._by_label.get(service)
            if by_label:
                labels = self.nodes[i].labels
                for key, values in by_label.items():
                    value = labels.get(key)
                    if value is not None:
                        values[value] = values.get(value, 0) + 1

    def free(self, i: int) -> Capacity:
        return Capacity(self.free_cpu[i], self.free_mem[i])


def _inverse(amount: int) -> float:
    return 1.0 / amount if amount > 0 else 0.0
