"""Scheduler throughput: one pass placing 10,000 instances of 200 services.

Run from the repository root::

    python -m tests.bench.bench_scheduler [--instances 10000] [--services 200]
        [--nodes 1000 5000] [--racks 25] [--repeat 3] [--check]

Simulated nodes come in mixed sizes (2-16 cores, 4-64 GiB), zones a/b/c,
ssd/hdd disks, one or both drivers, a few down or draining. Services mix
binpack and spread (spread also keeps a service's replicas apart), zone and
disk constraints, host ports, preferred affinity and anti-affinity. Two
workloads run at each node count: ``mixed`` as described, and ``spreadBy``,
the same with the nodes spread over ``--racks`` racks (label ``rack``) and
every service balancing its replicas across them (``spread_by=("rack",)``).
Each row is timed ``--repeat`` times (best run kept, a fresh rng each time);
the pass includes building its per-call state. Prints placements/s,
microseconds per placement, the plan applier's re-check time
(``check_plan``), the most replicas of one spread service on one node, the
worst rack skew (most minus fewest replicas of one service per rack; above
1 only where a service's constraints leave a rack few nodes and those fill
up), and the per-placement time ratio between node counts.
Exits 1 with ``--check`` when a row misses its target or the time per
placement grows faster than linearly in node count.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from controlplane.model.cluster import (
    Capacity,
    ClusterSnapshot,
    Constraint,
    Node,
    NodeState,
    PlacementRequest,
    Plan,
    Strategy,
)
from controlplane.scheduler import check_plan, schedule
from tests.bench.report import text_table

#: Placements per second on one core, for the mixed workload and for spreadBy.
TARGET_RATE = 5_000.0
SPREAD_BY_TARGET_RATE = 20_000.0
SEED = 20240601

SIZES = [Capacity(2_000, 4_096), Capacity(4_000, 8_192), Capacity(8_000, 16_384),
         Capacity(16_000, 65_536)]


def cluster(count: int, rng: random.Random, racks: int = 0) -> tuple[Node, ...]:
    """``count`` nodes; with ``racks``, node i is in rack ``i % racks``."""
    nodes = []
    for i in range(count):
        roll = rng.random()
        state = (NodeState.DOWN if roll < 0.02 else
                 NodeState.DRAINING if roll < 0.04 else NodeState.READY)
        drivers = frozenset({"docker"}) if rng.random() < 0.2 else frozenset({"docker", "process"})
        labels = {"zone": rng.choice("abc"), "disk": "ssd" if rng.random() < 0.4 else "hdd"}
        if racks:
            labels["rack"] = f"rack-{i % racks:02d}"
        nodes.append(Node(f"node-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                          rng.choice(SIZES), labels, drivers, state))
    return tuple(nodes)


def workload(services: int, instances: int, rng: random.Random,
             spread_by: tuple[str, ...] = ()) -> list[PlacementRequest]:
    """``instances`` requests spread evenly over ``services``, interleaved."""
    constraint_choices: list[tuple[Constraint, ...]] = [
        (), (), (), (), (), (),
        (Constraint.of("zone", "=", "a"),), (Constraint.of("zone", "=", "b"),),
        (Constraint.of("disk", "=", "ssd"),),
        (Constraint.of("zone", "in", values=["b", "c"]), Constraint.of("disk", "!=", "hdd")),
    ]
    requests = []
    per_service = instances // services
    for s in range(services):
        name = f"svc-{s:03d}"
        others = [f"svc-{o:03d}" for o in rng.sample(range(services), 2) if o != s]
        base = PlacementRequest(
            instance_id="", namespace="bench", service=name,
            resources=Capacity(rng.choice([100, 250, 500]), rng.choice([128, 256, 512])),
            host_ports=frozenset({9000 + s}) if rng.random() < 0.05 else frozenset(),
            driver="process" if rng.random() < 0.1 else None,
            constraints=rng.choice(constraint_choices),
            strategy=Strategy.SPREAD if rng.random() < 0.2 else Strategy.BINPACK,
            preferred_affinity=tuple(others[:1]) if rng.random() < 0.05 else (),
            preferred_anti_affinity=tuple(others[1:]) if rng.random() < 0.1 else (),
            spread_by=spread_by,
        )
        extra = 1 if s < instances - per_service * services else 0
        for r in range(per_service + extra):
            requests.append(replace(base, instance_id=f"{name}-{r}"))
    rng.shuffle(requests)
    return requests


@dataclass(frozen=True)
class Run:
    workload: str
    nodes: int
    requests: int
    placed: int
    seconds: float
    check_seconds: float
    #: The most replicas of one service on one node, among spread services
    #: without preferred affinity (binpack stacks replicas on purpose, and an
    #: affinity bonus may outweigh spreading them).
    worst_stacking: int
    #: The most minus the fewest replicas of one service per rack, the worst
    #: over services (0 without racks).
    rack_skew: int
    nodes_used: int
    target: float

    @property
    def rate(self) -> float:
        return self.placed / self.seconds

    @property
    def micros(self) -> float:
        return self.seconds / self.placed * 1e6


def measure(node_count: int, services: int, instances: int, repeat: int,
            racks: int = 0) -> Run:
    setup = random.Random(SEED)
    snapshot = ClusterSnapshot(cluster(node_count, setup, racks))
    pending = workload(services, instances, setup, ("rack",) if racks else ())
    best: tuple[float, Plan] | None = None
    for attempt in range(repeat):
        rng = random.Random(SEED + attempt)
        began = time.perf_counter()
        plan = schedule(snapshot, pending, rng)
        elapsed = time.perf_counter() - began
        if best is None or elapsed < best[0]:
            best = (elapsed, plan)
    assert best is not None
    seconds, plan = best
    began = time.perf_counter()
    conflicts = check_plan(snapshot, plan)
    check_seconds = time.perf_counter() - began
    if conflicts:
        raise AssertionError(f"the plan does not re-check: {conflicts[0]}")
    spread = {r.instance_id: r.service for r in pending
              if r.strategy is Strategy.SPREAD and not r.preferred_affinity}
    stacking = Counter((spread[p.instance_id], p.node) for p in plan.placements
                       if p.instance_id in spread)
    return Run("spreadBy" if racks else "mixed", node_count, len(pending),
               len(plan.placements), seconds, check_seconds,
               max(stacking.values(), default=0), skew(snapshot, pending, plan, racks),
               len({p.node for p in plan.placements}),
               SPREAD_BY_TARGET_RATE if racks else TARGET_RATE)


def skew(snapshot: ClusterSnapshot, pending: Sequence[PlacementRequest], plan: Plan,
         racks: int) -> int:
    """The worst, over services, of most minus fewest replicas per rack."""
    if not racks:
        return 0
    rack_of = {n.name: n.labels["rack"] for n in snapshot.nodes}
    service_of = {r.instance_id: r.service for r in pending}
    per_rack: dict[str, Counter[str]] = {}
    for p in plan.placements:
        per_rack.setdefault(service_of[p.instance_id], Counter())[rack_of[p.node]] += 1
    every = sorted(set(rack_of.values()))
    return max(max(c[r] for r in every) - min(c[r] for r in every) for c in per_rack.values())


def table(runs: Sequence[Run]) -> str:
    rows = [("workload", "nodes", "requests", "placed", "placements/s", "us/placement",
             "check ms", "max replicas/node", "rack skew", "nodes used", "target")]
    rows += [(r.workload, f"{r.nodes:,}", f"{r.requests:,}", f"{r.placed:,}", f"{r.rate:,.0f}",
              f"{r.micros:.1f}", f"{r.check_seconds * 1000:.1f}", str(r.worst_stacking),
              str(r.rack_skew) if r.workload == "spreadBy" else "-", f"{r.nodes_used:,}",
              f"{r.target:,.0f} " + ("met" if r.rate >= r.target else "MISSED"))
             for r in runs]
    return text_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--racks", type=int, default=25,
                        help="racks of the spreadBy rows (0: no spreadBy rows)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every row meets its target (placements/s) and the "
                             "time per placement grows at most linearly with node count")
    args = parser.parse_args(argv)

    rows = {"mixed": [measure(n, args.services, args.instances, args.repeat)
                      for n in args.nodes]}
    if args.racks:
        rows["spreadBy"] = [measure(n, args.services, args.instances, args.repeat, args.racks)
                            for n in args.nodes]
    runs = [run for workload in rows.values() for run in workload]
    print(f"flotilla scheduler benchmark: {args.instances:,} instances of {args.services} "
          f"services, one pass, best of {args.repeat}; spreadBy over {args.racks} racks; "
          "targets in placements/s on one core")
    print(table(runs))
    linear = True
    for workload, measured in rows.items():
        for small, large in zip(measured, measured[1:]):
            ratio = large.micros / small.micros
            nodes = large.nodes / small.nodes
            linear = linear and ratio <= nodes
            print(f"{workload}: time per placement, {large.nodes:,} vs {small.nodes:,} nodes: "
                  f"x{ratio:.2f} for x{nodes:g} nodes")
    met = all(r.rate >= r.target for r in runs) and linear
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
