"""Time from an instance turning healthy to Consul listing it as passing.

Run from the repository root::

    python -m tests.bench.bench_consul [--sequential 200] [--burst 200]

Starts a dev ``consul agent`` (tests/consul.py; `make consul` builds it) and
the registry reconciler on a real SQLite store in a temporary directory, the
way ``flotilla server --catalog`` runs them. Each sample writes an Instance's
status as ``healthy`` (what the server does when an agent reports it) and
times until ``/v1/health/service/<name>?passing``, read with Consul blocking
queries on a thread of its own, lists it. Phases: one instance at a time, and
a burst of instances turning healthy together. Prints p50/p99/max per phase
and, for the burst, how many entries per second reach Consul's listing;
exits 1 with ``--check`` when the one-at-a-time p99 misses the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.catalog.consul import ConsulCatalog
from controlplane.catalog.registrations import registration_id
from controlplane.catalog.registry import Registry
from controlplane.model import Resource
from controlplane.store import SqliteStore
from tests.bench.report import text_table
from tests.consul import ConsulAgent, find_consul

SERVICE = "bench-web"
#: Reference target: p99 milliseconds from healthy to listed, one at a time.
TARGET_P99_MS = 500.0
#: Seconds a sample may take before the benchmark gives up.
SAMPLE_TIMEOUT = 30.0


class Listings:
    """Follows the service's passing entries with blocking queries and
    notes when each entry ID first appeared (perf_counter seconds)."""

    def __init__(self, consul: ConsulAgent) -> None:
        self._consul = consul
        self._seen: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="listings", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        client = self._consul.client
        index = None
        while not self._stop.is_set():
            index, entries = client.health.service(SERVICE, passing=True, index=index,
                                                   wait="1s")
            now = time.perf_counter()
            with self._changed:
                for entry in entries:
                    self._seen.setdefault(entry["Service"]["ID"], now)
                self._changed.notify_all()

    def wait_for(self, entry_ids: Sequence[str]) -> dict[str, float]:
        """When each of ``entry_ids`` was first listed."""
        end = time.monotonic() + SAMPLE_TIMEOUT
        with self._changed:
            while not all(i in self._seen for i in entry_ids):
                if not self._changed.wait(timeout=max(0.0, end - time.monotonic())):
                    missing = [i for i in entry_ids if i not in self._seen]
                    raise TimeoutError(f"{len(missing)} entries not listed after "
                                       f"{SAMPLE_TIMEOUT:g}s, e.g. {missing[0]}")
            return {i: self._seen[i] for i in entry_ids}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Phase:
    name: str
    #: Seconds from each instance's healthy status to Consul listing it.
    latencies: Sequence[float]
    #: Seconds from the first healthy status to the last listing.
    span: float
    #: Whether the target applies (a burst is bound by throughput instead).
    targeted: bool

    def percentile_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    def meets_target(self) -> bool:
        return not self.targeted or self.percentile_ms(99) < TARGET_P99_MS

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.span


def instance(name: str) -> Resource:
    return Resource(kind="Instance", name=name, labels={"flotilla.dev/service": SERVICE},
                    spec={"service": SERVICE, "node": "n1", "revision": 1})


def turn_healthy(store: SqliteStore, names: Sequence[str], first_port: int) -> dict[str, float]:
    """Write each instance's status as healthy; when each write happened."""
    began: dict[str, float] = {}
    for offset, name in enumerate(names):
        began[registration_id("default", name)] = time.perf_counter()
        store.write_status(instance(name).key, {
            "state": "healthy", "address": "127.0.0.2", "port": first_port + offset})
    return began


def run_phase(store: SqliteStore, listings: Listings, name: str, count: int,
              together: bool, first_port: int) -> Phase:
    names = [f"{SERVICE}-{name}-{i}" for i in range(count)]
    store.apply([instance(n) for n in names])
    began: dict[str, float] = {}
    listed: dict[str, float] = {}
    if together:
        began = turn_healthy(store, names, first_port)
        listed = listings.wait_for(list(began))
    else:
        for offset, one in enumerate(names):
            began.update(turn_healthy(store, [one], first_port + offset))
            listed.update(listings.wait_for([registration_id("default", one)]))
    return Phase(name, [listed[i] - began[i] for i in began],
                 max(listed.values()) - min(began.values()), targeted=not together)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sequential", type=int, default=200, metavar="N",
                        help="instances turned healthy one at a time")
    parser.add_argument("--burst", type=int, default=200, metavar="N",
                        help="instances turned healthy together")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless one at a time p99 < {TARGET_P99_MS:g} ms")
    args = parser.parse_args(argv)
    if find_consul() is None:
        print("no consul on PATH or in the Flotilla cache: run `make consul`", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        consul = ConsulAgent(Path(tmp) / "consul").start()
        store = SqliteStore(Path(tmp) / "flotilla.db")
        registry = Registry(store, ConsulCatalog.from_url(consul.url))
        listings = Listings(consul)
        try:
            store.apply([Resource(kind="Service", name=SERVICE, spec={"port": 8080}),
                         Resource(kind="Node", namespace="cluster", name="n1",
                                  spec={"address": "127.0.0.2"})])
            registry.start()
            phases = [
                run_phase(store, listings, "one at a time", args.sequential, False, 20_000),
                run_phase(store, listings, f"burst of {args.burst}", args.burst, True, 40_000),
            ]
        finally:
            registry.stop()
            listings.stop()
            store.close()
            consul.stop()

    print("flotilla catalog benchmark: instance healthy in the store -> listed passing by "
          f"Consul's health API (dev agent, loopback); target p99 < {TARGET_P99_MS:g} ms")
    rows = [("phase", "instances", "p50 ms", "p99 ms", "max ms", "listed/s", "target")]
    rows += [(p.name, str(len(p.latencies)), f"{p.percentile_ms(50):.1f}",
              f"{p.percentile_ms(99):.1f}", f"{max(p.latencies) * 1000:.1f}",
              "-" if p.targeted else f"{p.rate:,.0f}",
              ("met" if p.meets_target() else "MISSED") if p.targeted else "-")
             for p in phases]
    print(text_table(rows))
    return 1 if args.check and not all(p.meets_target() for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
