"""External services (Services whose instances others registered in Consul):
the manifest rules, Consul's health entries as endpoints, the mesh view and
its incremental index, the clusters the builder makes for them, the feeder
taking catalog changes, and the watcher over a fake Consul and a real store."""

from __future__ import annotations

import threading
from dataclasses import replace
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.catalog.external import ExternalWatcher, catalog_endpoints
from controlplane.errors import InvalidManifest, TemporaryError
from controlplane.manifests import check_batch, to_resource
from controlplane.model import EventType, ObjectKey, Resource, WatchEvent
from controlplane.model.external import CatalogEndpoint, external_name
from controlplane.store import Store
from controlplane.xds.builder import Builder
from controlplane.xds.cache import XdsCache
from controlplane.xds.feed import MeshIndex, ViewFeeder
from controlplane.xds.mesh import PROXYLESS, SIDECAR, Endpoint, Proxy, mesh_view
from controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, check
from tests.certs import server_certificate
from tests.harness import eventually


def doc(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": kind, "metadata": {"name": name},
            "spec": spec}


def make(kind: str, name: str, **spec: Any) -> Resource:
    return to_resource(doc(kind, name, **spec))


def external(name: str = "payments", port: int = 8443, protocol: str = "http",
             **fields: Any) -> Resource:
    """An external Service; ``fields`` are its ``spec.external``."""
    return make("Service", name, port=port, protocol=protocol, external=fields)


# --- manifests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ({"external": {}}, "spec.port: an external Service needs the port apps call it on"),
    ({"port": 443, "external": {}, "image": "x"},
     "spec.image: an external Service runs nothing in the mesh"),
    ({"port": 443, "external": {}, "command": ["x"]}, "spec.command: an external Service"),
    ({"port": 443, "external": {}, "replicas": 2},
     "spec.replicas: an external Service has no replicas"),
    ({"port": 443, "external": {}, "healthCheck": {"tcp": {}}}, "spec.healthCheck: an external"),
    ({"port": 443, "external": {}, "upstreams": [{"name": "a"}]}, "spec.upstreams: an external"),
    ({"port": 443, "external": {"service": "a/b"}},
     "spec.external.service: 'a/b' is not a Consul service name"),
    ({"port": 443, "external": {"tls": {"sni": "no_underscores"}}},
     "spec.external.tls.sni: 'no_underscores' is not a DNS name"),
    ({"port": 443, "external": {"tls": {"ca": "not a certificate"}}},
     "spec.external.tls.ca: must be PEM"),
    ({"port": 443, "external": {"tls": {"verify": True}}},
     "spec.external.tls.verify: unknown field"),
], ids=lambda v: str(v)[:40] if isinstance(v, str) else None)
def test_external_service_rules(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        to_resource(doc("Service", "payments", **spec), "t.yaml")
    messages = [f"{v.path}: {v.message}" for v in caught.value.violations]
    assert any(m.startswith(expected) for m in messages), messages


def test_an_external_service_is_stored_with_no_replicas_and_reapplies_as_stored(
        tmp_path: Path) -> None:
    ca = server_certificate(tmp_path, "payments.example.com").ca_pem
    stored = external(service="payments-v2", tls={"sni": "payments.example.com", "ca": ca})
    stored_json = stored.spec.to_dict()
    assert stored_json["replicas"] == 0
    assert stored_json["external"] == {"service": "payments-v2",
                                       "tls": {"sni": "payments.example.com", "ca": ca}}
    assert to_resource(doc("Service", "payments", **stored_json)).spec == stored.spec  # get -o yaml
    assert external_name(stored) == "payments-v2"
    assert external_name(external()) == "payments"
    assert external_name(make("Service", "web", image="x")) is None


class Objects:
    def __init__(self, *resources: Resource) -> None:
        self.by_key = {r.key: r for r in resources}

    def get(self, key: ObjectKey) -> Resource | None:
        return self.by_key.get(key)

    def list(self, kind: str, namespace: str) -> Sequence[Resource]:
        return [r for r in self.by_key.values() if (r.kind, r.namespace) == (kind, namespace)]


def test_an_upstream_may_name_an_external_service_and_an_intention_may_not() -> None:
    consumer = make("Service", "shop", image="x", upstreams=[{"name": "payments"}])
    assert check_batch([consumer], Objects(external())) == []
    exact = make("Intention", "shop-payments", source="shop", destination="payments",
                 action="deny")
    wildcard = make("Intention", "shop-any", source="shop", destination="*", action="deny")
    problems = check_batch([exact, wildcard], Objects(external(), consumer))
    assert [(p.path, p.message.split(":")[0]) for p in problems] == [
        ("spec.destination", "Service default/payments is external")]


# --- Consul's entries as endpoints ------------------------------------------------------------


def entry(address: str = "127.0.0.5", port: Any = 9000, *, id: str = "pay-1",
          node_address: str = "10.0.0.1", meta: Mapping[str, str] | None = None,
          statuses: Sequence[str] = ("passing",)) -> dict[str, Any]:
    """One entry of /v1/health/service/<name>."""
    return {"Node": {"Node": "box", "Address": node_address},
            "Service": {"ID": id, "Service": "payments", "Address": address, "Port": port,
                        "Meta": dict(meta or {})},
            "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]}


@pytest.mark.parametrize(("found", "expected", "problem"), [
    (entry(), CatalogEndpoint("127.0.0.5", 9000, "pay-1", "box"), ""),
    (entry(""), CatalogEndpoint("10.0.0.1", 9000, "pay-1", "box"), ""),
    (entry("::1"), CatalogEndpoint("::1", 9000, "pay-1", "box"), ""),
    (entry(meta={"flotilla-tls": "true", "flotilla-sni": "pay.example.com"}),
     CatalogEndpoint("127.0.0.5", 9000, "pay-1", "box", True, "pay.example.com"), ""),
    (entry(meta={"flotilla-tls": "TRUE"}),
     CatalogEndpoint("127.0.0.5", 9000, "pay-1", "box", True, ""), ""),
    (entry(meta={"flotilla-tls": "false", "flotilla-sni": "pay.example.com"}),
     CatalogEndpoint("127.0.0.5", 9000, "pay-1", "box"), ""),
    (entry(meta={"flotilla-managed": "true"}), None, ""),
    (entry(statuses=("passing", "critical")), None, ""),
    (entry(statuses=("warning",)), None, ""),
    (entry("pay.internal"), None, "has address 'pay.internal': register it with an IP"),
    (entry(port=0), None, "has no port"),
    (entry(port="80"), None, "has no port"),
    (entry(meta={"flotilla-tls": "yes"}), None, "has meta flotilla-tls 'yes'"),
    (entry(meta={"flotilla-tls": "true", "flotilla-sni": "a b"}), None,
     "has meta flotilla-sni 'a b': use a DNS name"),
], ids=["plain", "node-address", "ipv6", "tls-sni", "tls-no-sni", "sni-without-tls",
        "flotillas-own", "critical", "warning", "hostname", "no-port", "port-string",
        "bad-tls-mark", "bad-sni"])
def test_consul_entries_as_endpoints(found: dict[str, Any], expected: CatalogEndpoint | None,
                                     problem: str) -> None:
    endpoints, problems = catalog_endpoints([found])
    assert endpoints == ((expected,) if expected else ())
    if problem:
        [reason] = problems
        assert reason.startswith("instance pay-1 on node box ") and problem in reason
    else:
        assert problems == ()


def test_endpoints_are_sorted_and_unique() -> None:
    found, _ = catalog_endpoints([entry("127.0.0.7", id="b"), entry("127.0.0.6", id="a"),
                                  entry("127.0.0.6", id="a")])
    assert [e.id for e in found] == ["a", "b"]


# --- the mesh view --------------------------------------------------------------------------

PLAIN = CatalogEndpoint("127.0.0.5", 9000, "pay-1", "box")
MARKED = CatalogEndpoint("127.0.0.6", 9443, "pay-2", "box", True, "pay.example.com")


def test_an_external_services_endpoints_come_from_the_catalog() -> None:
    instance = Resource(kind="Instance", name="stray", spec={"service": "payments", "node": "n1"},
                        status={"state": "healthy", "address": "127.0.0.9", "port": 1})
    node = Resource(kind="Node", namespace="cluster", name="n1", spec={}, status={})
    view = mesh_view([external(), instance, node], 3, {"payments": (PLAIN, MARKED),
                                                       "other": (PLAIN,)})
    payments = view.services[("default", "payments")]
    assert payments.external and payments.ca == "" and payments.port == 8443
    assert payments.endpoints == (Endpoint("127.0.0.5", 9000, "pay-1", "box"),
                                  Endpoint("127.0.0.6", 9443, "pay-2", "box", True,
                                           "pay.example.com"))
    assert mesh_view([external()]).services[("default", "payments")].endpoints == ()


def test_the_manifests_tls_makes_every_endpoint_tls_and_its_sni_wins(tmp_path: Path) -> None:
    ca = server_certificate(tmp_path, "pay.example.com").ca_pem
    forced = external(tls={"sni": "payments.example.com", "ca": ca})
    view = mesh_view([forced], 1, {"payments": (PLAIN, MARKED)}).services[("default",
                                                                           "payments")]
    assert view.ca == ca
    assert [(e.tls, e.sni) for e in view.endpoints] == [(True, "payments.example.com")] * 2
    loose = mesh_view([external(tls={})], 1, {"payments": (PLAIN, MARKED)})
    assert [(e.tls, e.sni) for e in loose.services[("default", "payments")].endpoints] == [
        (True, ""), (True, "pay.example.com")]


def changed(resource: Resource, deleted: bool = False) -> WatchEvent:
    return WatchEvent(EventType.DELETED if deleted else EventType.MODIFIED, resource, 0)


def test_a_catalog_change_rebuilds_only_the_services_following_that_name() -> None:
    index = MeshIndex([external(), external("pay-too", service="payments"),
                       external("ledger"), make("Service", "web", image="x")])
    assert index.apply_catalog({"payments": (PLAIN,)})
    view = index.view(1)
    assert view.services[("default", "payments")].endpoints == (
        Endpoint("127.0.0.5", 9000, "pay-1", "box"),)
    assert view.services[("default", "pay-too")].endpoints == view.services[
        ("default", "payments")].endpoints
    assert view.services[("default", "ledger")].endpoints == ()
    assert not index.apply_catalog({"payments": (PLAIN,)})  # the same again: no change
    assert not index.apply_catalog({"nobody": (MARKED,)})
    # A Service that switches names follows the new one at once.
    assert index.apply([changed(external("ledger", service="nobody"))])
    assert index.view(2).services[("default", "ledger")].endpoints[0].instance == "pay-2"
    assert index.apply_catalog({"payments": None})
    assert index.view(3).services[("default", "payments")].endpoints == ()


NAMES = ["a", "b"]
OPS = st.lists(st.tuples(
    st.sampled_from(["follow", "follow-tls", "unfollow", "delete", "catalog", "forget"]),
    st.integers(0, 1), st.integers(0, 1)), max_size=20)


@settings(max_examples=100, deadline=None)
@given(ops=OPS)
def test_the_incremental_index_with_catalog_changes_equals_a_full_rebuild(
        ops: list[tuple[str, int, int]]) -> None:
    services: dict[str, Resource] = {}
    catalog: dict[str, tuple[CatalogEndpoint, ...]] = {}
    index = MeshIndex()
    for op, i, j in ops:
        name = f"svc{i}"
        if op in ("follow", "follow-tls"):
            tls: dict[str, Any] = {"tls": {}} if op == "follow-tls" else {}
            services[name] = make("Service", name, port=8443,
                                  external={"service": NAMES[j], **tls})
            index.apply([changed(services[name])])
        elif op == "unfollow":
            services[name] = make("Service", name, image="x", port=80)
            index.apply([changed(services[name])])
        elif op == "delete" and name in services:
            index.apply([changed(services.pop(name), deleted=True)])
        elif op == "catalog":
            catalog[NAMES[j]] = (PLAIN, MARKED)[: i + 1]
            index.apply_catalog({NAMES[j]: catalog[NAMES[j]]})
        elif op == "forget":
            catalog.pop(NAMES[j], None)
            index.apply_catalog({NAMES[j]: None})
        assert index.view(1) == mesh_view(services.values(), 1, catalog)


# --- the builder --------------------------------------------------------------------------


def consumer() -> Resource:
    return make("Service", "shop", image="x", port=8080, upstreams=[{"name": "payments"}])


def snapshot_of(payments: Resource, catalog: tuple[CatalogEndpoint, ...],
                proxy: Proxy | None = None) -> Any:
    view = replace(mesh_view([payments, consumer()], 1, {"payments": catalog}),
                   mtls_domain="flotilla.local")
    proxy = proxy or Proxy("shop-0", SIDECAR, "default", "shop", inbound=("127.0.0.9", 15001),
                           app_port=8080, upstreams={"default/payments": ("127.0.0.1", 21000)})
    snap = Builder(view).build(proxy)
    assert check(snap) == []
    return snap


def test_an_external_cluster_is_plain_even_in_an_mtls_mesh() -> None:
    snap = snapshot_of(external(), (PLAIN,))
    cluster = snap.of(CLUSTER)["payments.default"].message
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert not cluster.HasField("transport_socket") and not cluster.transport_socket_matches
    assignment = snap.of(ENDPOINT)["payments.default"].message
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    [endpoint] = assignment.endpoints[0].lb_endpoints
    assert endpoint.endpoint.address.socket_address.port_value == 9000
    assert not endpoint.HasField("metadata")
    assert "outbound:payments.default" in snap.of(LISTENER)
    # The consumer's own inbound keeps its mTLS.
    assert snap.of(LISTENER)["inbound"].message.filter_chains[0].HasField("transport_socket")


def tls_contexts(cluster: cluster_pb2.Cluster) -> dict[str, tls_pb2.UpstreamTlsContext]:
    found = {}
    for match in cluster.transport_socket_matches:
        context = tls_pb2.UpstreamTlsContext()
        match.transport_socket.typed_config.Unpack(context)
        found[dict(match.match)["tls"]] = context
    return found


def test_tls_endpoints_pick_a_tls_socket_per_server_name() -> None:
    unnamed = CatalogEndpoint("127.0.0.7", 9443, "pay-3", "box", True, "")
    snap = snapshot_of(external(), (PLAIN, MARKED, unnamed))
    cluster = snap.of(CLUSTER)["payments.default"].message
    contexts = tls_contexts(cluster)
    assert sorted(contexts) == ["", "pay.example.com"]
    assert contexts["pay.example.com"].sni == "pay.example.com"
    assert contexts["pay.example.com"].common_tls_context.alpn_protocols == ["http/1.1"]
    assert not contexts["pay.example.com"].common_tls_context.HasField("validation_context")
    assignment = snap.of(ENDPOINT)["payments.default"].message
    marks = {e.endpoint.address.socket_address.address:
             dict(e.metadata.filter_metadata["envoy.transport_socket_match"])
             for e in assignment.endpoints[0].lb_endpoints}
    assert marks == {"127.0.0.5": {}, "127.0.0.6": {"tls": "pay.example.com"},
                     "127.0.0.7": {"tls": ""}}


def test_a_ca_verifies_the_chain_and_the_server_name(tmp_path: Path) -> None:
    ca = server_certificate(tmp_path, "payments.example.com").ca_pem
    snap = snapshot_of(external(tls={"sni": "payments.example.com", "ca": ca}), (PLAIN,))
    [context] = tls_contexts(snap.of(CLUSTER)["payments.default"].message).values()
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == ca
    assert [(m.san_type, m.matcher.exact) for m in validation.match_typed_subject_alt_names] == [
        (common_pb2.SubjectAltNameMatcher.DNS, "payments.example.com")]


def test_proxyless_clients_get_no_external_services_and_gateways_do() -> None:
    snap = snapshot_of(external(protocol="grpc"), (PLAIN,),
                       Proxy("client-0", PROXYLESS, "default", "client"))
    assert "payments.default" not in snap.of(CLUSTER)
    assert "shop.default" in snap.of(CLUSTER)


# --- the feeder, with a real store and cache --------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "flotilla.db")
    yield store
    store.close()


def test_the_feeder_puts_catalog_changes_in_the_view(store: Store) -> None:
    store.apply([external(), consumer()])
    cache = XdsCache()
    feeder = ViewFeeder(store, cache)
    feeder.start()
    try:
        def endpoints() -> tuple[Endpoint, ...]:
            return cache.view.services[("default", "payments")].endpoints

        feeder.catalog_changed("payments", (PLAIN, MARKED))
        eventually(lambda: len(endpoints()) == 2, 10, "two endpoints in the view")
        feeder.catalog_changed("payments", (MARKED,))
        eventually(lambda: [e.instance for e in endpoints()] == ["pay-2"], 10, "one left")
        # A store change meanwhile keeps what the catalog said.
        store.apply([make("Service", "web", image="x")])
        eventually(lambda: ("default", "web") in cache.view.services, 10, "the new service")
        assert [e.instance for e in endpoints()] == ["pay-2"]
        feeder.refresh()
        assert [e.instance for e in endpoints()] == ["pay-2"]
        feeder.catalog_changed("payments", None)
        eventually(lambda: endpoints() == (), 10, "no endpoints")
    finally:
        feeder.stop()


# --- the watcher, over a fake Consul and a real store ------------------------------------------


class FakeConsul:
    """Health entries by service name, and an index that grows with each
    change; ``down`` makes every query fail. Queries answer at once."""

    def __init__(self) -> None:
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.index = 10
        self.down = False
        self.asked: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def set(self, name: str, *entries: dict[str, Any], index: int | None = None) -> None:
        with self.lock:
            self.entries[name] = list(entries)
            self.index = self.index + 1 if index is None else index

    def passing(self, name: str, index: int = 0, wait: float = 0.0
                ) -> tuple[int, list[Mapping[str, Any]]]:
        with self.lock:
            self.asked.append((name, index))
            if self.down:
                raise TemporaryError("cannot reach Consul at 127.0.0.1:1: connection refused")
            return self.index, list(self.entries.get(name, ()))


class Published:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[CatalogEndpoint, ...] | None]] = []

    def __call__(self, name: str, endpoints: tuple[CatalogEndpoint, ...] | None) -> None:
        self.calls.append((name, endpoints))

    def last(self, name: str) -> tuple[CatalogEndpoint, ...] | None | str:
        found = [endpoints for called, endpoints in self.calls if called == name]
        return found[-1] if found else "never"


@pytest.fixture
def watched(store: Store) -> Iterator[tuple[ExternalWatcher, FakeConsul, Published]]:
    consul, published = FakeConsul(), Published()
    watcher = ExternalWatcher(store, lambda: consul, published, wait=0.1, max_backoff=0.2)
    watcher.start()
    yield watcher, consul, published
    watcher.stop()


def test_the_watcher_follows_the_names_external_services_follow(
        store: Store, watched: tuple[ExternalWatcher, FakeConsul, Published]) -> None:
    watcher, consul, published = watched
    consul.set("payments", entry(), entry("127.0.0.6", id="pay-2", statuses=("critical",)))
    store.apply([external(), external("pay-too", service="payments"), consumer()])
    eventually(lambda: published.last("payments") == (PLAIN,), 10, "payments published")
    assert watcher.followed == {"payments"}

    consul.set("payments", entry(), entry("127.0.0.6", id="pay-2"))
    eventually(lambda: len(published.last("payments") or ()) == 2, 10, "pay-2 passing")

    store.delete([ObjectKey("Service", "default", name) for name in ("payments", "pay-too",
                                                                     "shop")])
    eventually(lambda: published.last("payments") is None, 10, "payments no longer followed")
    assert watcher.followed == set()


def test_consul_away_keeps_the_last_endpoints_and_a_restarted_consul_starts_over(
        store: Store, watched: tuple[ExternalWatcher, FakeConsul, Published]) -> None:
    _, consul, published = watched
    consul.set("payments", entry(), index=500)
    store.apply([external()])
    eventually(lambda: published.last("payments") == (PLAIN,), 10, "payments published")
    eventually(lambda: consul.asked[-1] == ("payments", 500), 10, "a query waiting on 500")
    consul.down = True
    asked = len(consul.asked)
    # After a failure the follower asks without blocking: a restarted Consul
    # would keep a query on an index it has not reached waiting for nothing.
    eventually(lambda: consul.asked[asked:][-3:] == [("payments", 0)] * 3, 10,
               "queries retried afresh")
    assert published.last("payments") == (PLAIN,)
    # Back, restarted and empty: a smaller index, which the next query waits on.
    consul.set("payments", index=3)
    consul.down = False
    eventually(lambda: published.last("payments") == (), 10, "the empty catalog")
    eventually(lambda: consul.asked[-1] == ("payments", 3), 10, "the new index")
    # An index that goes backwards without a failure is taken as it is.
    consul.set("payments", entry(), index=2)
    eventually(lambda: published.last("payments") == (PLAIN,), 10, "payments back")
    eventually(lambda: consul.asked[-1] == ("payments", 2), 10, "the smaller index")
