"""Instances registered by clients Flotilla does not run: the request checks
(each bad field named), registering, heartbeats, the reaper after the TTL, a
restart's fresh TTL, and that the mesh publishes them while the reconciler
leaves them alone. A real SQLite store, a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.controllers.reconciler import Reconciler
from controlplane.controllers.registered import (
    TTL_DEFAULT,
    RegisteredInstances,
    RegistrationRequest,
    check_request,
    format_seconds,
)
from controlplane.errors import InvalidRequest, NotFound, PermissionDenied
from controlplane.model import SERVICE_LABEL, ObjectKey, Resource
from controlplane.model.clock import FakeClock
from controlplane.model.specs import InstanceSpec
from controlplane.store import Store
from controlplane.xds.mesh import Endpoint, mesh_view

PAYMENTS = Resource(kind="Service", name="payments", spec={
    "port": 9000, "replicas": 0, "registration": {"cidrs": ["127.0.0.0/8", "10.1.0.0/16"]}})


def request(**fields: object) -> RegistrationRequest:
    base: dict[str, object] = {"service": "payments", "address": "127.0.0.5", "port": 9000,
                               "ttl": 10.0}
    return RegistrationRequest(**{**base, **fields})  # type: ignore[arg-type]


# --- the request's fields -----------------------------------------------------------


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"service": ""}, "service", "required"),
    ({"service": "Pay_ments"}, "service", "not a valid name"),
    ({"namespace": "a b"}, "namespace", "not a valid name"),
    ({"address": ""}, "address", "required"),
    ({"address": "payments.local"}, "address", "not an IP address"),
    ({"address": "0.0.0.0"}, "address", "cannot be reached"),
    ({"address": "224.0.0.1"}, "address", "cannot be reached"),
    ({"port": 0}, "port", "must be 1-65535, got 0"),
    ({"port": 70000}, "port", "must be 1-65535, got 70000"),
    ({"labels": {"bad key!": "x"}}, "labels", "not valid"),
    ({"labels": {SERVICE_LABEL: "other"}}, f"labels.{SERVICE_LABEL}", "set by Flotilla"),
    ({"ttl": 0.5}, "ttl", "must be between 1s and 1h, got 0.5s"),
    ({"ttl": 0.0}, "ttl", "got 0s"),
    ({"ttl": 7200.0}, "ttl", "got 2h"),
], ids=["no-service", "bad-service", "bad-namespace", "no-address", "hostname", "unspecified",
        "multicast", "port-zero", "port-too-big", "bad-label", "reserved-label", "ttl-short",
        "ttl-zero", "ttl-long"])
def test_each_bad_field_is_named(fields: dict[str, object], field: str, message: str) -> None:
    problems = check_request(request(**fields))
    assert [p.path for p in problems] == [field]
    assert message in problems[0].message


@pytest.mark.parametrize("fields", [
    {}, {"ttl": None}, {"ttl": 1.0}, {"ttl": 3600.0}, {"address": "::1"},
    {"namespace": "shop", "labels": {"version": "v2"}, "port": 65535},
], ids=["plain", "default-ttl", "shortest-ttl", "longest-ttl", "ipv6", "everything"])
def test_good_requests_pass(fields: dict[str, object]) -> None:
    assert check_request(request(**fields)) == []


@pytest.mark.parametrize(("seconds", "written"), [
    (10.0, "10s"), (0.5, "0.5s"), (90.0, "90s"), (120.0, "2m"), (3600.0, "1h"),
], ids=["seconds", "fraction", "not-whole-minutes", "minutes", "hour"])
def test_durations_are_written_briefly(seconds: float, written: str) -> None:
    assert format_seconds(seconds) == written


# --- registering, heartbeats, the reaper ----------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "flotilla.db")
    store.apply([PAYMENTS])
    yield store
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def registered(store: Store, clock: FakeClock) -> RegisteredInstances:
    return RegisteredInstances(store, clock=clock)


def instances(store: Store) -> list[Resource]:
    return list(store.list("Instance"))


def test_a_registration_is_a_healthy_instance_without_a_node(
        store: Store, clock: FakeClock) -> None:
    stored = registered(store, clock).register(request(labels={"version": "v2"}))
    assert stored.name.startswith("payments-") and stored.namespace == "default"
    spec = stored.typed(InstanceSpec)
    assert spec.registered is True and spec.node == ""
    assert (spec.service, spec.address, spec.port, spec.ttl) == ("payments", "127.0.0.5", 9000,
                                                                 10.0)
    assert dict(stored.labels) == {"version": "v2", SERVICE_LABEL: "payments"}
    assert dict(stored.status) == {"state": "healthy", "address": "127.0.0.5", "port": 9000,
                                   "reason": "registered, TTL 10s"}
    assert instances(store) == [stored]


def test_no_ttl_gets_the_default(store: Store, clock: FakeClock) -> None:
    stored = registered(store, clock).register(request(ttl=None))
    assert stored.typed(InstanceSpec).ttl == TTL_DEFAULT


def test_bad_input_stores_nothing(store: Store, clock: FakeClock) -> None:
    leases = registered(store, clock)
    with pytest.raises(InvalidRequest) as raised:
        leases.register(request(port=0, ttl=0.1))
    assert [v.path for v in raised.value.violations] == ["port", "ttl"]
    assert str(raised.value).startswith("invalid request, nothing was stored (2 problems)")
    with pytest.raises(NotFound, match=r"^service: Service default/ledger does not exist"):
        leases.register(request(service="ledger"))
    with pytest.raises(NotFound, match="Service shop/payments does not exist"):
        leases.register(request(namespace="shop"))
    store.apply([Resource(kind="Service", name="ledger", spec={"port": 80, "external": {}})])
    with pytest.raises(InvalidRequest, match="service: Service default/ledger is external"):
        leases.register(request(service="ledger"))
    assert instances(store) == []


@pytest.mark.parametrize("address", ["10.1.255.7", "127.0.0.5", "127.255.0.1"])
def test_an_address_in_a_range_the_service_allows_registers(
        store: Store, clock: FakeClock, address: str) -> None:
    assert registered(store, clock).register(request(address=address)).typed(
        InstanceSpec).address == address


@pytest.mark.parametrize("address", ["10.2.0.1", "192.168.1.10", "::1", "169.254.169.254"])
def test_an_address_outside_the_services_ranges_is_refused(
        store: Store, clock: FakeClock, address: str) -> None:
    with pytest.raises(PermissionDenied) as refused:
        registered(store, clock).register(request(address=address))
    assert str(refused.value) == (
        f"address {address} is not in a range Service default/payments takes registrations "
        "from (127.0.0.0/8, 10.1.0.0/16): whoever applies the Service lists them in "
        "spec.registration.cidrs, e.g. ['10.0.0.0/8']")
    assert instances(store) == []


def test_a_service_takes_no_registrations_unless_it_names_ranges(
        store: Store, clock: FakeClock) -> None:
    """Nobody may point a Service's traffic at an address its owner did not
    allow: the host's loopback, the control plane, a metadata service."""
    store.apply([Resource(kind="Service", name="ledger", spec={"port": 9000})])
    with pytest.raises(PermissionDenied, match=r"takes registrations from \(none\)"):
        registered(store, clock).register(request(service="ledger"))
    assert instances(store) == []


def test_heartbeats_keep_it_and_it_is_removed_after_its_ttl_without_them(
        store: Store, clock: FakeClock) -> None:
    leases = registered(store, clock)
    name = leases.register(request()).name
    for _ in range(5):  # 40 s of heartbeats every 8 s, TTL 10 s
        clock.advance(8.0)
        leases.heartbeat(name)
        assert leases.sweep() == [] and len(instances(store)) == 1
    clock.advance(10.0)
    assert leases.sweep() == []  # exactly the TTL: still there
    clock.advance(0.1)
    assert leases.sweep() == [name] and instances(store) == []
    with pytest.raises(NotFound, match=f"instance {name} is not registered"):
        leases.heartbeat(name)


def test_registering_the_same_endpoint_again_renews_it(
        store: Store, clock: FakeClock) -> None:
    leases = registered(store, clock)
    first = leases.register(request())
    clock.advance(9.0)
    again = leases.register(request(ttl=20.0, labels={"version": "v3"}))
    assert again.name == first.name and again.typed(InstanceSpec).ttl == 20.0
    assert again.labels["version"] == "v3" and again.status["reason"] == "registered, TTL 20s"
    clock.advance(15.0)
    assert leases.sweep() == [] and len(instances(store)) == 1
    other = leases.register(request(port=9001))
    assert other.name != first.name and len(instances(store)) == 2


def test_deregister_removes_it_at_once(store: Store, clock: FakeClock) -> None:
    leases = registered(store, clock)
    name = leases.register(request()).name
    leases.deregister(name)
    assert instances(store) == []
    with pytest.raises(NotFound):
        leases.deregister(name)
    with pytest.raises(NotFound):
        leases.heartbeat("payments-nosuchone")


def test_after_a_restart_every_registration_gets_a_fresh_ttl(
        store: Store, clock: FakeClock) -> None:
    name = registered(store, clock).register(request()).name
    clock.advance(60.0)  # the server was down for a minute
    restarted = registered(store, clock)
    assert restarted.sweep() == []
    clock.advance(8.0)
    restarted.heartbeat(name)
    clock.advance(8.0)
    assert restarted.sweep() == []
    clock.advance(3.0)
    assert restarted.sweep() == [name]


def test_a_status_a_crash_left_unwritten_is_written_on_restart(
        store: Store, clock: FakeClock) -> None:
    name = registered(store, clock).register(request()).name
    key = ObjectKey("Instance", "default", name)
    store.write_status(key, {})
    registered(store, clock)
    found = store.get(key)
    assert found is not None and found.status["state"] == "healthy"


def test_instances_of_a_deleted_service_and_deleted_instances_go(
        store: Store, clock: FakeClock) -> None:
    leases = registered(store, clock)
    first = leases.register(request()).name
    second = leases.register(request(port=9001)).name
    store.delete([ObjectKey("Instance", "default", first)])  # flotilla delete instance
    with pytest.raises(NotFound):
        leases.heartbeat(first)
    store.delete([PAYMENTS.key])
    assert leases.sweep() == [second] and instances(store) == []


# --- the mesh publishes them; the reconciler leaves them alone ------------------------


def test_eds_lists_a_registered_instance_while_it_exists(
        store: Store, clock: FakeClock) -> None:
    name = registered(store, clock).register(request()).name
    view = mesh_view(store.list())
    assert view.services[("default", "payments")].endpoints == (
        Endpoint("127.0.0.5", 9000, name, "", plaintext=True),)


def test_the_reconciler_neither_removes_nor_places_registered_instances(
        store: Store, clock: FakeClock) -> None:
    store.apply([Resource(kind="Node", namespace="cluster", name="n1",
                          spec={"address": "127.0.0.2", "capacity": {"cpu": 1000,
                                                                     "memory": 1024}})])
    stored = registered(store, clock).register(request())
    reconciler = Reconciler(store)
    reconciler.reconcile_all([PAYMENTS.key], everything=True)  # replicas: 0
    assert instances(store) == [stored]
