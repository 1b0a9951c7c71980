"""The ADS servicer in process: a grpc server on a free loopback port, an
``XdsCache`` fed hand-built views, and light xDS clients (tests/xds_client.py)
speaking delta and state of the world. Waits are bounded polls; nothing here
asserts on durations."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.api.flotilla.v1 import proxies_pb2, proxies_pb2_grpc
from controlplane.server.xds import AggregatedDiscoveryServicer, ProxyServicer, status_of
from controlplane.xds.cache import ProxyState, XdsCache
from controlplane.xds.mesh import PROXYLESS, SIDECAR, Endpoint, MeshView, Proxy, ServiceView
from controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT, TYPES, Snapshot
from controlplane.xds.stream import StreamStatus
from tests.harness import eventually
from tests.xds_client import Held, Reject, XdsClient

WAIT = 10.0
PROTOCOLS = pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])


def endpoints(service: str, count: int, port: int = 8080) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"127.0.{i // 250}.{i % 250 + 2}", port, f"{service}-{i}", "node-1")
                 for i in range(count))


def service(name: str, protocol: str = "http", upstreams: tuple[str, ...] = (),
            count: int = 2, **fields: Any) -> ServiceView:
    fields.setdefault("endpoints", endpoints(name, count))
    return ServiceView("default", name, 8080, protocol,
                       upstreams=tuple(("default", u, None) for u in upstreams), **fields)


def view(version: int, *changed: ServiceView, without: tuple[str, ...] = ()) -> MeshView:
    """The test catalog at ``version``: web -> api, db; shop -> db; with
    ``changed`` services replacing theirs and ``without`` ones gone."""
    services = {s.key: s for s in (service("api"), service("db", "tcp"),
                                   service("web", upstreams=("api", "db")),
                                   service("shop", upstreams=("db",)))}
    services.update({s.key: s for s in changed})
    return MeshView({k: s for k, s in services.items() if k[1] not in without}, version=version)


def sidecar(name: str, upstreams: tuple[str, ...]) -> Proxy:
    return Proxy(id=f"{name}-1", kind=SIDECAR, namespace="default", name=name,
                 inbound=("127.0.0.1", 20000), app_port=8080,
                 upstreams={f"default/{u}": ("127.0.0.1", 21000 + i)
                            for i, u in enumerate(upstreams)})


WEB = sidecar("web", ("api", "db"))
SHOP = sidecar("shop", ("db",))
#: api with its first endpoint moved to another port.
API_MOVED = service("api", endpoints=(Endpoint("127.0.0.2", 9090, "api-0", "node-1"),
                                      *endpoints("api", 2)[1:]))


@dataclass
class Ads:
    cache: XdsCache
    address: str
    clients: list[XdsClient] = field(default_factory=list)

    def connect(self, proxy: Proxy, **options: Any) -> XdsClient:
        client = XdsClient(self.address, proxy, **options).start()
        self.clients.append(client)
        return client

    def state(self, client: XdsClient) -> ProxyState:
        return eventually(lambda: next((s for s in self.cache.states()
                                        if s.proxy.id == client.proxy.id), None),
                          WAIT, f"proxy {client.proxy.id} to connect")

    def synced(self, client: XdsClient, version: int) -> ProxyState:
        """Wait until the server counts ``client`` in sync at ``version`` and the
        client holds exactly its snapshot."""
        state = self.state(client)
        eventually(lambda: state.synced_version >= version and holds(client, state),
                   WAIT, f"{client.proxy.id} in sync at version {version}")
        return state

    def list_proxies(self) -> list[proxies_pb2.ProxyStatus]:
        with grpc.insecure_channel(self.address) as channel:
            stub = proxies_pb2_grpc.ProxyServiceStub(channel)
            return list(stub.ListProxies(proxies_pb2.ListProxiesRequest(), timeout=WAIT).proxies)


def holds(client: XdsClient, state: ProxyState) -> bool:
    return all({n: h.version for n, h in client.held(t).items()} == state.snapshot.versions(t)
               for t in TYPES)


@contextmanager
def serving(cache: XdsCache) -> Iterator[Ads]:
    """The ADS and proxy-status servicers over ``cache`` on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    servicer = AggregatedDiscoveryServicer(cache)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    proxies_pb2_grpc.add_ProxyServiceServicer_to_server(
        ProxyServicer(cache, proxies_pb2.MeshSettings()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    harness = Ads(cache, f"127.0.0.1:{port}")
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.close()
        servicer.shutdown()
        server.stop(grace=None).wait(WAIT)


@pytest.fixture
def ads() -> Iterator[Ads]:
    cache = XdsCache()
    cache.set_view(view(1))
    with serving(cache) as harness:
        yield harness


@PROTOCOLS
def test_initial_push_holds_every_type(ads: Ads, delta: bool) -> None:
    client = ads.connect(WEB, delta=delta)
    state = ads.synced(client, 1)
    assert {t: sorted(client.held(t)) for t in TYPES} == {
        CLUSTER: ["api.default", "db.default", "local_app"],
        ENDPOINT: ["api.default", "db.default"],
        LISTENER: ["inbound", "outbound:api.default", "outbound:db.default"],
        ROUTE: ["api.default"],
    }
    status = status_of(state)
    assert (status.protocol, status.view_version, status.synced_version) == (
        "delta" if delta else "sotw", 1, 1)
    assert sorted(status.acked_versions) == sorted(SHORT.values())
    assert list(status.pending) == [] and status.last_nack_error == ""
    assert client.error is None


@PROTOCOLS
def test_one_endpoint_change(ads: Ads, delta: bool) -> None:
    """Delta sends the one endpoints resource that changed; state of the world
    sends the whole type again."""
    client = ads.connect(WEB, delta=delta)
    ads.synced(client, 1)
    before = client.responses
    assert ads.cache.set_view(view(2, API_MOVED)) == 1
    ads.synced(client, 2)
    pushed = [(e.type_url, sorted(e.names)) for e in client.exchanges(before)]
    assert pushed == [(ENDPOINT, ["api.default"] if delta else ["api.default", "db.default"])]
    assignment = client.held(ENDPOINT)["api.default"].message
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    moved = assignment.endpoints[0].lb_endpoints[0].endpoint
    assert moved.address.socket_address.port_value == 9090


def test_removal_shows_in_removed_resources(ads: Ads) -> None:
    client = ads.connect(WEB)
    ads.synced(client, 1)
    before = client.responses
    ads.cache.set_view(view(3, without=("db",)))
    ads.synced(client, 3)
    removed = {e.type_url: e.removed for e in client.exchanges(before) if e.removed}
    assert removed[CLUSTER] == ("db.default",)
    assert removed[LISTENER] == ("outbound:db.default",)
    assert "db.default" not in client.held(ENDPOINT)


def refuse_port(port: int) -> Reject:
    """NACK any endpoints resource that has an endpoint on ``port``."""
    def reject(type_url: str, carried: Mapping[str, Held]) -> str | None:
        for name, held in carried.items():
            for locality in getattr(held.message, "endpoints", ()):
                for lb in locality.lb_endpoints:
                    if lb.endpoint.address.socket_address.port_value == port:
                        return f"{name}: port {port} is not allowed here"
        return None
    return reject


@PROTOCOLS
def test_nack_is_kept_until_a_good_change(ads: Ads, delta: bool) -> None:
    client = ads.connect(WEB, delta=delta, reject=refuse_port(9090))
    state = ads.synced(client, 1)
    good = client.version(ENDPOINT, "api.default")

    ads.cache.set_view(view(2, API_MOVED))
    nack = eventually(lambda: next((e for e in client.exchanges() if not e.accepted), None),
                      WAIT, "the NACK")
    eventually(lambda: "port 9090 is not allowed" in status_of(state).last_nack_error, WAIT,
               "the NACK in the proxy's status")
    assert state.synced_version == 1
    assert client.version(ENDPOINT, "api.default") == good

    # A change elsewhere wakes the stream: what was refused is not sent again.
    db_slower = service("db", "tcp", policy={"destination": "db", "connectTimeout": "2s"})
    ads.cache.set_view(view(3, API_MOVED, db_slower))
    eventually(lambda: client.version(CLUSTER, "db.default") ==
               state.snapshot.versions(CLUSTER)["db.default"], WAIT, "db's new cluster")
    if delta:  # and, delta only, another endpoints resource changing alone
        db_moved = replace(db_slower, endpoints=endpoints("db", 3))
        ads.cache.set_view(view(4, API_MOVED, db_moved))
        eventually(lambda: client.version(ENDPOINT, "db.default") ==
                   state.snapshot.versions(ENDPOINT)["db.default"], WAIT, "db's new endpoints")
    later = client.exchanges()[client.exchanges().index(nack) + 1:]
    assert all("api.default" not in e.names for e in later if e.type_url == ENDPOINT)
    assert "port 9090" in status_of(state).last_nack_error
    assert [p.last_nack_error for p in ads.list_proxies()] == [status_of(state).last_nack_error]
    assert state.synced_version == 1

    ads.cache.set_view(view(5, service("api", count=3)))
    ads.synced(client, 5)
    assert status_of(state).last_nack_error == ""
    assert [p.last_nack_error for p in ads.list_proxies()] == [""]


def test_synced_version_follows_the_view(ads: Ads) -> None:
    client = ads.connect(WEB)
    state = ads.synced(client, 1)
    ads.cache.set_view(view(2, API_MOVED))
    ads.synced(client, 2)
    ads.cache.set_version(3)  # the store moved on without touching the mesh
    assert (state.view_version, state.synced_version) == (3, 3)


def test_unrelated_proxies_are_not_woken(ads: Ads) -> None:
    web, shop = ads.connect(WEB), ads.connect(SHOP)
    ads.synced(web, 1)
    ads.synced(shop, 1)
    quiet = shop.responses
    assert ads.cache.set_view(view(2, API_MOVED)) == 1
    ads.synced(web, 2)
    shop_state = ads.synced(shop, 2)  # in sync at the new version without a push
    assert shop.responses == quiet
    assert shop_state.inbox.empty()


class Interleaved(XdsCache):
    """Lands ``interleave`` (a set_view) between a stream judging its proxy in
    sync and reporting it, the window two threads can always hit; records the
    synced version that report leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.interleave: Callable[[], object] | None = None
        self.reported: list[int] = []

    def exchanged(self, state: ProxyState, status: StreamStatus, judged: Snapshot) -> None:
        hook = self.interleave if status.in_sync else None
        if hook is not None:
            self.interleave = None
            hook()
        super().exchanged(state, status, judged)
        if hook is not None:
            self.reported.append(state.synced_version)


def test_a_view_installed_while_a_stream_reports_is_not_counted_as_synced() -> None:
    cache = Interleaved()
    cache.set_view(view(1))
    with serving(cache) as ads:
        client = ads.connect(WEB)
        ads.synced(client, 1)
        db_moved = service("db", "tcp", count=3)
        cache.interleave = lambda: cache.set_view(view(3, API_MOVED, db_moved))
        cache.set_view(view(2, API_MOVED))  # the client ACKs it; then view 3 lands
        [reported] = eventually(lambda: cache.reported, WAIT, "the interleaved report")
        # The client cannot hold view 3's db endpoints yet: they are pushed
        # only after this report returns.
        assert reported < 3


def test_a_second_stream_with_a_connected_proxys_id_replaces_it(ads: Ads) -> None:
    """One stream per proxy id: the newer one is the proxy, the older one ends
    ABORTED saying why, and proxy-status never shows the id twice."""
    first = ads.connect(WEB)
    old = ads.synced(first, 1)
    second = ads.connect(WEB)
    new = eventually(lambda: next((s for s in ads.cache.states() if s is not old
                                   and s.proxy.id == WEB.id), None), WAIT, "the new stream")
    ads.synced(second, 1)
    eventually(lambda: first.error is not None, WAIT, "the first stream to end")
    assert first.error is not None and first.error.code() == grpc.StatusCode.ABORTED
    assert f"a newer stream connected as proxy {WEB.id}" in (first.error.details() or "")
    assert [s for s in ads.cache.states() if s.proxy.id == WEB.id] == [new]
    assert [p.id for p in ads.list_proxies()].count(WEB.id) == 1
    assert second.error is None


def test_proxyless_clients_from_one_bootstrap_share_its_id_and_both_stay(ads: Ads) -> None:
    client = Proxy(id="web~3f2a9c1d", kind=PROXYLESS, namespace="default", name="web")
    first, second = ads.connect(client), ads.connect(client)
    eventually(lambda: len([s for s in ads.cache.states() if s.proxy.id == client.id]) == 2,
               WAIT, "both processes' streams")
    assert first.error is None and second.error is None
