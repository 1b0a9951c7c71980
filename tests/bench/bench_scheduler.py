"""Scheduler throughput: one pass placing 10,000 instances of 200 services.

Run from the repository root::

    python -m tests.bench.bench_scheduler [--instances 10000] [--services 200]
        [--nodes 1000 5000] [--repeat 3] [--check]

Simulated nodes come in mixed sizes (2-16 cores, 4-64 GiB), zones a/b/c,
ssd/hdd disks, one or both drivers, a few down or draining. Services mix
binpack and spread, zone and disk constraints, host ports, affinity and
anti-affinity, and every service spreads its replicas (the default). Each
node count is timed ``--repeat`` times (best run kept, a fresh rng each
time); the pass includes building its per-call state. Prints placements/s,
microseconds per placement, how well replicas spread, the plan applier's
re-check time (``check_plan``), and the per-placement time ratio between
node counts.
Exits 1 with ``--check`` when a run misses the target or the time per
placement grows faster than linearly in node count.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

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

#: Placements per second on one core.
TARGET_RATE = 5_000.0
SEED = 20240601

SIZES = [Capacity(2_000, 4_096), Capacity(4_000, 8_192), Capacity(8_000, 16_384),
         Capacity(16_000, 65_536)]


def cluster(count: int, rng: random.Random) -> tuple[Node, ...]:
    nodes = []
    for i in range(count):
        roll = rng.random()
        state = (NodeState.DOWN if roll < 0.02 else
                 NodeState.DRAINING if roll < 0.04 else NodeState.READY)
        drivers = frozenset({"docker"}) if rng.random() < 0.2 else frozenset({"docker", "process"})
        labels = {"zone": rng.choice("abc"), "disk": "ssd" if rng.random() < 0.4 else "hdd"}
        nodes.append(Node(f"node-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                          rng.choice(SIZES), labels, drivers, state))
    return tuple(nodes)


def workload(services: int, instances: int, rng: random.Random) -> list[PlacementRequest]:
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
            affinity=tuple(others[:1]) if rng.random() < 0.05 else (),
            anti_affinity=tuple(others[1:]) if rng.random() < 0.1 else (),
        )
        extra = 1 if s < instances - per_service * services else 0
        for r in range(per_service + extra):
            requests.append(PlacementRequest(
                f"{name}-{r}", base.namespace, base.service, base.resources, base.host_ports,
                base.driver, base.constraints, base.strategy, base.affinity,
                base.anti_affinity))
    rng.shuffle(requests)
    return requests


@dataclass(frozen=True)
class Run:
    nodes: int
    requests: int
    placed: int
    seconds: float
    check_seconds: float
    #: The most replicas of one service on one node, among services without
    #: affinity (an affinity bonus may outweigh spreading replicas).
    worst_stacking: int
    nodes_used: int

    @property
    def rate(self) -> float:
        return self.placed / self.seconds

    @property
    def micros(self) -> float:
        return self.seconds / self.placed * 1e6


def measure(node_count: int, services: int, instances: int, repeat: int) -> Run:
    setup = random.Random(SEED)
    snapshot = ClusterSnapshot(cluster(node_count, setup))
    pending = workload(services, instances, setup)
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
    spread = {r.instance_id: r.service for r in pending if not r.affinity}
    stacking = Counter((spread[p.instance_id], p.node) for p in plan.placements
                       if p.instance_id in spread)
    return Run(node_count, len(pending), len(plan.placements), seconds, check_seconds,
               max(stacking.values(), default=0), len({p.node for p in plan.placements}))


def table(runs: Sequence[Run]) -> str:
    rows = [("nodes", "requests", "placed", "placements/s", "us/placement", "check ms",
             "max replicas/node", "nodes used", "target")]
    rows += [(f"{r.nodes:,}", f"{r.requests:,}", f"{r.placed:,}", f"{r.rate:,.0f}",
              f"{r.micros:.1f}", f"{r.check_seconds * 1000:.1f}", str(r.worst_stacking),
              f"{r.nodes_used:,}", "met" if r.rate >= TARGET_RATE else "MISSED")
             for r in runs]
    return text_table(rows, first_left=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless every run places >= {TARGET_RATE:,.0f}/s and the "
                             "time per placement grows at most linearly with node count")
    args = parser.parse_args(argv)

    runs = [measure(n, args.services, args.instances, args.repeat) for n in args.nodes]
    print(f"flotilla scheduler benchmark: {args.instances:,} instances of {args.services} "
          f"services, one pass, best of {args.repeat}; target >= {TARGET_RATE:,.0f} "
          "placements/s on one core")
    print(table(runs))
    linear = True
    for small, large in zip(runs, runs[1:]):
        ratio = large.micros / small.micros
        nodes = large.nodes / small.nodes
        linear = linear and ratio <= nodes
        print(f"time per placement, {large.nodes:,} vs {small.nodes:,} nodes: x{ratio:.2f} "
              f"for x{nodes:g} nodes")
    met = all(r.rate >= TARGET_RATE for r in runs) and linear
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
