"""Selection: the pass that turns pending instances into a :class:`Plan`.

Like Nomad's stack, a pass shuffles the nodes once (with the caller's rng)
and, for each request, walks the nodes that pass its static checks, starting
at the node the previous walk of that class chose. It scores the nodes that
pass the request's dynamic checks until it has seen ``limit`` clean ones (no
penalty: see :mod:`.scoring`) or ``limit * (1 + SKIP_FACTOR)`` feasible ones,
then takes the best; nodes holding a preferred-affinity service are scored
as well. So the cost of a placement grows with ``log2`` of the node count,
not with the node count, while clusters of up to ``MIN_CANDIDATES`` nodes
are always searched in full. Only when nothing fits does a pass look at
every node, to explain why.

Starting at the last choice keeps binpack filling the same node until it is
full. Under spread, nodes already holding a replica are penalised, so they
are unclean and the replicas of a service move on to fresh nodes.

Two things narrow a walk before it starts:

- **required affinity**: only the nodes running the rarest ``affinity``
  service are walked (the others cannot pass the affinity check);
- **spread_by**: the walked nodes are grouped by their values of the
  ``spread_by`` label keys, and each group is ranked by the instances of the
  service already on nodes with its values (summed over the keys). A node
  lacking one of the labels ranks after every node that has them all (as
  Nomad's spread gives a missing attribute its maximum penalty): it is used
  only when no labelled node fits. The walk visits the lowest-ranked groups
  only and moves to the next rank only when nothing fits there, so the
  instances stay balanced across each label's values (most minus fewest
  <= 1) as long as the least-used values have room. Ranking costs a pass
  over the groups per placement: cheap for racks or zones, linear in the
  node count for a label whose value is unique per node.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, groupby

from controlplane.model.cluster import (
    ClusterSnapshot,
    Node,
    Placement,
    PlacementRequest,
    Plan,
    Strategy,
    Unschedulable,
)
from controlplane.scheduler.feasibility import (
    Check,
    NodeClass,
    NodeIndex,
    affinity_nodes,
    dynamic_check,
    explain,
    node_class,
)
from controlplane.scheduler.scoring import Scorer
from controlplane.scheduler.state import Allocation

#: Clean candidates scored per placement, at least (and at least log2(nodes)).
MIN_CANDIDATES = 8
#: How many penalised feasible nodes, per clean one wanted, a walk may score.
SKIP_FACTOR = 3
#: ``spread`` looks at this many times more candidates than ``binpack``.
SPREAD_FACTOR = 2
#: The rank a node gets for each ``spread_by`` label it lacks: more than any
#: count of instances.
_MISSING = 1 << 32


def candidate_limit(node_count: int, strategy: Strategy) -> int:
    """How many clean candidates a walk over ``node_count`` nodes looks for."""
    limit = max(MIN_CANDIDATES, math.ceil(math.log2(max(node_count, 1))))
    return limit * SPREAD_FACTOR if strategy is Strategy.SPREAD else limit


@dataclass
class _Ring:
    """Nodes in the pass's shuffled order, and where the next walk over them
    starts: the last node chosen among them. Owned by one pass."""

    order: list[int]
    cursor: int = 0


#: A node's value for each ``spread_by`` key; None where it lacks the label.
_Values = tuple[str | None, ...]


@dataclass(frozen=True)
class _Groups:
    """A ring's nodes grouped by their values of some ``spread_by`` keys;
    groups in the order their first node appears in the ring."""

    values: list[_Values]
    rings: list[_Ring]
    #: The group of each node.
    of: dict[int, int]

    @classmethod
    def over(cls, nodes: Sequence[Node], order: Sequence[int],
             keys: tuple[str, ...]) -> _Groups:
        index: dict[_Values, int] = {}
        groups = cls([], [], {})
        for i in order:
            labels = nodes[i].labels
            values = tuple(labels.get(key) for key in keys)
            g = index.get(values)
            if g is None:
                g = index[values] = len(groups.values)
                groups.values.append(values)
                groups.rings.append(_Ring([]))
            groups.rings[g].order.append(i)
            groups.of[i] = g
        return groups

    def tiers(self, alloc: Allocation, request: PlacementRequest,
              keys: tuple[str, ...]) -> Iterator[list[int]]:
        """The groups, lowest rank first, those of equal rank together."""
        service = (request.namespace, request.service)
        per_key = [alloc.label_counts(service, key) for key in keys]
        ranks = []
        for values in self.values:
            rank = 0
            for counts, value in zip(per_key, values):
                rank += _MISSING if value is None else counts.get(value, 0)
            ranks.append(rank)
        ranked = sorted(range(len(ranks)), key=ranks.__getitem__)
        for _, tier in groupby(ranked, key=ranks.__getitem__):
            yield list(tier)


@dataclass
class _Walk:
    """The statically feasible nodes of one class, and their groupings by
    ``spread_by`` keys. Owned by one pass."""

    ring: _Ring
    #: allowed[i] is 1 when node i passes the class's static checks.
    allowed: bytearray
    spread: dict[tuple[str, ...], _Groups] = field(default_factory=dict)

    @classmethod
    def over(cls, node_count: int, feasible: list[int]) -> _Walk:
        allowed = bytearray(node_count)
        for i in feasible:
            allowed[i] = 1
        return cls(_Ring(feasible), allowed)


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
    #: Shapes known not to fit, and the number of placements when that was
    #: found out. Capacity only shrinks during a pass, and so does the room
    #: anti-affinity leaves, so a shape stays unfit; only required affinity
    #: can gain nodes, as its services are placed. The explanation is reused
    #: while no placement happened since.
    failed: dict[tuple[object, ...], tuple[int, str]] = {}
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
        shape = _shape(cls, request)
        known = failed.get(shape)
        if known is not None and known[0] != len(placements) and _may_gain_nodes(request):
            known = None
        chosen = _select(alloc, walk, request) if known is None else None
        if chosen is None:
            if known is None or known[0] != len(placements):
                known = failed[shape] = (len(placements), explain(alloc, request))
            failures.append(Unschedulable(instance_id, known[1]))
            continue
        node = alloc.nodes[chosen].name
        resources = request.resources
        alloc.place(instance_id, node, resources, request.host_ports,
                    (request.namespace, request.service))
        placements.append(Placement(instance_id, node, resources, request.host_ports))
    return Plan(tuple(placements), tuple(failures))


def _shape(cls: NodeClass, request: PlacementRequest) -> tuple[object, ...]:
    """What decides whether a request fits: requests of one shape fit alike."""
    resources = request.resources
    shape: tuple[object, ...] = (cls, resources.cpu_millis, resources.memory_mib,
                                 request.host_ports)
    if request.affinity or request.anti_affinity:
        shape += (request.namespace, request.service, request.affinity, request.anti_affinity)
    return shape


def _may_gain_nodes(request: PlacementRequest) -> bool:
    """True when later placements can make more nodes feasible for ``request``."""
    return any(name != request.service for name in request.affinity)


def _select(alloc: Allocation, walk: _Walk, request: PlacementRequest) -> int | None:
    """The best node for ``request`` among those the walk visits, or None if
    no node of the class fits."""
    ring = walk.ring
    if not ring.order:
        return None
    limit = candidate_limit(len(ring.order), request.strategy)
    reject, scorer = dynamic_check(alloc, request), Scorer(alloc, request)
    near = affinity_nodes(alloc, request)
    if near is not None:
        allowed = walk.allowed
        ring = _Ring([i for i in near if allowed[i]])
    if not request.spread_by:
        return _best([ring], walk.allowed.__getitem__, reject, scorer, limit)
    keys = tuple(dict.fromkeys(request.spread_by))
    groups = walk.spread.get(keys) if near is None else None
    if groups is None:
        groups = _Groups.over(alloc.nodes, ring.order, keys)
        if near is None:
            walk.spread[keys] = groups
    of = groups.of
    for tier in groups.tiers(alloc, request, keys):
        members = set(tier)
        chosen = _best([groups.rings[g] for g in tier], lambda i: of.get(i, -1) in members,
                       reject, scorer, limit)
        if chosen is not None:
            return chosen
    return None


def _best(rings: Sequence[_Ring], eligible: Callable[[int], object], reject: Check,
          scorer: Scorer, limit: int) -> int | None:
    """The best node found walking ``rings`` in turn, each from its cursor,
    until ``limit`` clean or ``limit * (1 + SKIP_FACTOR)`` feasible nodes were
    scored, then among the nodes holding a preferred-affinity service that
    are ``eligible``; None when no node in the rings fits. Moves the cursor of
    the ring the choice came from to the chosen node."""
    score = scorer.score
    most = limit * (1 + SKIP_FACTOR)
    best: int | None = None
    best_score = -math.inf
    best_ring: _Ring | None = None
    best_at = clean = feasible = 0
    for ring in rings:
        order = ring.order
        start = ring.cursor
        for at in chain(range(start, len(order)), range(start)):
            i = order[at]
            if reject(i) is not None:
                continue
            feasible += 1
            value, is_clean = score(i)
            if value > best_score:
                best, best_score, best_ring, best_at = i, value, ring, at
            if is_clean:
                clean += 1
                if clean >= limit:
                    break
            if feasible >= most:
                break
        if clean >= limit or feasible >= most:
            break
    if best_ring is None:
        return None
    best_ring.cursor = best_at
    for seen, i in enumerate(scorer.attracting()):
        if seen >= most:
            break
        if eligible(i) and reject(i) is None:
            value, _ = score(i)
            if value > best_score:
                best, best_score = i, value
    return best
