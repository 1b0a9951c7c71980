"""Time from an instance turning healthy to Consul listing it as passing,
and registrations per second through gRPC into Consul.

Run from the repository root::

    python -m tests.bench.bench_consul [--sequential 200] [--burst 200]
        [--grpc-sequential 200] [--grpc 5000] [--threads 8] [--services 50]

Starts a dev ``consul agent`` (tests/consul.py; `make consul` builds it).

- Store phases: the registry reconciler on a real SQLite store in a
  temporary directory, the way ``flotilla server --catalog`` runs it; each
  sample writes an Instance's status as ``healthy`` (what the server does when
  an agent reports it) and times until ``/v1/health/service/<name>?passing``,
  followed with Consul blocking queries, lists it: one instance at a time,
  then a burst turning healthy together.
- gRPC phases: a real ``flotilla server --catalog`` process. An instance a
  client registers is healthy from its registration: ``RegisterInstance``
  calls one at a time (each timed until Consul lists it), then from
  ``--threads`` threads as fast as they go, spread over ``--services``
  services. There every tenth registration goes to one of five probe
  services whose listings are followed for the latency (following thousands
  of entries would cost Consul more than registering them), and the rate
  counts until Consul's health API lists every registration as passing.

Prints p50/p99/max per phase and how many entries per second reach Consul's
listing; exits 1 with ``--check`` when a one-at-a-time p99 or the sustained
gRPC rate misses its target.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from controlplane.api.flotilla.v1 import instances_pb2, instances_pb2_grpc
from controlplane.catalog.consul import ConsulCatalog
from controlplane.catalog.registrations import registration_id
from controlplane.catalog.registry import Registry
from controlplane.client import Client
from controlplane.model import Resource
from controlplane.store import Store
from tests.bench.report import text_table
from tests.consul import ConsulAgent, find_consul
from tests.harness import ServerProcess

SERVICE = "bench-web"
#: The service gRPC clients register instances of (no workload).
REGISTERED = "bench-pay"
#: Reference targets: p99 milliseconds from healthy to listed, one at a
#: time; entries per second listed while clients register as fast as they go.
TARGET_P99_MS = 500.0
TARGET_RATE = 500.0
#: Seconds a sample may take before the benchmark gives up.
SAMPLE_TIMEOUT = 60.0
#: The TTL of the benchmark's registrations: longer than a run, so no
#: heartbeat is due (heartbeats touch no store and no catalog).
REGISTERED_TTL = 300
#: Service IDs in a /v1/health/service answer (check entries name theirs
#: "ServiceID"), found without decoding thousands of entries per answer.
_SERVICE_ID = re.compile(rb'"ID":\s*"([^"]+)"')


class Listings:
    """Follows services' passing entries with blocking queries (a thread per
    service) and notes when each entry ID first appeared (perf_counter
    seconds)."""

    def __init__(self, consul: ConsulAgent, services: Sequence[str] = (SERVICE,)) -> None:
        self._consul = consul
        self._seen: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._follow, args=(service,), daemon=True,
                                          name=f"listings-{service}") for service in services]
        for thread in self._threads:
            thread.start()

    def _follow(self, service: str) -> None:
        url = f"{self._consul.http}/v1/health/service/{urllib.parse.quote(service)}"
        index = "0"
        while not self._stop.is_set():
            with urllib.request.urlopen(f"{url}?passing&index={index}&wait=1s",
                                        timeout=10) as reply:
                index = reply.headers.get("X-Consul-Index", "0")
                body = reply.read()
            now = time.perf_counter()
            with self._changed:
                for found in _SERVICE_ID.findall(body):
                    self._seen.setdefault(found.decode(), now)
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
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass(frozen=True)
class Phase:
    name: str
    #: Seconds from each instance's healthy status to Consul listing it.
    latencies: Sequence[float]
    #: Seconds from the first healthy status to the last listing.
    span: float
    #: Which target applies: "p99" (one at a time), "rate" (sustained
    #: registrations) or "" (a burst, shown for what it is).
    target: str
    #: Calls per second the clients made (gRPC phases), 0 for store phases.
    calls: float = 0.0
    #: How many entries ``span`` covers, when not one per latency sample.
    counted: int = 0

    def percentile_ms(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    def meets_target(self) -> bool:
        if self.target == "p99":
            return self.percentile_ms(99) < TARGET_P99_MS
        if self.target == "rate":
            return self.rate >= TARGET_RATE
        return True

    @property
    def rate(self) -> float:
        """Entries listed per second, first healthy to last listed."""
        return (self.counted or len(self.latencies)) / self.span

    def verdict(self) -> str:
        if not self.target:
            return "-"
        wanted = (f"p99 < {TARGET_P99_MS:g} ms" if self.target == "p99"
                  else f">= {TARGET_RATE:g}/s")
        return f"{wanted}: {'met' if self.meets_target() else 'MISSED'}"


def instance(name: str) -> Resource:
    return Resource(kind="Instance", name=name, labels={"flotilla.dev/service": SERVICE},
                    spec={"service": SERVICE, "node": "n1", "revision": 1})


def turn_healthy(store: Store, names: Sequence[str], first_port: int) -> dict[str, float]:
    """Write each instance's status as healthy; when each write happened."""
    began: dict[str, float] = {}
    for offset, name in enumerate(names):
        began[registration_id("default", name)] = time.perf_counter()
        store.write_status(instance(name).key, {
            "state": "healthy", "address": "127.0.0.2", "port": first_port + offset})
    return began


def run_phase(store: Store, listings: Listings, name: str, count: int,
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
                 max(listed.values()) - min(began.values()), target="" if together else "p99")


class Registrar:
    """RegisterInstance calls from ``threads`` threads (a channel each);
    notes when each call began, by entry ID (perf_counter seconds)."""

    def __init__(self, address: str, threads: int) -> None:
        self.began: dict[str, float] = {}
        self._lock = threading.Lock()
        self._channels = [grpc.insecure_channel(address) for _ in range(threads)]
        self._stubs = [instances_pb2_grpc.InstanceServiceStub(c) for c in self._channels]

    def register(self, service: str, port: int) -> str:
        """Register 127.0.0.5:``port`` as an instance of ``service``; its entry ID."""
        request = instances_pb2.RegisterInstanceRequest(service=service, address="127.0.0.5",
                                                        port=port)
        request.ttl.FromSeconds(REGISTERED_TTL)
        start = time.perf_counter()
        instance = self._stubs[port % len(self._stubs)].RegisterInstance(
            request, timeout=SAMPLE_TIMEOUT)
        entry_id = registration_id(instance.namespace, instance.id)
        with self._lock:
            self.began[entry_id] = start
        return entry_id

    @property
    def calls(self) -> float:
        """Calls per second, first call to last."""
        return len(self.began) / (max(self.began.values()) - min(self.began.values()))

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def passing_count(consul: ConsulAgent, prefix: str) -> int:
    """How many entries of services named ``prefix...`` Consul lists as passing."""
    with urllib.request.urlopen(f"{consul.http}/v1/health/state/passing", timeout=10) as reply:
        body = reply.read()
    return len(re.findall(rb'"ServiceName":\s*"' + re.escape(prefix.encode()), body))


def register_one_at_a_time(address: str, consul: ConsulAgent, count: int) -> Phase:
    """``count`` registrations of REGISTERED, each waited for in Consul."""
    registrar, listings = Registrar(address, 1), Listings(consul, [REGISTERED])
    try:
        listed = {}
        for offset in range(count):
            entry_id = registrar.register(REGISTERED, 10_000 + offset)
            listed.update(listings.wait_for([entry_id]))
    finally:
        listings.stop()
        registrar.close()
    began = registrar.began
    return Phase("gRPC, one at a time", [listed[i] - began[i] for i in began],
                 max(listed.values()) - min(began.values()), target="p99",
                 calls=registrar.calls)


def register_sustained(address: str, consul: ConsulAgent, count: int, threads: int,
                       services: Sequence[str], probes: Sequence[str]) -> Phase:
    """``count`` registrations from ``threads`` threads as fast as they go,
    round robin over ``services``, every tenth one of ``probes``. Latency is
    sampled on the probes (following every entry would cost Consul more than
    registering them); the rate counts every entry, until Consul lists all."""
    registrar, listings = Registrar(address, threads), Listings(consul, probes)
    targets = [probes[(i // 10) % len(probes)] if i % 10 == 0 else services[i % len(services)]
               for i in range(count)]
    try:
        with ThreadPoolExecutor(threads) as pool:
            sampled = [entry for entry, target in zip(
                pool.map(registrar.register, targets, range(20_000, 20_000 + count)),
                targets, strict=True) if target in probes]
        listed = listings.wait_for(sampled)
        end = time.monotonic() + SAMPLE_TIMEOUT
        while passing_count(consul, REGISTERED + "-") < count:
            if time.monotonic() > end:
                raise TimeoutError(f"not all {count} registrations listed after "
                                   f"{SAMPLE_TIMEOUT:g}s")
            time.sleep(0.05)
        done = time.perf_counter()
    finally:
        listings.stop()
        registrar.close()
    began = registrar.began
    return Phase(f"gRPC, {threads} threads, {count:,} over {len(services) + len(probes)} "
                 "services", [listed[i] - began[i] for i in sampled],
                 done - min(began.values()), target="rate", calls=registrar.calls,
                 counted=count)


def grpc_phases(tmp: Path, consul: ConsulAgent, sequential: int, count: int,
                threads: int, spread: int) -> list[Phase]:
    """The gRPC phases against a real ``flotilla server --catalog``."""
    server = ServerProcess(tmp / "server", extra_args=("--catalog", consul.url)).start()
    many = [f"{REGISTERED}-{i:02d}" for i in range(spread)]
    probes = [f"{REGISTERED}-probe-{i}" for i in range(5)]
    try:
        with Client(server.address) as client:
            client.apply([({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                            "metadata": {"name": name},
                            "spec": {"port": 9000, "protocol": "grpc",
                                     "registration": {"cidrs": ["127.0.0.0/8"]}}}, "bench")
                          for name in [REGISTERED, *many, *probes]])
        return [register_one_at_a_time(server.address, consul, sequential),
                register_sustained(server.address, consul, count, threads, many, probes)]
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sequential", type=int, default=200, metavar="N",
                        help="instances turned healthy one at a time")
    parser.add_argument("--burst", type=int, default=200, metavar="N",
                        help="instances turned healthy together")
    parser.add_argument("--grpc-sequential", type=int, default=200, metavar="N",
                        help="instances registered over gRPC one at a time")
    parser.add_argument("--grpc", type=int, default=5000, metavar="N",
                        help="instances registered over gRPC from --threads threads")
    parser.add_argument("--threads", type=int, default=8, metavar="N",
                        help="gRPC clients registering at once")
    parser.add_argument("--services", type=int, default=50, metavar="N",
                        help="services the --grpc registrations are spread over")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless one at a time p99 < {TARGET_P99_MS:g} ms and "
                             f"gRPC registrations reach Consul at >= {TARGET_RATE:g}/s")
    args = parser.parse_args(argv)
    if find_consul() is None:
        print("no consul on PATH or in the Flotilla cache: run `make consul`", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        consul = ConsulAgent(Path(tmp) / "consul").start()
        store = Store(Path(tmp) / "flotilla.db")
        registry = Registry(store, ConsulCatalog.from_url(consul.url))
        listings = Listings(consul)
        try:
            store.apply([Resource(kind="Service", name=SERVICE, spec={"port": 8080}),
                         Resource(kind="Node", namespace="cluster", name="n1",
                                  spec={"address": "127.0.0.2"})])
            registry.start()
            phases = [
                run_phase(store, listings, "store, one at a time", args.sequential, False,
                          20_000),
                run_phase(store, listings, f"store, burst of {args.burst}", args.burst, True,
                          40_000),
            ]
            registry.stop()
            listings.stop()
            phases += grpc_phases(Path(tmp), consul, args.grpc_sequential, args.grpc,
                                  args.threads, args.services)
        finally:
            registry.stop()
            listings.stop()
            store.close()
            consul.stop()

    print("flotilla catalog benchmark: instance healthy (status written in the store, or "
          "registered over gRPC) -> listed passing by Consul's health API (dev agent, "
          "loopback)")
    rows = [("phase", "instances", "calls/s", "p50 ms", "p99 ms", "max ms", "listed/s",
             "target")]
    rows += [(p.name, f"{p.counted or len(p.latencies):,}",
              f"{p.calls:,.0f}" if p.calls else "-",
              f"{p.percentile_ms(50):.1f}", f"{p.percentile_ms(99):.1f}",
              f"{max(p.latencies) * 1000:.1f}", f"{p.rate:,.0f}", p.verdict())
             for p in phases]
    print(text_table(rows))
    return 1 if args.check and not all(p.meets_target() for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
