"""Apply throughput and latency of a real `flotilla server` over gRPC.

Run from the repository root::

    python -m tests.bench.bench_api [--sequential 2000] [--threads 8] [--per-thread 500]

Starts its own server on a free port with a temporary data dir, applies
distinct small Service manifests sequentially and then from N threads (each
with a client of its own), prints applies/s and p50/p99 latency per phase, and
stops the server. Exits 1 with ``--check`` when a phase misses the target.
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
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.client import Client
from tests.bench.report import text_table
from tests.harness import ServerProcess

#: Reference targets: applies per second and p99 latency in milliseconds.
TARGET_RATE = 1_000.0
TARGET_P99_MS = 20.0
WARMUP = 50


def service(name: str) -> dict[str, Any]:
    """A small Service; no replicas, so the figures are the API's and the store's,
    not the reconciler's creating instances."""
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"image": "example:dev", "port": 8080, "replicas": 0}}


@dataclass(frozen=True)
class Phase:
    name: str
    #: Seconds each apply took, client side.
    latencies: Sequence[float]
    #: Wall-clock seconds for the whole phase.
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile_ms(self, p: int) -> float:
        """The ``p``-th percentile latency (1..99) in milliseconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    def meets_target(self) -> bool:
        return self.rate >= TARGET_RATE and self.percentile_ms(99) < TARGET_P99_MS


def timed_applies(client: Client, names: Sequence[str]) -> list[float]:
    """Apply one Service per name, one request each; the seconds each took."""
    latencies: list[float] = []
    for name in names:
        began = time.perf_counter()
        client.apply([(service(name), "bench")])
        latencies.append(time.perf_counter() - began)
    return latencies


def batched(address: str, count: int, size: int) -> Phase:
    """``size`` manifests per request (as `flotilla apply -f DIR` sends them);
    each object's latency is its request's."""
    with Client(address) as client:
        latencies: list[float] = []
        began = time.perf_counter()
        for start in range(0, count, size):
            docs = [(service(f"batch-{i}"), "bench") for i in range(start, start + size)]
            sent = time.perf_counter()
            client.apply(docs)
            latencies += [time.perf_counter() - sent] * size
        return Phase(f"batched x{size}", latencies, time.perf_counter() - began)


def grpc_floor(address: str, count: int) -> Phase:
    """Bare grpc health checks: what any unary call costs on this machine, the
    ceiling for one-apply-per-request throughput."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        latencies: list[float] = []
        began = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest())
            latencies.append(time.perf_counter() - sent)
        return Phase("no-op call (floor)", latencies, time.perf_counter() - began)


def sequential(address: str, count: int) -> Phase:
    with Client(address) as client:
        timed_applies(client, [f"warm-seq-{i}" for i in range(WARMUP)])
        began = time.perf_counter()
        latencies = timed_applies(client, [f"seq-{i}" for i in range(count)])
        return Phase("sequential", latencies, time.perf_counter() - began)


def concurrent(address: str, threads: int, per_thread: int) -> Phase:
    """``threads`` threads, each with its own Client, released together."""
    results: list[list[float]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []
    clients = [Client(address) for _ in range(threads)]
    for t, client in enumerate(clients):
        timed_applies(client, [f"warm-t{t}-{i}" for i in range(WARMUP // threads + 1)])
    go = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        go.wait()
        try:
            results[t] = timed_applies(clients[t], [f"t{t}-{i}" for i in range(per_thread)])
        except BaseException as error:  # reported below, after every thread ended
            failures.append(error)

    workers = [threading.Thread(target=work, args=(t,), name=f"bench-{t}")
               for t in range(threads)]
    for worker in workers:
        worker.start()
    go.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} of {threads} threads failed") from failures[0]
    return Phase(f"concurrent x{threads}", [s for r in results for s in r], elapsed)


def table(phases: Sequence[Phase]) -> str:
    rows = [("phase", "applies", "applies/s", "p50 ms", "p99 ms", "target")]
    rows += [
        (p.name, str(len(p.latencies)), f"{p.rate:,.0f}", f"{p.percentile_ms(50):.2f}",
         f"{p.percentile_ms(99):.2f}", "met" if p.meets_target() else "MISSED")
        for p in phases
    ]
    return text_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sequential", type=int, default=2_000, metavar="N")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=500, metavar="N")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless every phase does >= {TARGET_RATE:,.0f} applies/s "
                             f"with p99 < {TARGET_P99_MS:g} ms")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            phases = [
                grpc_floor(server.address, args.sequential),
                sequential(server.address, args.sequential),
                concurrent(server.address, args.threads, args.per_thread),
                batched(server.address, args.sequential * 2, 20),
            ]
        finally:
            server.stop()
    print(f"flotilla apply benchmark: small Service manifests over gRPC; "
          f"target >= {TARGET_RATE:,.0f} applies/s, p99 < {TARGET_P99_MS:g} ms")
    print(table(phases))
    applies = [p for p in phases if not p.name.startswith("no-op")]
    return 1 if args.check and not all(p.meets_target() for p in applies) else 0


if __name__ == "__main__":
    sys.exit(main())
