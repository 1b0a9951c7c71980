"""Identity benchmark: how fast the mesh CA signs, and what mTLS + RBAC cost.

- CA alone: leaves signed per second from ready CSRs (the keys are made on
  the nodes, so their cost is not the CA's);
- through a real `flotilla server`: SignCertificate calls per second from 8
  threads, each authorized against the store and recorded as a Certificate;
- data plane: p50/p99 and max req/s of an HTTP call through two sidecars,
  plaintext vs mutual TLS with an RBAC filter (intentions), on loopback.

Run: ``python -m tests.bench.bench_identity`` (``make bench``).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from controlplane.api.flotilla.v1 import agent_pb2
from controlplane.identity.ca import CertificateAuthority, new_key_and_csr, new_root, spiffe_id
from controlplane.model import Resource
from controlplane.xds.cache import XdsCache
from controlplane.xds.intentions import ranked
from controlplane.xds.mesh import SIDECAR, Endpoint, MeshView, Proxy, ServiceView
from sidecar.identity import Certificates, Signed
from tests.certs import one_by_one
from sidecar.sds import SdsServer
from tests.bench.bench_xds import (
    NAMESPACE,
    ROOT,
    ads_server,
    answers,
    envoys,
    percentile,
    saturate,
    sequential,
    wait_until,
)
from tests.bench.report import text_table
from tests.harness import ServerProcess, eventually, free_port

TARGET_SIGNS = 1_000.0
DOMAIN = "bench.test"


def ca_alone(count: int) -> float:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = CertificateAuthority(DOMAIN, [new_root(DOMAIN, now)])
    identity = spiffe_id(DOMAIN, "default", "web")
    csrs = [new_key_and_csr(identity)[1] for _ in range(count)]
    began = time.perf_counter()
    for csr in csrs:
        ca.sign(csr, identity, datetime.timedelta(hours=24), now)
    return count / (time.perf_counter() - began)


def through_server(count: int, threads: int, batch: int = 1) -> tuple[float, list[float]]:
    """Leaves signed/s against a real server, for instances placed on a node
    that joined (no agent runs them: only the API path is measured), over
    mutual TLS with the node's certificate: one per SignCertificate call, or
    ``batch`` per SignCertificates call (as an agent starting many instances
    asks). Latencies are per call."""
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-ca-") as tmp:
        server = ServerProcess(Path(tmp) / "server").start()
        try:
            link = server.join("n1", "127.0.0.2")  # its calls: mutual TLS, node certificate
            stub = link.agent
            with server.client() as client:
                client.apply([({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                                "metadata": {"name": "web"},
                                "spec": {"command": ["true"], "replicas": 20,
                                         "resources": {"cpu": 10, "memory": 4}}}, "web")])
                placed = eventually(lambda: [i["metadata"]["name"] for i in
                                             client.list("Instance", "default")[0]
                                             if i["spec"].get("node") == "n1"] or None,
                                    30, "placed instances")
            csrs = [new_key_and_csr(spiffe_id("flotilla.local", "default", "web"))[1]
                    for _ in range(50)]
            latencies: list[float] = []
            lock = threading.Lock()

            def request(n: int) -> agent_pb2.SignCertificateRequest:
                return agent_pb2.SignCertificateRequest(
                    node="n1", namespace="default", instance_id=placed[n % len(placed)],
                    csr_pem=csrs[n % len(csrs)])

            def run(worker: int) -> None:
                mine = []
                for n in range(count // threads // batch):
                    began = time.perf_counter()
                    if batch == 1:
                        stub.SignCertificate(request(worker + n), timeout=30)
                    else:
                        reply = stub.SignCertificates(agent_pb2.SignCertificatesRequest(
                            node="n1", requests=[request(worker + n + i) for i in range(batch)]),
                            timeout=30)
                        assert all(r.HasField("certificate") for r in reply.results)
                    mine.append(time.perf_counter() - began)
                with lock:
                    latencies.extend(mine)

            began = time.perf_counter()
            workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(600)
            rate = len(latencies) * batch / (time.perf_counter() - began)
            link.close()
            return rate, latencies
        finally:
            server.stop()


def data_plane(requests: int, seconds: float, connections: int) -> list[tuple[str, list[float],
                                                                               float, int]]:
    """(path, latencies, req/s, errors) for: direct, plaintext sidecars, mTLS + RBAC."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = CertificateAuthority(DOMAIN, [new_root(DOMAIN, now)])

    def sign(namespace: str, instance: str, csr: str) -> Signed:
        leaf = ca.sign(csr, spiffe_id(DOMAIN, namespace, instance.rpartition("-")[0]),
                       datetime.timedelta(hours=1), now)
        return Signed(leaf.cert_pem, ca.bundle(), leaf.identity, leaf.serial)

    app = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "tests.bench.bench_xds", "--echo", str(app),
                             "--echo-seconds", str(120 + 4 * seconds)], cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    wait_until(lambda: answers(app), 30, "the echo app", interval=0.05)
    results = [("direct", *measure(app, requests, seconds, connections))]
    certificates = Certificates(one_by_one(sign))
    intentions = tuple(ranked([Resource(kind="Intention", name="caller-to-echo",
                                        namespace=NAMESPACE,
                                        spec={"source": "caller", "destination": "echo",
                                              "action": "allow"})]))
    try:
        for name, domain in (("2 sidecars, plaintext", ""), ("2 sidecars, mTLS + RBAC", DOMAIN)):
            inbound, outbound = free_port(), free_port()
            view = MeshView({
                (NAMESPACE, "echo"): ServiceView(NAMESPACE, "echo", inbound, "http", endpoints=(
                    Endpoint("127.0.0.1", inbound, "echo-0", "node-0"),)),
                (NAMESPACE, "caller"): ServiceView(NAMESPACE, "caller", None, "http",
                                                   upstreams=((NAMESPACE, "echo", None),)),
            }, version=1, mtls_domain=domain, intentions=intentions, default_intention="deny")
            proxies = [Proxy("echo-0", SIDECAR, NAMESPACE, "echo",
                             inbound=("127.0.0.1", inbound), app_port=app),
                       Proxy("caller-0", SIDECAR, NAMESPACE, "caller",
                             upstreams={f"{NAMESPACE}/echo": ("127.0.0.1", outbound)})]
            certificates.keep({"echo-0": NAMESPACE, "caller-0": NAMESPACE})
            cache = XdsCache()
            cache.set_view(view)
            with tempfile.TemporaryDirectory(prefix="flotilla-bench-sds-") as tmp:
                sds = SdsServer(certificates, Path(tmp) / "sds.sock")
                sds.start()
                try:
                    with ads_server(cache, 4) as address, envoys(proxies, address,
                                                                 str(sds.socket)):
                        wait_until(lambda: answers(outbound), 30, f"the app via {name}",
                                   interval=0.05)
                        results.append((name, *measure(outbound, requests, seconds,
                                                       connections)))
                finally:
                    sds.stop()
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    return results


def measure(port: int, requests: int, seconds: float,
            connections: int) -> tuple[list[float], float, int]:
    latencies = sequential(port, requests)
    rate, errors = saturate(port, seconds, connections)
    return latencies, rate, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ca-signs", type=int, default=2_000)
    parser.add_argument("--server-signs", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=20, help="leaves per SignCertificates")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--saturate", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args(argv)
    print("identity benchmark...", flush=True)
    alone = ca_alone(args.ca_signs)
    served, latencies = through_server(args.server_signs, args.threads)
    batched, batch_latencies = through_server(args.server_signs, args.threads, args.batch)
    paths = data_plane(args.requests, args.saturate, args.connections)
    print()
    print(text_table([
        ("signing", "signs/s", "p50 ms", "p99 ms", "target"),
        ("CA alone (ready CSRs)", f"{alone:,.0f}", "-", "-",
         "met" if alone >= TARGET_SIGNS else "MISSED"),
        (f"SignCertificate x{args.threads} threads", f"{served:,.0f}",
         f"{percentile(latencies, 50) * 1000:.2f}", f"{percentile(latencies, 99) * 1000:.2f}",
         "met" if served >= TARGET_SIGNS else "MISSED"),
        (f"SignCertificates ({args.batch}/call) x{args.threads}", f"{batched:,.0f}",
         f"{percentile(batch_latencies, 50) * 1000:.2f}",
         f"{percentile(batch_latencies, 99) * 1000:.2f}",
         "met" if batched >= TARGET_SIGNS else "MISSED"),
    ]))
    base = percentile(paths[1][1], 50)
    print()
    print(text_table([("data plane", "p50 ms", "p99 ms", "req/s", "errors", "p50 vs plaintext")]
                     + [(name, f"{percentile(lat, 50) * 1000:.3f}",
                         f"{percentile(lat, 99) * 1000:.3f}", f"{rate:,.0f}", str(errors),
                         f"{(percentile(lat, 50) - base) * 1000:+.3f} ms")
                        for name, lat, rate, errors in paths]))
    print("(latency: sequential requests on one keep-alive connection; req/s: "
          f"{args.connections} connections for {args.saturate:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
