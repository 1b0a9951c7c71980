"""The Consul catalog's pure core: which entries Flotilla wants, how it reads
Consul's, and the plan between them; the registry's passes over a fake
catalog and a real store; ``--catalog`` URLs and the adapter's errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.catalog.consul import ConsulAddress, ConsulCatalog, parse_url
from controlplane.catalog.registrations import (
    MANAGED,
    Registration,
    SyncPlan,
    desired,
    plan,
    registration_of,
)
from controlplane.catalog.registry import Registry
from controlplane.errors import PermissionDenied, TemporaryError, UserError
from controlplane.model import Resource
from controlplane.store import SqliteStore

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


def entry(registration: Registration) -> dict[str, Any]:
    """The registration as Consul's /v1/agent/services shows it."""
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
], ids=["healthy", "running-without-check", "starting", "unhealthy", "node-down",
        "node-draining", "unplaced", "draining", "service-gone", "other-namespace",
        "gateway", "no-address"])
def test_only_what_eds_publishes_is_wanted(candidate: Resource, listed: bool) -> None:
    wanted = desired([WEB, API], [candidate], NODES)
    assert (f"flotilla-{candidate.namespace}-{candidate.name}" in wanted) is listed


def test_an_entry_names_the_instance_and_carries_tags_and_meta() -> None:
    wanted = desired([WEB, API], [instance("web-a", port=31001),
                                  instance("api-b", service="api", namespace="shop")], NODES)
    assert wanted["flotilla-default-web-a"] == Registration(
        id="flotilla-default-web-a", name="web", address="127.0.0.2", port=31001,
        tags=("default", "flotilla", "v2"),
        meta={"flotilla-namespace": "default", "flotilla-version": "3",
              "flotilla-node": "n1", "flotilla-instance": "web-a", MANAGED: "true"})
    api = wanted["flotilla-shop-api-b"]
    assert (api.name, api.tags, api.check_id) == (
        "api", ("flotilla", "shop"), "service:flotilla-shop-api-b")


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

A = Registration("flotilla-default-web-a", "web", "127.0.0.2", 31000, ("flotilla",),
                 {MANAGED: "true"})
B = Registration("flotilla-default-web-b", "web", "127.0.0.3", 31000, ("flotilla",),
                 {MANAGED: "true"})
MOVED = Registration(A.id, "web", "127.0.0.2", 31999, ("flotilla",), {MANAGED: "true"})
PASSING = {A.check_id: "passing", B.check_id: "passing"}


@pytest.mark.parametrize(("wanted", "actual", "checks", "passed", "expected"), [
    ({A.id: A}, {A.id: A}, PASSING, {A.id: 99.0}, SyncPlan()),
    ({A.id: A}, {}, {}, {}, SyncPlan(register=(A,))),
    ({}, {B.id: B}, PASSING, {}, SyncPlan(deregister=(B.id,))),
    ({A.id: MOVED}, {A.id: A}, PASSING, {A.id: 99.0}, SyncPlan(register=(MOVED,))),
    ({A.id: A}, {A.id: A}, {}, {A.id: 99.0}, SyncPlan(register=(A,))),
    ({A.id: A}, {A.id: A}, {A.check_id: "critical"}, {A.id: 99.0}, SyncPlan(refresh=(A.id,))),
    ({A.id: A}, {A.id: A}, PASSING, {A.id: 90.0}, SyncPlan(refresh=(A.id,))),
    ({A.id: A}, {A.id: A}, PASSING, {}, SyncPlan(refresh=(A.id,))),
    ({A.id: A}, {A.id: A}, None, {A.id: 99.0}, SyncPlan()),
    ({A.id: A}, {A.id: A, B.id: B}, None, {A.id: 99.0}, SyncPlan(deregister=(B.id,))),
], ids=["in-sync", "missing", "stale", "altered", "check-gone", "check-critical",
        "refresh-due", "never-passed-here", "incremental-in-sync", "incremental-stale"])
def test_plan(wanted: dict[str, Registration], actual: dict[str, Registration],
              checks: dict[str, str] | None, passed: dict[str, float],
              expected: SyncPlan) -> None:
    assert plan(wanted, actual, checks, passed, now=100.0, refresh_after=5.0) == expected


registrations = st.builds(
    Registration, id=st.sampled_from([f"flotilla-default-web-{c}" for c in "abcdef"]),
    name=st.just("web"), address=st.sampled_from(["127.0.0.2", "127.0.0.3"]),
    port=st.integers(30000, 30003), tags=st.just(("flotilla",)),
    meta=st.just({MANAGED: "true"}))
by_id = st.lists(registrations).map(lambda found: {r.id: r for r in found})


@given(wanted=by_id, actual=by_id)
def test_one_plan_converges(wanted: dict[str, Registration],
                            actual: dict[str, Registration]) -> None:
    checks = {r.check_id: "passing" for r in actual.values()}
    todo = plan(wanted, actual, checks, {}, now=0.0, refresh_after=5.0)
    after = {k: v for k, v in actual.items() if k not in todo.deregister}
    after.update({r.id: r for r in todo.register})
    assert after == wanted
    assert set(todo.refresh) <= set(wanted) and not set(todo.refresh) & {
        r.id for r in todo.register}
    again = plan(wanted, after, {r.check_id: "passing" for r in after.values()},
                 dict.fromkeys(after, 0.0), now=0.0, refresh_after=5.0)
    assert again == SyncPlan()


# --- the registry over a fake catalog and a real store ------------------------------------


class FakeCatalog:
    """Keeps entries as Consul's agent would; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, str] = {}
        self.passes: list[str] = []
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

    def register(self, registration: Registration) -> None:
        self._call()
        if registration.id in self.rejected:
            raise UserError(f"Consul rejected {registration.id}")
        self.entries[registration.id] = entry(registration)
        self.statuses[registration.check_id] = "passing"

    def deregister(self, entry_id: str) -> None:
        self._call()
        self.entries.pop(entry_id, None)
        self.statuses.pop(f"service:{entry_id}", None)

    def pass_check(self, check_id: str) -> bool:
        self._call()
        self.passes.append(check_id)
        if check_id not in self.statuses:
            return False
        self.statuses[check_id] = "passing"
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "flotilla.db")
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


def registry(store: SqliteStore, catalog: FakeCatalog, clock: FakeClock) -> Registry:
    return Registry(store, catalog, refresh_after=5.0, clock=clock)


def test_the_registry_registers_serving_instances_and_repairs_the_catalog(
        store: SqliteStore, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    catalog.entries["web-1"] = {"ID": "web-1", "Service": "web", "Meta": {}}  # someone else's
    stale = Registration("flotilla-default-web-z", "web", "127.0.0.9", 1, ("flotilla",),
                         {MANAGED: "true"})
    catalog.entries[stale.id] = entry(stale)
    reg = registry(store, catalog, clock)

    done = reg.sync(full=True)
    assert [r.id for r in done.register] == ["flotilla-default-web-a", "flotilla-default-web-b"]
    assert done.deregister == (stale.id,)
    assert set(catalog.entries) == {"web-1", "flotilla-default-web-a", "flotilla-default-web-b"}

    # An incremental pass with nothing changed sends nothing.
    calls = catalog.calls
    assert not reg.sync(full=False) and catalog.calls == calls

    # Behind its back: one deleted, Consul restarted empty; a full pass restores.
    del catalog.entries["flotilla-default-web-a"]
    assert [r.id for r in reg.sync(full=True).register] == ["flotilla-default-web-a"]
    catalog.entries.clear()
    catalog.statuses.clear()
    assert len(reg.sync(full=True).register) == 2


def test_checks_are_passed_every_few_seconds_while_instances_serve(
        store: SqliteStore, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    clock.now += 4.0
    assert not reg.sync(full=False).refresh
    clock.now += 1.0
    assert reg.sync(full=False).refresh == ("flotilla-default-web-a", "flotilla-default-web-b")
    assert catalog.passes == ["service:flotilla-default-web-a", "service:flotilla-default-web-b"]
    # A check that went critical is passed on the next full pass.
    catalog.statuses["service:flotilla-default-web-a"] = "critical"
    assert reg.sync(full=True).refresh == ("flotilla-default-web-a",)


def test_an_instance_that_stops_serving_is_deregistered_on_the_next_pass(
        store: SqliteStore, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    store.write_status(instance("web-a").key, {"state": "unhealthy"})
    assert reg.sync(full=False).deregister == ("flotilla-default-web-a",)
    store.delete([instance("web-b").key])
    assert reg.sync(full=False).deregister == ("flotilla-default-web-b",)
    assert not catalog.entries


def test_consul_down_raises_and_the_next_pass_reads_it_again(
        store: SqliteStore, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    reg = registry(store, catalog, clock)
    catalog.down = True
    with pytest.raises(TemporaryError, match="cannot reach Consul"):
        reg.sync(full=True)
    catalog.down = False
    # Not a full pass, but nothing was read yet: it reads Consul anyway.
    assert len(reg.sync(full=False).register) == 2


def test_a_rejected_entry_is_skipped_and_the_others_registered(
        store: SqliteStore, clock: FakeClock) -> None:
    catalog = FakeCatalog()
    catalog.rejected = {"flotilla-default-web-a"}
    reg = registry(store, catalog, clock)
    reg.sync(full=True)
    assert set(catalog.entries) == {"flotilla-default-web-b"}
    catalog.rejected = set()
    assert [r.id for r in reg.sync(full=False).register] == ["flotilla-default-web-a"]


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
