"""The Consul catalog's pure core: which entries Flotilla wants, how it reads
Consul's, and the plan between them; the registry's passes over a fake
catalog and a real store; ``--catalog`` URLs, the catalog node's name,
transaction chunking and the adapter's errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.catalog.consul import (
    TXN_MAX_OPS,
    ConsulAddress,
    ConsulCatalog,
    _chunks,
    parse_url,
)
from controlplane.catalog.registrations import (
    CATALOG_SHARDS,
    MANAGED,
    REGISTERED,
    CatalogEntry,
    SyncPlan,
    Wanted,
    catalog_node,
    catalog_nodes,
    desired,
    plan,
    registration_of,
    shard_node,
)
from controlplane.catalog.registry import Registry
from controlplane.errors import PermissionDenied, TemporaryError, UserError
from controlplane.model import Resource
from controlplane.model.clock import FakeClock
from controlplane.store import Store
from tests.harness import eventually

WEB = Resource(kind="Service", name="web", labels={"version": "v2"}, generation=3,
               spec={"port": 8080})
API = Resource(kind="Service", namespace="shop", name="api", spec={"port": 9090})
NODES = [
    Resource(kind="Node", namespace="cluster", name="n1", status={"state": "ready"}),
    Resource(kind="Node", namespace="cluster", name="n2", status={"state": "down"}),
    Resource(kind="Node", namespace="cluster", name="n3", spec={"drain": True},
             status={"state": "ready"}),
]


def instance(name: str, *, service: str = "web", namespace: str = "default",
             node: str = "n1", state: str = "healthy", port: int = 31000,
             **spec: Any) -> Resource:
    return Resource(kind="Instance", namespace=namespace, name=name,
                    spec={"service": service, "node": node, "revision": 3, **spec},
                    status={"state": state, "address": "127.0.0.2", "port": port})


def entry(registration: CatalogEntry) -> dict[str, Any]:
    """The registration as Consul's /v1/catalog/node/<node> shows it."""
    return {"ID": registration.id, "Service": registration.name,
            "Tags": list(reversed(registration.tags)), "Meta": dict(registration.meta),
            "Port": registration.port, "Address": registration.address,
            "Weights": {"Passing": 1, "Warning": 1}, "Datacenter": "dc1"}


# --- desired ------------------------------------------------------------------------


@pytest.mark.parametrize(("candidate", "listed"), [
    (instance("web-a"), True),
    (instance("web-b", state="running"), True),
    (instance("web-c", state="starting"), False),
    (instance("web-d", state="unhealthy"), False),
    (instance("web-e", node="n2"), False),
    (instance("web-f", node="n3"), False),
    (instance("web-g", node=""), False),
    (instance("web-h", draining=True), False),
    (instance("web-i", service="gone"), False),
    (instance("web-j", namespace="shop"), False),
    (instance("web-k", gateway=True), False),
    (Resource(kind="Instance", name="web-l", spec={"service": "web", "node": "n1"},
              status={"state": "healthy"}), False),
    (instance("web-m", node="", registered=True), True),
    (instance("web-n", node="", registered=True, service="gone"), False),
    (instance("web-o", node="", registered=True, state=""), False),
], ids=["healthy", "running-without-check", "starting", "unhealthy", "node-down",
        "node-draining", "unplaced", "draining", "service-gone", "other-namespace",
        "gateway", "no-address", "registered", "registered-service-gone",
        "registered-status-unwritten"])
def test_only_what_eds_publishes_is_wanted(candidate: Resource, listed: bool) -> None:
    wanted = desired([WEB, API], [candidate], NODES)
    assert (f"flotilla-{candidate.namespace}-{candidate.name}" in wanted) is listed


def test_an_entry_names_the_instance_and_carries_tags_and_meta() -> None:
    wanted = desired([WEB, API], [instance("web-a", port=31001),
                                  instance("api-b", service="api", namespace="shop")], NODES)
    assert wanted["flotilla-default-web-a"] == CatalogEntry(
        id="flotilla-default-web-a", name="web", address="127.0.0.2", port=31001,
        tags=("default", "flotilla", "v2"),
        meta={"flotilla-namespace": "default", "flotilla-version": "3",
              "flotilla-node": "n1", "flotilla-instance": "web-a", MANAGED: "true"})
    api = wanted["flotilla-shop-api-b"]
    assert (api.name, api.tags, api.check_id) == (
        "api", ("flotilla", "shop"), "service:flotilla-shop-api-b")


def test_a_registered_instance_is_listed_at_its_own_address_without_a_node() -> None:
    found = desired([WEB], [instance("web-r", node="", registered=True, port=9000)], NODES)
    entry = found["flotilla-default-web-r"]
    assert (entry.address, entry.port) == ("127.0.0.2", 9000)
    assert entry.meta["flotilla-node"] == "" and entry.meta[REGISTERED] == "true"


@pytest.mark.parametrize(("trust_domain", "node"), [
    ("flotilla.local", "flotilla-flotilla-local"),
    ("Prod.Example.com", "flotilla-prod-example-com"),
    ("...", "flotilla-mesh"),
], ids=["default", "mixed-case", "nothing-left"])
def test_the_catalog_nodes_are_named_after_the_trust_domain(trust_domain: str,
                                                            node: str) -> None:
    assert catalog_node(trust_domain) == node


def test_entries_spread_over_the_shards_and_stay_on_theirs() -> None:
    nodes = catalog_nodes("flotilla-x")
    assert nodes[0] == "flotilla-x-0" and len(nodes) == CATALOG_SHARDS
    placed = [shard_node("flotilla-x", f"flotilla-default-web-{i}") for i in range(1600)]
    assert placed == [shard_node("flotilla-x", f"flotilla-default-web-{i}")
                      for i in range(1600)]
    counts = [placed.count(node) for node in nodes]
    assert min(counts) > 50 and max(counts) < 150  # about 100 each


# --- reading Consul ---------------------------------------------------------------------


def test_consuls_view_of_an_entry_reads_back_equal() -> None:
    wanted = desired([WEB], [instance("web-a")], NODES)["flotilla-default-web-a"]
    assert registration_of(wanted.id, entry(wanted)) == wanted


@pytest.mark.parametrize("meta", [None, {}, {MANAGED: "false"}, {"owner": "someone"}],
                         ids=["no-meta", "empty", "managed-false", "others"])
def test_entries_others_registered_are_not_flotillas(meta: Mapping[str, str] | None) -> None:
    assert registration_of("web-1", {"ID": "web-1", "Service": "web", "Meta": meta,
                                     "Port": 80, "Address": "10.0.0.1"}) is None


# --- the plan -------------------------------------------------------------------------------

A = CatalogEntry("flotilla-default-web-a", "web", "127.0.0.2", 31000, ("flotilla",),
                 {MANAGED: "true"})
B = CatalogEntry("flotilla-default-web-b", "web", "127.0.0.3", 31000, ("flotilla",),
                 {MANAGED: "true"})
MOVED = CatalogEntry(A.id, "web", "127.0.0.2", 31999, ("flotilla",), {MANAGED: "true"})
PASSING = {A.check_id: "passing", B.check_id: "passing"}


@pytest.mark.parametrize(("wanted", "actual", "checks", "expected"), [
    ({A.id: A}, {A.id: A}, PASSING, SyncPlan()),
    ({A.id: A}, {}, {}, SyncPlan(register=(A,))),
    ({}, {B.id: B}, PASSING, SyncPlan(deregister=(B.id,))),
    ({A.id: MOVED}, {A.id: A}, PASSING, SyncPlan(register=(MOVED,))),
    ({A.id: A}, {A.id: A}, {}, SyncPlan(register=(A,))),
    ({A.id: A}, {A.id: A}, {A.check_id: "critical"}, SyncPlan(register=(A,))),
    ({A.id: A}, {A.id: A}, None, SyncPlan()),
    ({A.id: A}, {A.id: A, B.id: B}, None, SyncPlan(deregister=(B.id,))),
], ids=["in-sync", "missing", "stale", "altered", "check-gone", "check-critical",
        "incremental-in-sync", "incremental-stale"])
def test_plan(wanted: dict[str, CatalogEntry], actual: dict[str, CatalogEntry],
              checks: dict[str, str] | None, expected: SyncPlan) -> None:
    assert plan(wanted, actual, checks) == expected


registrations = st.builds(
    CatalogEntry, id=st.sampled_from([f"flotilla-default-web-{c}" for c in "abcdef"]),
    name=st.just("web"), address=st.sampled_from(["127.0.0.2", "127.0.0.3"]),
    port=st.integers(30000, 30003), tags=st.just(("flotilla",)),
    meta=st.just({MANAGED: "true"}))
by_id = st.lists(registrations).map(lambda found: {r.id: r for r in found})


@given(wanted=by_id, actual=by_id)
def test_one_plan_converges(wanted: dict[str, CatalogEntry],
                            actual: dict[str, CatalogEntry]) -> None:
    checks = {r.check_id: "passing" for r in actual.values()}
    todo = plan(wanted, actual, checks)
    after = {k: v for k, v in actual.items() if k not in todo.deregister}
    after.update({r.id: r for r in todo.register})
    assert after == wanted
    again = plan(wanted, after, {r.check_id: "passing" for r in after.values()})
    assert again == SyncPlan()


# --- the registry over a fake catalog and a real store ------------------------------------


class FakeCatalog:
    """Keeps entries as Consul's catalog would on Flotilla's nodes; ``down``
    makes every call fail, ``rejected`` entry IDs are refused."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, str] = {}
        self.writes: list[tuple[list[str], list[str]]] = []
        self.calls = 0
        self.down = False
        self.rejected: set[str] = set()

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise TemporaryError("cannot reach Consul at 127.0.0.1:1: connection refused")

    def services(self) -> Mapping[str, Mapping[str, Any]]:
        self._call()
        return dict(self.entries)

    def checks(self) -> Mapping[str, str]:
        self._call()
        return dict(self.statuses)

    def write(self, register: Sequence[CatalogEntry],
              deregister: Sequence[CatalogEntry] = ()) -> dict[str, str]:
        self._call()
        self.writes.append(([r.id for r in register], [r.id for r in deregister]))
        for gone in deregister:
            self.entries.pop(gone.id, None)
            self.statuses.pop(gone.check_id, None)
        refused = {}
        for registration in register:
            if registration.id in self.rejected:
                refused[registration.id] = "Invalid service address"
                continue
            self.entries[registration.id] = entry(registration)
            self.statuses[registration.check_id] = "passing"
        return refused


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "flotilla.db")
    objects = [WEB, *NODES, instance("web-a"), instance("web-b", port=31001)]
    store.apply(objects)
    for written in objects:  # apply keeps specs; statuses are written apart
        if written.status:
            store.write_status(written.key, written.status)
    yield store
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def registry(store: Store, catalog: FakeCatalog, clock: FakeClock) -> Registry:
    return Registry(store, catalog, clock=clock)


def test_the_registry_registers_serving_instances_and_repairs_the_catalog(
        store: Store, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    catalog.entries["web-1"] = {"ID": "web-1", "Service": "web", "Meta": {}}  # someone else's
    stale = CatalogEntry("flotilla-default-web-z", "web", "127.0.0.9", 1, ("flotilla",),
                         {MANAGED: "true"})
    catalog.entries[stale.id] = entry(stale)
    reg = registry(store, catalog, clock)

    done = reg.sync(full=True)
    assert [r.id for r in done.register] == ["flotilla-default-web-a", "flotilla-default-web-b"]
    assert done.deregister == (stale.id,)
    assert set(catalog.entries) == {"web-1", "flotilla-default-web-a", "flotilla-default-web-b"}
    # One write for all of it (the adapter batches it into transactions).
    assert catalog.writes == [(["flotilla-default-web-a", "flotilla-default-web-b"],
                               [stale.id])]

    # An incremental pass with nothing changed sends nothing.
    calls = catalog.calls
    assert not reg.sync(full=False) and catalog.calls == calls

    # Behind its back: one deleted, Consul restarted empty; a full pass restores.
    del catalog.entries["flotilla-default-web-a"]
    assert [r.id for r in reg.sync(full=True).register] == ["flotilla-default-web-a"]
    catalog.entries.clear()
    catalog.statuses.clear()
    assert len(reg.sync(full=True).register) == 2


def test_a_check_set_critical_behind_its_back_passes_again_on_the_next_full_pass(
        store: Store, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    clock.advance(60.0)  # no keep-alive: nothing expires while nothing changes
    assert not reg.sync(full=False) and not reg.sync(full=True)
    catalog.statuses["service:flotilla-default-web-a"] = "critical"
    assert not reg.sync(full=False)  # an incremental pass trusts what it wrote
    assert [r.id for r in reg.sync(full=True).register] == ["flotilla-default-web-a"]
    assert catalog.statuses["service:flotilla-default-web-a"] == "passing"


def test_an_instance_that_stops_serving_is_deregistered_on_the_next_pass(
        store: Store, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    store.write_status(instance("web-a").key, {"state": "unhealthy"})
    assert reg.sync(full=False).deregister == ("flotilla-default-web-a",)
    store.delete([instance("web-b").key])
    assert reg.sync(full=False).deregister == ("flotilla-default-web-b",)
    assert not catalog.entries


def test_consul_down_raises_and_the_next_pass_reads_it_again(
        store: Store, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    catalog.down = True
    with pytest.raises(TemporaryError, match="cannot reach Consul"):
        reg.sync(full=True)
    catalog.down = False
    # Not a full pass, but nothing was read yet: it reads Consul anyway.
    assert len(reg.sync(full=False).register) == 2


def test_a_rejected_entry_is_skipped_and_the_others_registered(
        store: Store, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    catalog.rejected = {"flotilla-default-web-a"}
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    assert set(catalog.entries) == {"flotilla-default-web-b"}
    assert not reg.sync(full=False)  # it backs off alone: 0.5 s...
    clock.advance(0.5)
    assert [r.id for r in reg.sync(full=False).register] == ["flotilla-default-web-a"]
    clock.advance(0.5)
    assert not reg.sync(full=False)  # ...then, rejected again, 1 s
    catalog.rejected = set()
    clock.advance(0.5)
    assert [r.id for r in reg.sync(full=False).register] == ["flotilla-default-web-a"]
    assert set(catalog.entries) == {"flotilla-default-web-a", "flotilla-default-web-b"}


# --- --catalog and the adapter's errors -------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("consul://127.0.0.1:8500", ConsulAddress("127.0.0.1", 8500)),
    ("consul://consul.service:18500/", ConsulAddress("consul.service", 18500)),
    ("consul://10.1.2.3", ConsulAddress("10.1.2.3", 8500)),
    ("consul://[::1]:8500", ConsulAddress("::1", 8500)),
], ids=["loopback", "name", "default-port", "ipv6"])
def test_catalog_urls(url: str, expected: ConsulAddress) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", [
    "127.0.0.1:8500", "http://127.0.0.1:8500", "consul://", "consul://:8500",
    "consul://h:99999", "consul://h:port", "consul://h:8500/kv", "consul://u:p@h:8500",
], ids=["no-scheme", "http", "no-host", "port-only", "port-range", "port-name", "path",
        "credentials"])
def test_bad_catalog_urls_say_the_form(url: str) -> None:
    with pytest.raises(UserError, match=r"consul://HOST:PORT"):
        parse_url(url)


def test_an_unreachable_consul_is_a_temporary_error_naming_it() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    catalog = ConsulCatalog(ConsulAddress("127.0.0.1", port))
    with pytest.raises(TemporaryError) as raised:
        catalog.services()
    assert str(raised.value) == f"cannot reach Consul at 127.0.0.1:{port}: connection refused"
    assert not isinstance(raised.value, PermissionDenied)


@pytest.mark.parametrize(("sizes", "expected"), [
    ([2] * 56, [56]),
    ([2] * 57, [56, 1]),
    ([1] * 111 + [2], [111, 1]),
    ([1, 2, 2], [3]),
    ([], []),
], ids=["one-full-transaction", "one-more", "an-entry-is-never-split", "mixed", "nothing"])
def test_writes_are_chunked_into_transactions_with_room_for_every_node(
        sizes: list[int], expected: list[int]) -> None:
    room = TXN_MAX_OPS - CATALOG_SHARDS  # a node's set operation for each shard
    groups = [(i, ["op"] * size) for i, size in enumerate(sizes)]
    chunks = list(_chunks(groups, room))
    assert [len(chunk) for chunk in chunks] == expected
    assert all(sum(len(ops) for _, ops in chunk) <= room for chunk in chunks)
    assert [i for chunk in chunks for i, _ in chunk] == list(range(len(sizes)))


# --- the wanted entries, kept one change at a time ---------------------------------------

changes = st.lists(st.one_of(
    st.builds(lambda name, node, state, registered, service: (instance(
        name, node=node, state=state, service=service,
        **({"registered": True} if registered else {})), False),
        st.sampled_from(["web-a", "web-b", "web-c"]), st.sampled_from(["n1", "n2", "n3", ""]),
        st.sampled_from(["healthy", "starting"]), st.booleans(), st.sampled_from(["web", "api"])),
    st.builds(lambda name: (instance(name), True), st.sampled_from(["web-a", "web-b"])),
    st.builds(lambda svc, deleted: (svc, deleted), st.sampled_from([WEB, API,
              Resource(kind="Service", name="api", spec={"port": 9090})]), st.booleans()),
    st.builds(lambda node, state, deleted: (Resource(kind="Node", namespace="cluster",
                                                     name=node, status={"state": state}),
                                            deleted),
              st.sampled_from(["n1", "n2"]), st.sampled_from(["ready", "down"]), st.booleans()),
), max_size=25)


@given(first=changes, then=changes)
def test_wanted_kept_one_change_at_a_time_equals_desired_from_scratch(
        first: list[tuple[Resource, bool]], then: list[tuple[Resource, bool]]) -> None:
    kept = Wanted()
    kept.apply(first)
    before = dict(kept.entries)
    touched = kept.apply(then)
    final: dict[tuple[str, str, str], Resource] = {}
    for resource, deleted in first + then:
        if deleted:
            final.pop((resource.kind, resource.namespace, resource.name), None)
        else:
            final[(resource.kind, resource.namespace, resource.name)] = resource
    of_kind = {kind: [r for r in final.values() if r.kind == kind]
               for kind in ("Service", "Instance", "Node")}
    assert kept.entries == desired(of_kind["Service"], of_kind["Instance"], of_kind["Node"])
    # Whatever the later changes altered is among the entries they touched.
    assert {i for i in set(before) | set(kept.entries)
            if before.get(i) != kept.entries.get(i)} <= touched


def test_only_the_leader_writes_and_a_new_leader_reads_consul_afresh(store: Store) -> None:
    """The registry runs on every replica behind the leadership gate: a
    follower writes nothing; once it leads it registers, and an entry another
    leader left behind meanwhile is repaired on its first pass."""
    catalog = FakeCatalog()
    leading, asked = threading.Event(), threading.Semaphore(0)

    def gate() -> bool:
        asked.release()
        return leading.is_set()

    reg = Registry(store, catalog, period=0.1, gate=gate)
    reg.start()
    try:
        for _ in range(2):  # the gate was looked at twice: nothing was written
            assert asked.acquire(timeout=10)
        assert catalog.calls == 0 and not catalog.entries
        stale = CatalogEntry("flotilla-default-web-z", "web", "127.0.0.9", 1, ("flotilla",),
                             {MANAGED: "true"})
        catalog.entries[stale.id] = entry(stale)
        leading.set()
        eventually(lambda: set(catalog.entries) == {"flotilla-default-web-a",
                                                    "flotilla-default-web-b"} or None,
                   10.0, "the new leader's registrations")
        store.write_status(instance("web-a").key, {"state": "unhealthy"})
        eventually(lambda: set(catalog.entries) == {"flotilla-default-web-b"} or None,
                   10.0, "web-a deregistered")
    finally:
        reg.stop()
