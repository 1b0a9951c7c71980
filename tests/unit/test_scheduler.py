"""The scheduler: tables for each feasibility check, scoring rule,
spreadBy case and explanation, the acceptance scenarios, the mapping from
``spec.placement``, and Hypothesis properties."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.controllers import placement as placement_controller
from controlplane.errors import InvalidManifest
from controlplane.manifests import to_resource
from controlplane.model import Resource
from controlplane.model.specs import ServiceSpec
from controlplane.model.cluster import (
    Capacity,
    ClusterSnapshot,
    Constraint,
    Node,
    NodeState,
    Operator,
    PlacedInstance,
    Placement,
    PlacementRequest,
    Plan,
    Strategy,
    Unschedulable,
)
from controlplane.scheduler import candidate_limit, check_plan, schedule
from controlplane.scheduler.feasibility import NodeIndex, dynamic_check, static_rejection
from controlplane.scheduler.scoring import Scorer
from controlplane.scheduler.state import Allocation

BOTH = frozenset({"docker", "process"})


def node(name: str, cpu: int = 4000, memory: int = 8192, *, drivers: frozenset[str] = BOTH,
         state: NodeState = NodeState.READY, **labels: str) -> Node:
    return Node(name, f"10.0.0.{len(name)}", Capacity(cpu, memory), labels, drivers, state)


def request(instance_id: str, service: str = "web", cpu: int = 100, memory: int = 128, *,
            ports: Sequence[int] = (), driver: str | None = None,
            constraints: Sequence[Constraint] = (), spread: bool = False,
            affinity: Sequence[str] = (), anti_affinity: Sequence[str] = (),
            preferred_affinity: Sequence[str] = (), preferred_anti_affinity: Sequence[str] = (),
            spread_by: Sequence[str] = (), namespace: str = "default") -> PlacementRequest:
    return PlacementRequest(instance_id, namespace, service, Capacity(cpu, memory),
                            frozenset(ports), driver, tuple(constraints),
                            Strategy.SPREAD if spread else Strategy.BINPACK,
                            tuple(affinity), tuple(anti_affinity), tuple(preferred_affinity),
                            tuple(preferred_anti_affinity), tuple(spread_by))


def placed(instance_id: str, service: str, on: str, cpu: int = 100, memory: int = 128, *,
           ports: Sequence[int] = (), namespace: str = "default") -> PlacedInstance:
    return PlacedInstance(instance_id, namespace, service, on, Capacity(cpu, memory),
                          frozenset(ports))


def run(nodes: Sequence[Node], pending: Sequence[PlacementRequest],
        already: Sequence[PlacedInstance] = (), seed: int = 0) -> Plan:
    return schedule(ClusterSnapshot(tuple(nodes), tuple(already)), pending,
                    random.Random(seed))


def only_outcome(plan: Plan) -> str:
    """The node of the plan's single placement, or its single explanation."""
    assert len(plan.placements) + len(plan.failures) == 1
    return plan.placements[0].node if plan.placements else plan.failures[0].explanation


# --- model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "labels", "holds"),
    [
        (Constraint.of("zone", "=", "b"), {"zone": "b"}, True),
        (Constraint.of("zone", "=", "b"), {"zone": "a"}, False),
        (Constraint.of("zone", "=", "b"), {}, False),
        (Constraint.of("zone", "!=", "a"), {"zone": "b"}, True),
        (Constraint.of("zone", "!=", "a"), {}, True),
        (Constraint.of("zone", "!=", "a"), {"zone": "a"}, False),
        (Constraint.of("zone", "in", values=["a", "b"]), {"zone": "b"}, True),
        (Constraint.of("zone", "in", values=["a", "b"]), {"zone": "c"}, False),
        (Constraint.of("zone", "in", values=["a", "b"]), {}, False),
        (Constraint.of("zone", "not-in", values=["a", "b"]), {"zone": "c"}, True),
        (Constraint.of("zone", "not-in", values=["a", "b"]), {}, True),
        (Constraint.of("zone", "not-in", values=["a", "b"]), {"zone": "a"}, False),
        (Constraint.of("gpu", "exists"), {"gpu": ""}, True),
        (Constraint.of("gpu", "exists"), {"zone": "a"}, False),
        (Constraint.of("gpu", "not-exists"), {"zone": "a"}, True),
        (Constraint.of("gpu", "not-exists"), {"gpu": "a100"}, False),
    ],
    ids=lambda v: str(v) if isinstance(v, (Constraint, dict)) else None,
)
def test_constraint_holds(constraint: Constraint, labels: dict[str, str], holds: bool) -> None:
    assert constraint.holds(labels) is holds


@pytest.mark.parametrize(
    ("operator", "values"),
    [(Operator.EQUAL, ()), (Operator.EQUAL, ("a", "b")), (Operator.IN, ()),
     (Operator.EXISTS, ("a",)), (Operator.NOT_EXISTS, ("a",))],
    ids=["= none", "= two", "in none", "exists one", "not-exists one"],
)
def test_constraint_rejects_wrong_operand_count(operator: Operator,
                                                values: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=f"operator '{re.escape(operator.value)}' takes"):
        Constraint("zone", operator, values)


@pytest.mark.parametrize(
    ("capacity", "free", "fits"),
    [(Capacity(100, 128), Capacity(100, 128), True), (Capacity(101, 128), Capacity(100, 128),
                                                       False),
     (Capacity(100, 129), Capacity(100, 128), False), (Capacity(), Capacity(-1, 0), False)],
    ids=["exact", "cpu over", "memory over", "overcommitted node"],
)
def test_capacity_fits(capacity: Capacity, free: Capacity, fits: bool) -> None:
    assert capacity.fits(free) is fits


def test_capacity_arithmetic_and_allocated() -> None:
    assert Capacity(1, 2) + Capacity(3, 4) - Capacity(1, 1) == Capacity(3, 5)
    assert Capacity.total([Capacity(1, 2), Capacity(3, 4)]) == Capacity(4, 6)
    snapshot = ClusterSnapshot((node("a"), node("b")),
                               (placed("1", "web", "a", 100, 64), placed("2", "web", "a", 50, 64),
                                placed("3", "web", "gone")))
    assert snapshot.allocated() == {"a": Capacity(150, 128), "b": Capacity()}


# --- feasibility -------------------------------------------------------------------

ZONE_B = Constraint.of("zone", "=", "b")


@pytest.mark.parametrize(
    ("target", "pending", "already", "outcome"),
    [
        (node("a", cpu=1000), request("i", cpu=2000), [],
         "insufficient cpu (need 2000 millicores, max free 1000 millicores)"),
        (node("a", cpu=1000), request("i", cpu=1000), [], None),
        (node("a", memory=512), request("i", memory=1024), [],
         "insufficient memory (need 1024 MiB, max free 512 MiB)"),
        (node("a", memory=1024), request("i", memory=512), [placed("x", "db", "a", memory=768)],
         "insufficient memory (need 512 MiB, max free 256 MiB)"),
        (node("a", memory=1024), request("i", memory=512), [placed("x", "db", "a", memory=512)],
         None),
        (node("a", cpu=100), request("i", cpu=200, memory=1 << 20), [],
         "insufficient cpu (need 200 millicores, max free 100 millicores)"),
        (node("a"), request("i", ports=[8080]), [placed("x", "db", "a", ports=[8080])],
         "host port 8080 in use"),
        (node("a"), request("i", ports=[8080, 9090]), [placed("x", "db", "a", ports=[9090])],
         "host port 9090 in use"),
        (node("a"), request("i", ports=[8080]), [placed("x", "db", "a", ports=[8081])], None),
        (node("a", drivers=frozenset({"process"})), request("i", driver="docker"), [],
         "no driver docker"),
        (node("a", drivers=frozenset({"process"})), request("i", driver="process"), [], None),
        (node("a", drivers=frozenset({"process"})), request("i"), [], None),
        (node("a", state=NodeState.DOWN), request("i"), [], "node down"),
        (node("a", state=NodeState.DRAINING), request("i"), [], "node draining"),
        (node("a", zone="a"), request("i", constraints=[ZONE_B]), [], "missing label zone=b"),
        (node("a", zone="b"), request("i", constraints=[ZONE_B]), [], None),
        (node("a", zone="a"), request("i", constraints=[Constraint.of("zone", "!=", "a")]), [],
         "constraint zone!=a not met"),
        (node("a", zone="c"),
         request("i", constraints=[Constraint.of("zone", "in", values=["a", "b"])]), [],
         "constraint zone in (a,b) not met"),
        (node("a", zone="b"),
         request("i", constraints=[Constraint.of("zone", "not-in", values=["a", "b"])]), [],
         "constraint zone not-in (a,b) not met"),
        (node("a"), request("i", constraints=[Constraint.of("gpu", "exists")]), [],
         "missing label gpu"),
        (node("a", gpu="a100"), request("i", constraints=[Constraint.of("gpu", "not-exists")]),
         [], "constraint gpu not-exists not met"),
        (node("a"), request("i", affinity=["cache"]), [placed("c", "cache", "a")], None),
        (node("a"), request("i", affinity=["cache"]), [placed("c", "db", "a")],
         "no instance of cache (none placed yet)"),
        (node("a"), request("i", affinity=["cache", "db"]), [placed("c", "cache", "a")],
         "no instance of db (none placed yet)"),
        (node("a"), request("i", affinity=["cache"]),
         [placed("c", "cache", "a", namespace="other")], "no instance of cache (none placed yet)"),
        (node("a"), request("i", affinity=["web"]), [], None),
        (node("a"), request("i", anti_affinity=["db"]), [placed("d", "db", "a")],
         "instance of db present"),
        (node("a"), request("i", anti_affinity=["db"]), [placed("c", "cache", "a")], None),
        (node("a"), request("i", anti_affinity=["web"]), [placed("w", "web", "a")],
         "instance of web present"),
        (node("a"), request("i", preferred_affinity=["cache"],
                            preferred_anti_affinity=["db"]), [placed("d", "db", "a")], None),
        # The first failed check is the one reported.
        (node("a", cpu=10, state=NodeState.DOWN, zone="a"), request("i", constraints=[ZONE_B]),
         [], "node down"),
        (node("a", cpu=10, zone="a"), request("i", driver="docker", constraints=[ZONE_B]), [],
         "missing label zone=b"),
        (node("a", cpu=10), request("i", ports=[80]), [placed("x", "db", "a", ports=[80])],
         "host port 80 in use"),
        (node("a", zone="a"), request("i", constraints=[ZONE_B], affinity=["cache"]), [],
         "missing label zone=b"),
        (node("a"), request("i", affinity=["cache"], anti_affinity=["db"]),
         [placed("d", "db", "a")], "no instance of cache (none placed yet)"),
        (node("a", cpu=10), request("i", anti_affinity=["db"], ports=[80]),
         [placed("d", "db", "a", ports=[80])], "instance of db present"),
    ],
    ids=["cpu short", "cpu exact", "memory short", "memory taken", "memory exact",
         "cpu before memory", "port in use", "lowest port in use", "other port",
         "no driver", "driver offered", "any driver", "down", "draining", "= unmet", "= met",
         "!= unmet", "in unmet", "not-in unmet", "exists unmet", "not-exists unmet",
         "affinity met", "affinity unmet", "affinity needs every service",
         "affinity per namespace", "self affinity ignored", "anti-affinity unmet",
         "anti-affinity met", "self anti-affinity", "preferred rules never reject",
         "state first", "constraint before cpu", "port before cpu",
         "constraint before affinity", "affinity before anti-affinity",
         "anti-affinity before port and cpu"],
)
def test_feasibility(target: Node, pending: PlacementRequest, already: list[PlacedInstance],
                     outcome: str | None) -> None:
    result = only_outcome(run([target], [pending], already))
    assert result == ("a" if outcome is None else f"0/1 nodes fit: 1 {outcome}")


# --- explanations --------------------------------------------------------------------


ABC = [node("a"), node("b"), node("c")]


@pytest.mark.parametrize(
    ("nodes", "pending", "already", "explanation"),
    [
        ([node("a", memory=256, zone="b"), node("b", memory=256, zone="b"),
          node("c", memory=4096, zone="a")],
         request("i", memory=512, constraints=[ZONE_B]), [],
         "0/3 nodes fit: 2 insufficient memory (need 512 MiB, max free 256 MiB), "
         "1 missing label zone=b"),
        ([node("a", memory=128), node("b", memory=256), node("c", memory=64)],
         request("i", memory=512), [],
         "0/3 nodes fit: 3 insufficient memory (need 512 MiB, max free 256 MiB)"),
        ([node("a", cpu=500), node("b", memory=64), node("c", state=NodeState.DOWN),
          node("d", drivers=frozenset({"process"}))],
         request("i", cpu=1000, memory=128, driver="docker"), [],
         "0/4 nodes fit: 1 insufficient cpu (need 1000 millicores, max free 500 millicores), "
         "1 insufficient memory (need 128 MiB, max free 64 MiB), 1 no driver docker, "
         "1 node down"),
        ([node("a", zone="c"), node("b", zone="c"), node("c", state=NodeState.DRAINING)],
         request("i", constraints=[Constraint.of("zone", "in", values=["a", "b"])]), [],
         "0/3 nodes fit: 2 constraint zone in (a,b) not met, 1 node draining"),
        ([], request("i"), [], "0/0 nodes fit: the cluster has no nodes"),
        (ABC, request("i", affinity=["cache"]), [],
         "0/3 nodes fit: 3 no instance of cache (none placed yet)"),
        ([node("a", memory=256), node("b"), node("c")], request("i", memory=512,
                                                                affinity=["cache"]),
         [placed("c1", "cache", "a", memory=128)],
         "0/3 nodes fit: 2 no instance of cache, "
         "1 insufficient memory (need 512 MiB, max free 128 MiB)"),
        (ABC, request("i", anti_affinity=["db"]),
         [placed("d1", "db", "a"), placed("d2", "db", "b"), placed("d3", "db", "c")],
         "0/3 nodes fit: 3 instance of db present"),
    ],
    ids=["acceptance example", "max free over nodes", "one of each", "in and draining",
         "no nodes", "affinity to nothing yet", "affinity where it does not fit",
         "anti-affinity everywhere"],
)
def test_explanation(nodes: list[Node], pending: PlacementRequest,
                     already: list[PlacedInstance], explanation: str) -> None:
    assert run(nodes, [pending], already).failures == (Unschedulable("i", explanation),)


def test_explanation_sees_earlier_placements_in_the_plan() -> None:
    pending = [request("a", memory=600), request("b", memory=600), request("c", memory=100),
               request("d", memory=600), request("e", memory=600)]
    plan = run([node("n", memory=1024)], pending)
    assert [p.instance_id for p in plan.placements] == ["a", "c"]
    need = "0/1 nodes fit: 1 insufficient memory (need 600 MiB, max free {} MiB)"
    assert plan.failures == (Unschedulable("b", need.format(424)),
                             Unschedulable("d", need.format(324)),
                             Unschedulable("e", need.format(324)))


# --- scoring ---------------------------------------------------------------------------

#: Two equal nodes; "a" is the fuller one unless a case places more on "b".
PAIR = [node("a"), node("b")]
FILLER = placed("filler", "batch", "a", 2000, 4096)
#: The same, to make "b" the fuller one.
FILLER_B = placed("filler", "batch", "b", 2000, 4096)


@pytest.mark.parametrize(
    ("pending", "already", "chosen"),
    [
        (request("i"), [FILLER], "a"),
        (request("i", spread=True), [FILLER], "b"),
        (request("i"), [FILLER, placed("w1", "web", "a")], "a"),
        (request("i", spread=True), [placed("w1", "web", "b")], "a"),
        (request("i", spread=True), [FILLER_B, placed("w1", "web", "a", namespace="other")],
         "a"),
        (request("i", preferred_affinity=["cache"]), [FILLER, placed("c1", "cache", "b")], "b"),
        (request("i", preferred_affinity=["cache"]),
         [FILLER, placed("c1", "cache", "b", namespace="other")], "a"),
        (request("i", preferred_affinity=["web"]), [FILLER_B, placed("w1", "web", "a")], "b"),
        (request("i", preferred_anti_affinity=["db"]), [FILLER, placed("d1", "db", "a")], "b"),
        (request("i", preferred_anti_affinity=["db"], spread=True), [placed("d1", "db", "b")],
         "a"),
        (request("i", preferred_anti_affinity=["web"]), [FILLER, placed("w1", "web", "a")], "b"),
        (request("i", preferred_affinity=["cache"], preferred_anti_affinity=["db"]),
         [placed("c1", "cache", "a"), placed("d1", "db", "a"), placed("c2", "cache", "b")], "b"),
        (request("i", preferred_affinity=["cache"], spread=True),
         [FILLER_B, placed("c1", "cache", "b"), placed("w1", "web", "b")], "a"),
        (request("i", affinity=["cache"], spread=True),
         [FILLER_B, placed("c1", "cache", "b"), placed("w1", "web", "b")], "b"),
    ],
    ids=["binpack fuller", "spread emptier", "binpack stacks replicas",
         "spread keeps replicas apart", "replicas counted per namespace",
         "preferred affinity over binpack", "preferred affinity per namespace",
         "self preferred affinity ignored", "preferred anti-affinity over binpack",
         "preferred anti-affinity over spread", "self preferred anti-affinity under binpack",
         "preferred anti-affinity cancels affinity", "replica cancels affinity, spread decides",
         "required affinity over replica and spread"],
)
def test_scoring(pending: PlacementRequest, already: list[PlacedInstance], chosen: str) -> None:
    for seed in range(5):
        assert only_outcome(run(PAIR, [pending], already, seed)) == chosen


@pytest.mark.parametrize(
    ("pending", "fit"),
    [(request("i", cpu=1000, memory=2048), 0.5), (request("i", cpu=0, memory=0), 0.25),
     (request("i", cpu=0, memory=0, spread=True), 0.75),
     (request("i", cpu=3000, memory=6144, spread=True), 0.0)],
    ids=["binpack after placing", "binpack as is", "spread as is", "spread full"],
)
def test_fit_is_utilisation_after_placing(pending: PlacementRequest, fit: float) -> None:
    alloc = Allocation(ClusterSnapshot((node("a"),), (placed("x", "db", "a", 1000, 2048),)))
    assert Scorer(alloc, pending).fit(0) == pytest.approx(fit)


@pytest.mark.parametrize(
    ("nodes", "strategy", "limit"),
    [(1, Strategy.BINPACK, 8), (3, Strategy.BINPACK, 8), (1000, Strategy.BINPACK, 10),
     (5000, Strategy.BINPACK, 13), (3, Strategy.SPREAD, 16), (1000, Strategy.SPREAD, 20)],
    ids=lambda v: str(v),
)
def test_candidate_limit(nodes: int, strategy: Strategy, limit: int) -> None:
    assert candidate_limit(nodes, strategy) == limit


# --- acceptance scenarios --------------------------------------------------------------

THREE = [node("node-1", zone="a"), node("node-2", zone="b"), node("node-3", zone="c")]


@pytest.mark.parametrize("seed", range(5))
def test_six_replicas_on_three_nodes_land_two_per_node(seed: int) -> None:
    plan = run(THREE, [request(f"web-{k}", spread=True) for k in range(6)], seed=seed)
    assert not plan.failures
    assert Counter(p.node for p in plan.placements) == {"node-1": 2, "node-2": 2, "node-3": 2}


#: Two empty, identical nodes that hold four replicas each.
FOUR_EACH = [node("a", cpu=400, memory=512), node("b", cpu=400, memory=512)]


@pytest.mark.parametrize(
    ("replicas", "spread", "per_node"),
    [(4, False, [4]), (4, True, [2, 2]), (6, False, [4, 2]), (6, True, [3, 3]),
     (8, False, [4, 4])],
    ids=["binpack fills one node", "spread halves", "binpack overflows to the next",
         "spread six", "binpack fills both"],
)
@pytest.mark.parametrize("seed", range(5))
def test_binpack_fills_a_node_first_counting_the_plan(seed: int, replicas: int, spread: bool,
                                                      per_node: list[int]) -> None:
    """Regression (issue 12): binpack put 4 replicas 2/2 on two empty nodes."""
    plan = run(FOUR_EACH, [request(f"web-{k}", spread=spread) for k in range(replicas)],
               seed=seed)
    assert not plan.failures
    assert sorted(Counter(p.node for p in plan.placements).values(), reverse=True) == per_node


def test_self_anti_affinity_keeps_binpack_replicas_on_distinct_nodes() -> None:
    plan = run(FOUR_EACH + [node("c", cpu=400, memory=512)],
               [request(f"web-{k}", anti_affinity=["web"]) for k in range(4)])
    assert sorted(p.node for p in plan.placements) == ["a", "b", "c"]
    assert plan.failures == (Unschedulable("web-3", "0/3 nodes fit: 3 instance of web present"),)


def test_required_affinity_waits_for_its_service_then_follows_it() -> None:
    pending = [request("web-0", affinity=["cache"]), request("cache-0", "cache"),
               request("web-1", affinity=["cache"]), request("web-2", affinity=["cache"])]
    for seed in range(5):
        plan = run(THREE, pending, seed=seed)
        assert plan.failures == (Unschedulable(
            "web-0", "0/3 nodes fit: 3 no instance of cache (none placed yet)"),)
        cache = plan.node_of("cache-0")
        assert plan.node_of("web-1") == plan.node_of("web-2") == cache


def test_zone_constraint_puts_all_on_the_matching_node() -> None:
    plan = run(THREE, [request(f"web-{k}", constraints=[ZONE_B]) for k in range(6)])
    assert {p.node for p in plan.placements} == {"node-2"} and len(plan.placements) == 6


def test_too_large_is_unschedulable_with_the_explanation() -> None:
    nodes = [node("node-1", memory=256, zone="b"), node("node-2", memory=256, zone="b"),
             node("node-3", zone="a")]
    plan = run(nodes, [request("big", memory=512, constraints=[ZONE_B])])
    assert plan.failures[0].explanation == (
        "0/3 nodes fit: 2 insufficient memory (need 512 MiB, max free 256 MiB), "
        "1 missing label zone=b")


def test_same_seed_same_plan() -> None:
    nodes = [node(f"n{i}", cpu=1000 * (1 + i % 4)) for i in range(60)]
    pending = [request(f"{s}-{r}", f"svc{s}", cpu=150) for s in range(10) for r in range(12)]
    plans = [run(nodes, pending, seed=seed) for seed in (7, 7, 8, 9)]
    assert plans[0] == plans[1]
    assert plans[0] != plans[2] or plans[0] != plans[3]


def test_repeated_and_already_placed_instances_are_not_placed_again() -> None:
    plan = run(THREE, [request("x"), request("y"), request("x")], [placed("y", "web", "node-1")])
    assert [p.instance_id for p in plan.placements] == ["x"]
    assert plan.failures == (Unschedulable("y", "already placed on node node-1"),)
    assert plan.node_of("x") == plan.placements[0].node and plan.node_of("y") is None


# --- large clusters: the limited walk ----------------------------------------------------


def test_replicas_spread_one_per_node_on_a_large_cluster() -> None:
    nodes = [node(f"n{i:03d}") for i in range(300)]
    plan = run(nodes, [request(f"web-{k}", spread=True) for k in range(300)])
    assert len({p.node for p in plan.placements}) == 300


def test_binpack_replicas_fill_nodes_on_a_large_cluster() -> None:
    nodes = [node(f"n{i:03d}") for i in range(300)]
    plan = run(nodes, [request(f"web-{k}", cpu=1000, memory=1024) for k in range(40)])
    assert sorted(Counter(p.node for p in plan.placements).values()) == [4] * 10


def test_binpack_fills_nodes_up_on_a_large_cluster() -> None:
    nodes = [node(f"n{i:03d}", cpu=8000, memory=16384) for i in range(200)]
    pending = [request(f"{s}-{r}", f"svc{s}", cpu=500, memory=1024)
               for r in range(10) for s in range(40)]
    plan = run(nodes, pending)
    ideal = len(pending) // 16
    assert len(plan.placements) == len(pending)
    assert len({p.node for p in plan.placements}) <= ideal * 1.2


@pytest.mark.parametrize("required", [False, True], ids=["preferred", "required"])
def test_affinity_finds_its_node_on_a_large_cluster(required: bool) -> None:
    nodes = [node(f"n{i:03d}") for i in range(500)]
    pending = (request("web-0", affinity=["cache"]) if required else
               request("web-0", preferred_affinity=["cache"]))
    for seed in range(3):
        plan = run(nodes, [pending], [placed("cache-0", "cache", "n123")], seed)
        assert plan.placements[0].node == "n123"


def test_constraint_with_few_matching_nodes_on_a_large_cluster() -> None:
    nodes = [node(f"n{i:03d}", zone="b" if i % 100 == 7 else "a") for i in range(1000)]
    plan = run(nodes, [request(f"web-{k}", constraints=[ZONE_B], spread=True) for k in range(20)])
    assert Counter(p.node for p in plan.placements) == {f"n{i:03d}": 2 for i in range(7, 1000, 100)}


# --- spreadBy ----------------------------------------------------------------------------


def racked(name: str, rack: str | None, cpu: int = 4000, **labels: str) -> Node:
    if rack is not None:
        labels["rack"] = rack
    return Node(name, "10.0.0.1", Capacity(cpu, 8192), labels, BOTH)


def per_value(plan: Plan, nodes: Sequence[Node], key: str = "rack") -> dict[str, int]:
    """Placements per value of label ``key`` ("" for nodes without it)."""
    labels = {n.name: n.labels.get(key, "") for n in nodes}
    return dict(Counter(labels[p.node] for p in plan.placements))


#: Rack a has three nodes, rack b one.
UNEVEN = [racked("a1", "a"), racked("a2", "a"), racked("a3", "a"), racked("b1", "b")]


ZONE_X = [Constraint.of("zone", "=", "x")]


@pytest.mark.parametrize(
    ("nodes", "replicas", "spread", "constraints", "already", "expected"),
    [
        (UNEVEN, 4, False, [], [], {"a": 2, "b": 2}),
        (UNEVEN, 6, True, [], [], {"a": 3, "b": 3}),
        (UNEVEN, 2, False, [], [placed("w0", "web", "a1"), placed("w1", "web", "a2")],
         {"b": 2}),
        (UNEVEN, 2, False, [], [placed("w0", "web", "a1", namespace="other"),
                                placed("d0", "db", "a1")], {"a": 1, "b": 1}),
        ([racked("a1", "a"), racked("a2", "a"), racked("b1", "b", cpu=100)], 4, False, [], [],
         {"a": 3, "b": 1}),
        ([racked("a1", "a"), racked("u1", None), racked("u2", None)], 3, True, [], [],
         {"a": 3}),
        ([racked("a1", "a", cpu=100), racked("u1", None)], 3, False, [], [], {"a": 1, "": 2}),
        ([racked("a1", "a", zone="x"), racked("b1", "b", zone="x"), racked("c1", "c", zone="y")],
         4, False, ZONE_X, [], {"a": 2, "b": 2}),
    ],
    ids=["binpack balances racks", "spread balances uneven racks", "earlier instances count",
         "only the same service counts", "full rack overflows", "unlabelled nodes last",
         "unlabelled nodes when labelled are full", "racks the constraint excludes"],
)
@pytest.mark.parametrize("seed", range(5))
def test_spread_by(seed: int, nodes: list[Node], replicas: int, spread: bool,
                   constraints: list[Constraint], already: list[PlacedInstance],
                   expected: dict[str, int]) -> None:
    pending = [request(f"web-{k}", spread=spread, spread_by=["rack"], constraints=constraints)
               for k in range(replicas)]
    plan = run(nodes, pending, already, seed)
    assert not plan.failures
    assert per_value(plan, nodes) == expected


def test_spread_by_binpack_fills_within_the_rack() -> None:
    nodes = [racked("a1", "a"), racked("a2", "a"), racked("b1", "b"), racked("b2", "b")]
    for seed in range(5):
        plan = run(nodes, [request(f"web-{k}", spread_by=["rack"]) for k in range(6)], seed=seed)
        assert per_value(plan, nodes) == {"a": 3, "b": 3}
        assert len({p.node for p in plan.placements}) == 2


def test_spread_by_two_keys_balances_both() -> None:
    nodes = [racked("x1", "r1", zone="x"), racked("x2", "r2", zone="x"),
             racked("y3", "r3", zone="y")]
    for seed in range(5):
        plan = run(nodes, [request(f"web-{k}", spread_by=["zone", "rack"]) for k in range(4)],
                   seed=seed)
        assert per_value(plan, nodes, "zone") == {"x": 2, "y": 2}
        assert per_value(plan, nodes) == {"r1": 1, "r2": 1, "r3": 2}


def test_spread_by_with_required_affinity_spreads_over_the_affine_nodes() -> None:
    nodes = [racked(f"{rack}{k}", rack) for rack in "abc" for k in range(3)]
    caches = [placed("c0", "cache", "a0"), placed("c1", "cache", "a1"),
              placed("c2", "cache", "b0")]
    pending = [request(f"web-{k}", affinity=["cache"], spread_by=["rack"]) for k in range(4)]
    for seed in range(5):
        plan = run(nodes, pending, caches, seed)
        assert per_value(plan, nodes) == {"a": 2, "b": 2}
        assert {p.node for p in plan.placements} <= {"a0", "a1", "b0"}


def test_spread_by_on_a_large_cluster() -> None:
    nodes = [racked(f"n{i:04d}", f"r{i % 25:02d}") for i in range(1000)]
    pending = [request(f"{s}-{r}", f"svc{s}", spread=s % 2 == 0, spread_by=["rack"])
               for r in range(30) for s in range(20)]
    plan = run(nodes, pending)
    assert len(plan.placements) == len(pending)
    for s in range(20):
        mine = Plan(tuple(p for p in plan.placements if p.instance_id.startswith(f"{s}-")))
        counts = per_value(mine, nodes)
        assert len(counts) == 25 and max(counts.values()) - min(counts.values()) <= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 4), min_size=6, max_size=6),
       st.integers(0, 3), st.integers(1, 3), st.integers(1, 30), st.booleans(),
       st.integers(0, 2**32))
def test_spread_by_balances_when_every_value_has_room(
        racks: int, per_rack: list[int], unlabelled: int, services: int, replicas: int,
        spread: bool, seed: int) -> None:
    # Every node could hold every replica: each rack has room for all of them.
    room = Capacity(100 * services * replicas, 128 * services * replicas)
    nodes = [Node(f"r{r}-{k}", "addr", room, {"rack": f"r{r}"}, BOTH)
             for r in range(racks) for k in range(per_rack[r])]
    nodes += [Node(f"u{k}", "addr", room, {}, BOTH) for k in range(unlabelled)]
    pending = [request(f"s{s}-{k}", f"svc{s}", spread=spread, spread_by=["rack"])
               for k in range(replicas) for s in range(services)]
    plan = run(nodes, pending, seed=seed)
    assert len(plan.placements) == len(pending)
    for s in range(services):
        mine = Plan(tuple(p for p in plan.placements if p.instance_id.startswith(f"s{s}-")))
        counts = per_value(mine, nodes)
        values = [counts.get(f"r{r}", 0) for r in range(racks)]
        assert max(values) - min(values) <= 1, counts
        assert "" not in counts, "an unlabelled node was used while racks had room"


# --- from spec.placement to the scheduler -------------------------------------------------


def stored_placement(placement: dict[str, Any]) -> Any:
    """``spec.placement`` of Service web as validated and stored."""
    doc = {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"command": ["run"], "placement": placement}}
    return to_resource(doc).typed(ServiceSpec).placement.to_dict()


def stored_node(name: str, rack: str) -> Resource:
    return Resource("Node", name, "cluster", spec={
        "address": "10.0.0.1", "capacity": {"cpu": 4000, "memory": 8192},
        "labels": {"rack": rack}, "drivers": ["process"]}, status={"state": "ready"})


def stored_instance(name: str, service: str, placement: Any, node: str = "") -> Resource:
    return Resource("Instance", name, spec={
        "service": service, "workload": {"command": ["run"], "resources": {"cpu": 100,
                                                                           "memory": 64}},
        "placement": placement, "node": node})


@pytest.mark.parametrize(
    ("placement", "per_node", "used"),  # used: the nodes it may use
    [
        ({}, [2, 1, 1], None),
        ({"strategy": "binpack"}, [4], None),
        ({"strategy": "binpack", "spreadBy": ["rack"]}, [2, 2], None),
        ({"affinity": ["cache"]}, [4], {"n3"}),
        ({"strategy": "binpack", "antiAffinity": ["cache"]}, [4], {"n1", "n2"}),
        ({"strategy": "binpack", "preferredAffinity": ["cache"]}, [4], {"n3"}),
        ({"strategy": "binpack", "preferredAntiAffinity": ["cache"]}, [4], {"n1", "n2"}),
        ({"strategy": "binpack", "antiAffinity": ["web"]}, [1, 1, 1], None),
    ],
    ids=["defaults spread", "binpack", "spreadBy", "affinity", "anti-affinity",
         "preferred affinity", "preferred anti-affinity", "self anti-affinity"],
)
def test_spec_placement_reaches_the_scheduler(placement: dict[str, Any], per_node: list[int],
                                              used: set[str] | None) -> None:
    stored = stored_placement(placement)
    nodes = [stored_node("n1", "r1"), stored_node("n2", "r2"), stored_node("n3", "r2")]
    cache = stored_instance("cache-0", "cache", {}, node="n3")
    pending = [stored_instance(f"web-{k}", "web", stored) for k in range(4)]
    for seed in range(5):
        decided = placement_controller.plan(nodes, [cache, *pending], pending,
                                            random.Random(seed))
        counts = Counter(p.node for p in decided.placements)
        assert sorted(counts.values(), reverse=True) == per_node
        assert used is None or set(counts) <= used
        assert len(decided.failures) == 4 - sum(per_node)


def test_an_affinity_to_a_service_that_runs_nowhere_explains_itself() -> None:
    pending = [stored_instance("web-0", "web", stored_placement({"affinity": ["cache"]}))]
    decided = placement_controller.plan([stored_node("n1", "r1"), stored_node("n2", "r1")],
                                        pending, pending, random.Random(0))
    assert [f.explanation for f in decided.failures] == [
        "0/2 nodes fit: 2 no instance of cache (none placed yet)"]


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ({"affinity": ["db"], "antiAffinity": ["cache", "db"]},
         "spec.placement.antiAffinity[1]: 'db' is also in affinity"),
        ({"spreadBy": ["rack", "rack"]}, "spec.placement.spreadBy[1]: 'rack' is listed twice"),
        ({"spreadBy": ["-rack"]}, "spec.placement.spreadBy[0]: label key '-rack' is not valid"),
        ({"preferredAffinity": ["Cache"]}, "spec.placement.preferredAffinity[0]: 'Cache' is not"),
        ({"spread": ["rack"]}, "spec.placement.spread: unknown field; did you mean"),
    ],
    ids=["required contradiction", "spreadBy twice", "spreadBy bad key", "bad service name",
         "misspelt"],
)
def test_spec_placement_rules(placement: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        stored_placement(placement)
    found = [f"{v.path}: {v.message}" for v in caught.value.violations]
    assert any(v.startswith(expected) for v in found), found


# --- the plan applier's re-check -----------------------------------------------------------


def placement(instance_id: str, on: str, cpu: int = 100, memory: int = 128,
              ports: Sequence[int] = ()) -> Placement:
    return Placement(instance_id, on, Capacity(cpu, memory), frozenset(ports))


@pytest.mark.parametrize(
    ("nodes", "already", "placements", "conflicts"),
    [
        (THREE, [], [placement("x", "node-1"), placement("y", "node-1")], []),
        (THREE, [], [placement("x", "gone")], ["instance x on node gone: node is gone"]),
        ([node("node-1", state=NodeState.DOWN)], [], [placement("x", "node-1")],
         ["instance x on node node-1: node down"]),
        ([node("node-1", memory=1024)], [placed("z", "db", "node-1", memory=768)],
         [placement("x", "node-1", memory=512)],
         ["instance x on node node-1: insufficient memory (need 512 MiB, free 256 MiB)"]),
        ([node("node-1", cpu=1000)], [],
         [placement("x", "node-1", cpu=600), placement("y", "node-1", cpu=600)],
         ["instance y on node node-1: insufficient cpu (need 600 millicores, "
          "free 400 millicores)"]),
        (THREE, [placed("z", "db", "node-2", ports=[80])], [placement("x", "node-2", ports=[80])],
         ["instance x on node node-2: host port 80 in use"]),
        (THREE, [placed("x", "web", "node-3")], [placement("x", "node-2")],
         ["instance x on node node-2: already placed on node node-3"]),
        (THREE, [], [placement("x", "node-1"), placement("x", "node-2")],
         ["instance x on node node-2: already placed on node node-1"]),
    ],
    ids=["holds", "node gone", "node down", "capacity taken since", "plan overflows",
         "port taken since", "placed since", "placed twice"],
)
def test_check_plan(nodes: list[Node], already: list[PlacedInstance],
                    placements: list[Placement], conflicts: list[str]) -> None:
    snapshot = ClusterSnapshot(tuple(nodes), tuple(already))
    assert [str(c) for c in check_plan(snapshot, Plan(tuple(placements)))] == conflicts


# --- properties ------------------------------------------------------------------------------

LABEL_VALUES = st.sampled_from(["a", "b", "c"])
constraints = st.one_of(
    st.builds(lambda k, v, op: Constraint.of(k, op, v), st.sampled_from(["zone", "disk"]),
              LABEL_VALUES, st.sampled_from(["=", "!="])),
    st.builds(lambda k, vs, op: Constraint.of(k, op, values=sorted(vs)),
              st.sampled_from(["zone", "disk"]), st.sets(LABEL_VALUES, min_size=1),
              st.sampled_from(["in", "not-in"])),
    st.builds(lambda k, op: Constraint.of(k, op), st.sampled_from(["zone", "gpu"]),
              st.sampled_from(["exists", "not-exists"])),
)


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int = 30) -> ClusterSnapshot:
    count = draw(st.integers(0, max_nodes))
    nodes = tuple(
        Node(f"n{i}", "addr",
             Capacity(draw(st.integers(0, 8000)), draw(st.integers(0, 8192))),
             draw(st.dictionaries(st.sampled_from(["zone", "disk", "gpu"]), LABEL_VALUES)),
             draw(st.sampled_from([BOTH, frozenset({"docker"}), frozenset({"process"})])),
             draw(st.sampled_from([NodeState.READY] * 4 + [NodeState.DOWN,
                                                             NodeState.DRAINING])))
        for i in range(count))
    names = [n.name for n in nodes] + ["gone"]
    already = tuple(
        PlacedInstance(f"p{k}", "default", draw(SERVICES), draw(st.sampled_from(names)),
                       Capacity(draw(st.integers(1, 1500)), draw(st.integers(1, 1500))),
                       draw(PORTS))
        for k in range(draw(st.integers(0, 10))))
    return ClusterSnapshot(nodes, already)


SERVICES = st.sampled_from(["web", "api", "db", "cache"])
PORTS = st.frozensets(st.sampled_from([80, 443, 8080]), max_size=2)
requests = st.builds(
    PlacementRequest,
    instance_id=st.sampled_from([f"i{k}" for k in range(40)] + ["p0", "p1"]),
    namespace=st.just("default"),
    service=SERVICES,
    resources=st.builds(Capacity, st.integers(1, 2000), st.integers(1, 2000)),
    host_ports=PORTS,
    driver=st.sampled_from([None, None, "docker", "process"]),
    constraints=st.one_of(st.just(()), st.lists(constraints, max_size=2).map(tuple)),
    strategy=st.sampled_from(list(Strategy)),
    affinity=st.one_of(st.just(()), st.lists(SERVICES, max_size=2).map(tuple)),
    anti_affinity=st.one_of(st.just(()), st.lists(SERVICES, max_size=2).map(tuple)),
    preferred_affinity=st.lists(SERVICES, max_size=2).map(tuple),
    preferred_anti_affinity=st.lists(SERVICES, max_size=2).map(tuple),
    spread_by=st.lists(st.sampled_from(["zone", "disk"]), max_size=2, unique=True).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(clusters(), st.lists(requests, max_size=40), st.integers(0, 2**32))
def test_plans_are_sound(snapshot: ClusterSnapshot, pending: list[PlacementRequest],
                         seed: int) -> None:
    plan = schedule(snapshot, pending, random.Random(seed))
    nodes = {n.name: n for n in snapshot.nodes}
    by_id = {r.instance_id: r for r in reversed(pending)}  # the first request of an id counts

    # Every distinct request is answered exactly once; nothing is placed twice.
    answered = [p.instance_id for p in plan.placements] + [f.instance_id for f in plan.failures]
    assert sorted(answered) == sorted(by_id)
    assert len(plan.placements) <= len(pending)
    already = {p.id for p in snapshot.placed}
    assert not already & {p.instance_id for p in plan.placements}

    # No node over capacity, host ports never collide, every hard rule holds
    # (the (anti-)affinity ones against what ran there when it was placed).
    allocated = snapshot.allocated()
    ports = {name: [q for p in snapshot.placed if p.node == name for q in p.host_ports]
             for name in nodes}
    running = {name: {p.service for p in snapshot.placed if p.node == name} for name in nodes}
    for p in plan.placements:
        target, wanted = nodes[p.node], by_id[p.instance_id]
        assert p.resources == wanted.resources and p.host_ports == wanted.host_ports
        allocated[p.node] += p.resources
        assert allocated[p.node].fits(target.capacity)
        assert not set(ports[p.node]) & p.host_ports
        ports[p.node] += p.host_ports
        assert target.state is NodeState.READY
        assert wanted.driver is None or wanted.driver in target.drivers
        assert all(c.holds(target.labels) for c in wanted.constraints)
        assert set(wanted.affinity) - {wanted.service} <= running[p.node]
        assert not set(wanted.anti_affinity) & running[p.node]
        running[p.node].add(wanted.service)
    assert check_plan(snapshot, plan) == []

    # Explanations count every node once.
    for failure in plan.failures:
        if failure.instance_id in already:
            continue
        assert failure.explanation.startswith(f"0/{len(nodes)} nodes fit: ")
        if nodes:
            counts = re.findall(r"(?:: |, )(\d+) ", failure.explanation)
            assert sum(map(int, counts)) == len(nodes)

    # Deterministic given the seed.
    assert schedule(snapshot, pending, random.Random(seed)) == plan


@settings(max_examples=40, deadline=None)
@given(st.integers(9, 80), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**32))
def test_replicas_spread_evenly_when_everything_fits(nodes: int, services: int, replicas: int,
                                                      seed: int) -> None:
    cluster = [node(f"n{i}", cpu=100_000, memory=100_000) for i in range(nodes)]
    pending = [request(f"{s}-{r}", f"svc{s}", spread=True) for s in range(services)
               for r in range(replicas)]
    plan = run(cluster, pending, seed=seed)
    assert len(plan.placements) == len(pending)
    per_node = Counter((p.instance_id.split("-")[0], p.node) for p in plan.placements)
    assert max(per_node.values()) <= -(-replicas // nodes) + 1


@settings(max_examples=100, deadline=None)
@given(clusters(), requests, st.integers(0, 2**32))
def test_node_index_finds_exactly_the_statically_feasible_nodes(
        snapshot: ClusterSnapshot, pending: PlacementRequest, seed: int) -> None:
    order = list(range(len(snapshot.nodes)))
    random.Random(seed).shuffle(order)
    expected = [i for i in order
                if static_rejection(snapshot.nodes[i], pending.driver, pending.constraints) is None]
    index = NodeIndex(snapshot.nodes, order)
    assert index.feasible((pending.driver, pending.constraints)) == expected


@settings(max_examples=100, deadline=None)
@given(clusters(), requests.filter(lambda r: r.instance_id not in ("p0", "p1")),
       st.integers(0, 2**32))
def test_a_request_fails_only_when_no_node_fits(snapshot: ClusterSnapshot,
                                                pending: PlacementRequest, seed: int) -> None:
    alloc = Allocation(snapshot)
    dynamic = dynamic_check(alloc, pending)
    fitting = sum(
        1 for i, n in enumerate(snapshot.nodes)
        if static_rejection(n, pending.driver, pending.constraints) is None and dynamic(i) is None)
    plan = schedule(snapshot, [pending], random.Random(seed))
    assert len(plan.placements) == (1 if fitting else 0)
