"""Selection: the pass that turns pending instances into a :class:`Plan`.

Like Nomad's stack, a pass shuffles the nodes once (with the caller's rng)
and, for each request, walks the nodes that pass its static checks, starting
at the node the previous walk of that class chose. It scores feasible nodes
until it has seen ``limit`` clean ones (no replica of the service, no
anti-affinity service) or ``limit * (1 + SKIP_FACTOR)`` feasible ones, then
takes the best; nodes holding an affinity service are scored as well. So the
cost of a placement grows with ``log2`` of the node count, not with the node
count, while clusters of up to ``MIN_CANDIDATES`` nodes are always searched
in full. Only when nothing fits does a pass look at every node, to explain why.

Starting at the last choice keeps binpack filling the same nodes, while
nodes already holding a replica are skipped as unclean, so the replicas of a
service still move on to fresh nodes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import chain
from dataclasses import dataclass

from controlplane.model.cluster import (
    ClusterSnapshot,
    Placement,
    PlacementRequest,
    Plan,
    Strategy,
    Unschedulable,
)
from controlplane.scheduler.feasibility import NodeClass, NodeIndex, explain, node_class
from controlplane.scheduler.scoring import Scorer
from controlplane.scheduler.state import Allocation

#: Clean candidates scored per placement, at least (and at least log2(nodes)).
MIN_CANDIDATES = 8
#: How many penalised feasible nodes, per clean one wanted, a walk may score.
SKIP_FACTOR = 3
#: ``spread`` looks at this many times more candidates than ``binpack``.
SPREAD_FACTOR = 2


def candidate_limit(node_count: int, strategy: Strategy) -> int:
    """How many clean candidates a walk over ``node_count`` nodes looks for."""
    limit = max(MIN_CANDIDATES, math.ceil(math.log2(max(node_count, 1))))
    return limit * SPREAD_FACTOR if strategy is Strategy.SPREAD else limit


@dataclass
class _Walk:
    """The statically feasible nodes of one class, in the pass's shuffled
    order, and where the next walk starts. Owned by one pass."""

    order: list[int]
    #: allowed[i] is 1 when node i passes the class's static checks.
    allowed: bytearray
    #: Where in ``order`` the next walk starts: the last node chosen.
    cursor: int = 0

    @classmethod
    def over(cls, node_count: int, feasible: list[int]) -> _Walk:
        allowed = bytearray(node_count)
        for i in feasible:
            allowed[i] = 1
        return cls(feasible, allowed)


def schedule(snapshot: ClusterSnapshot, pending: Sequence[PlacementRequest],
             rng: random.Random) -> Plan:
    """Place ``pending`` onto ``snapshot``'s nodes, in order.

    Pure apart from drawing from ``rng``: the same snapshot, requests and rng
    state give the same plan. Placements within the plan account for each
    other. A request whose instance is already placed, or is repeated, is
    not placed again.
    """
    alloc = Allocation(snapshot)
    order = list(range(len(alloc.nodes)))
    rng.shuffle(order)
    index = NodeIndex(alloc.nodes, order)
    walks: dict[NodeClass, _Walk] = {}
    placements: list[Placement] = []
    failures: list[Unschedulable] = []
    requested: set[str] = set()
    #: Shapes known not to fit: capacity only shrinks during a pass. The
    #: explanation is reused while no placement happened since.
    failed: dict[tuple[NodeClass, int, int, frozenset[int]], tuple[int, str]] = {}
    for request in pending:
        instance_id = request.instance_id
        if instance_id in requested:
            continue
        requested.add(instance_id)
        where = alloc.placed_on.get(instance_id)
        if where is not None:
            failures.append(Unschedulable(instance_id, f"already placed on node {where}"))
            continue
        cls = node_class(request)
        walk = walks.get(cls)
        if walk is None:
            walk = walks[cls] = _Walk.over(len(alloc.nodes), index.feasible(cls))
        resources = request.resources
        shape = (cls, resources.cpu_millis, resources.memory_mib, request.host_ports)
        known = failed.get(shape)
        chosen = _select(alloc, walk, request) if known is None else None
        if chosen is None:
            if known is None or known[0] != len(placements):
                known = failed[shape] = (len(placements), explain(alloc, request))
            failures.append(Unschedulable(instance_id, known[1]))
            continue
        node = alloc.nodes[chosen].name
        alloc.place(instance_id, node, resources, request.host_ports,
                    (request.namespace, request.service))
        placements.append(Placement(instance_id, node, resources, request.host_ports))
    return Plan(tuple(placements), tuple(failures))


def _select(alloc: Allocation, walk: _Walk, request: PlacementRequest) -> int | None:
    """The best node for ``request`` among those the walk visits, or None if
    no node of the class fits."""
    order = walk.order
    count = len(order)
    if count == 0:
        return None
    scorer = Scorer(alloc, request)
    limit = candidate_limit(count, request.strategy)
    most = limit * (1 + SKIP_FACTOR)
    cpu, memory = request.resources.cpu_millis, request.resources.memory_mib
    ports = request.host_ports
    fits, score = alloc.fits, scorer.score
    best: int | None = None
    best_score = -math.inf
    start = best_at = walk.cursor
    clean = feasible = 0
    for at in chain(range(start, count), range(start)):
        i = order[at]
        if not fits(i, cpu, memory, ports):
            continue
        feasible += 1
        value, is_clean = score(i)
        if value > best_score:
            best, best_score, best_at = i, value, at
        if is_clean:
            clean += 1
            if clean >= limit:
                break
        if feasible >= most:
            break
    walk.cursor = best_at
    if best is None:
        return None
    for seen, i in enumerate(scorer.attracting()):
        if seen >= most:
            break
        if walk.allowed[i] and fits(i, cpu, memory, ports):
            value, _ = score(i)
            if value > best_score:
                best, best_score = i, value
    return best
