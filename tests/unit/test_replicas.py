"""Replica decisions: how many instances to create, which to remove."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.controllers.replicas import (
    GATEWAY_RESOURCES,
    Decision,
    Desired,
    decide,
    gateway_desired,
    service_desired,
    template_hash,
    template_of,
)
from controlplane.manifests import to_resource
from controlplane.model import Resource
from controlplane.model.specs import GatewaySpec, InstanceSpec, ServiceSpec
from controlplane.model.specs.common import PlacementSpec

SPEC: dict[str, Any] = {"image": "web:1", "port": 8080, "replicas": 2,
                        "update": {"strategy": "rolling", "maxSurge": 1, "maxUnavailable": 0}}


def service(**changes: Any) -> Desired:
    return service_desired(Resource(kind="Service", name="web",
                                    spec={**SPEC, **changes}).typed(ServiceSpec))


def instance(name: str, node: str = "n1", state: str = "healthy", template: str | None = None,
             created: float = 0.0) -> Resource:
    return Resource(kind="Instance", name=name, create_time=created,
                    spec={"service": "web", "node": node,
                          "template": template or service().template},
                    status={"state": state})


OLD = "0ld"


@pytest.mark.parametrize(
    ("svc", "instances", "usable", "expected"),
    [
        (None, [instance("a"), instance("b")], {"n1"}, Decision(0, ("a", "b"))),
        (service(replicas=3), [], {"n1"}, Decision(3, ())),
        (service(replicas=2), [instance("a"), instance("b")], {"n1"}, Decision(0, ())),
        (service(replicas=1),
         [instance("ok"), instance("sick", state="unhealthy"), instance("new", node="")],
         {"n1"}, Decision(0, ("new", "sick"))),
        (service(replicas=1), [instance("old", created=1), instance("young", created=2)],
         {"n1"}, Decision(0, ("young",))),
        (service(replicas=2), [instance("a"), instance("lost", node="n9")], {"n1"},
         Decision(1, ("lost",))),
        (service(replicas=0), [instance("a")], {"n1"}, Decision(0, ("a",))),
        # Rolling update: surge one new instance first, remove nothing yet...
        (service(), [instance("o1", template=OLD), instance("o2", template=OLD)], {"n1"},
         Decision(1, ())),
        # ...the new one is healthy: one old may go, nothing more to create yet...
        (service(), [instance("o1", template=OLD), instance("o2", template=OLD),
                     instance("n1")], {"n1"}, Decision(0, ("o1",))),
        # ...a new one still starting does not count as available.
        (service(), [instance("o1", template=OLD), instance("n1"),
                     instance("n2", state="starting")], {"n1"}, Decision(0, ())),
        # An unavailable old instance goes at once.
        (service(), [instance("o1", template=OLD, state="crashloop"),
                     instance("o2", template=OLD)], {"n1"}, Decision(1, ("o1",))),
        # Recreate: every old instance goes first.
        (service(update={"strategy": "recreate"}),
         [instance("o1", template=OLD), instance("o2", template=OLD)], {"n1"},
         Decision(0, ("o1", "o2"))),
    ],
    ids=["service-gone", "create", "steady", "scale-down-expendable-first",
         "scale-down-newest", "lost-node-replaced", "scale-to-zero", "rolling-surge",
         "rolling-retire-one", "rolling-wait-for-ready", "rolling-drop-unavailable",
         "recreate"],
)
def test_decide(svc: Desired | None, instances: list[Resource], usable: set[str],
                expected: Decision) -> None:
    assert decide(svc, instances, usable) == expected


def test_replicas_do_not_change_the_template() -> None:
    assert service(replicas=9).template == service().template
    assert service(update={"strategy": "recreate"}).template == service().template
    assert service(placement={"strategy": "binpack"}).template == service().template
    assert service(image="web:2").template != service().template


def test_the_template_hashes_the_stored_json_of_the_service_spec() -> None:
    """The hash of a Service's stored spec minus replicas, update, placement
    and autoscaling (and registration, which came later), as it always was:
    stored instances do not roll on upgrade."""
    spec = Resource(kind="Service", name="web", spec=SPEC).typed(ServiceSpec)
    stored = spec.to_dict()
    template = {k: v for k, v in stored.items()
                if k not in ("replicas", "autoscaling", "update", "placement", "registration")}
    assert "registration" in stored and "registration" not in template
    assert service().template == template_hash(template)
    assert template_of(stored | {"replicas": 5, "update": {}}) == template
    # The instance's workload is the same template, field for field.
    assert service().workload.to_dict() == template


def test_a_stored_service_keeps_the_template_hash_the_previous_version_stored() -> None:
    applied = to_resource({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                           "metadata": {"name": "web"}, "spec": {
                               "image": "web:1", "port": 8080, "replicas": 2, "env": {"A": "1"},
                               "mounts": [{"configMap": "cfg", "path": "/etc/x"}],
                               "healthCheck": {"http": {"path": "/ok"}},
                               "placement": {"strategy": "binpack"}}})
    spec = applied.typed(ServiceSpec)
    assert service_desired(spec).template == "46b69139e0"
    assert service_desired(spec, {"ConfigMap/cfg": "u/1"}).template == "d5308c974c"


def old(count: int) -> list[Resource]:
    """``count`` healthy instances of an older template, o1 first to go."""
    return [instance(f"o{k}", template=OLD) for k in range(1, count + 1)]


def update(surge: int, unavailable: int) -> dict[str, Any]:
    return {"strategy": "rolling", "maxSurge": surge, "maxUnavailable": unavailable}


@pytest.mark.parametrize(
    ("spec", "instances", "expected"),
    [
        # The default (1, 0): one new at a time, and none of the ready ones go yet.
        ({}, old(3), Decision(1, ())),
        ({"update": update(2, 0)}, old(3), Decision(2, ())),
        # ...every ready one beyond replicas goes: two at once...
        ({"update": update(2, 0)}, [*old(3), instance("n1"), instance("n2")],
         Decision(0, ("o1", "o2"))),
        # ...and never more than replicas + 2, however many are still missing.
        ({"update": update(2, 0)}, [*old(3), instance("n1", state="starting"),
                                    instance("n2", state="starting")], Decision(0, ())),
        ({"update": update(0, 1)}, old(3), Decision(0, ("o1",))),
        # ...then its replacement, with one old instance gone...
        ({"update": update(0, 1)}, old(3)[1:], Decision(1, ())),
        # ...and no other old one goes until the new one is ready.
        ({"update": update(0, 1)}, [*old(3)[1:], instance("n1", state="starting")],
         Decision(0, ())),
        ({"update": update(0, 2)}, old(3), Decision(0, ("o1", "o2"))),
        ({"update": update(1, 1)}, old(3), Decision(1, ("o1",))),
        # Recreate ignores both bounds: every old one goes, nothing new yet.
        ({"update": {"strategy": "recreate", "maxSurge": 2}}, old(3),
         Decision(0, ("o1", "o2", "o3"))),
    ],
    ids=["default-surge-1-unavailable-0", "surge-2-creates-two-at-once",
         "surge-2-retires-two-once-ready", "surge-2-caps-at-replicas-plus-2",
         "surge-0-unavailable-1-removes-one-old-first", "surge-0-unavailable-1-then-creates",
         "surge-0-unavailable-1-waits-for-the-new-one", "unavailable-2-removes-two-at-once",
         "surge-1-unavailable-1-creates-and-removes-at-once", "recreate-ignores-the-bounds"],
)
def test_update_bounds(spec: dict[str, Any], instances: list[Resource],
                       expected: Decision) -> None:
    """maxSurge and maxUnavailable, three replicas: what each value lets one
    pass of a rolling update do."""
    assert decide(service(replicas=3, **spec), instances, {"n1"}) == expected


def gateway(**spec: Any) -> Desired:
    return gateway_desired(Resource(kind="Gateway", name="edge", spec={
        "listeners": [{"name": "web", "port": 8000, "routes": [{"service": "web"}]}],
        **spec}).typed(GatewaySpec))


def test_a_gateway_runs_its_replicas_where_its_placement_says() -> None:
    placement = {"constraints": [{"key": "zone", "operator": "=", "value": "b"}],
                 "strategy": "binpack", "antiAffinity": ["web"]}
    two = gateway(replicas=2, placement=placement)
    assert two.replicas == 2 and two.placement == PlacementSpec.model_validate(placement)
    assert two.workload.host_ports == [8000] and two.gateway
    assert decide(two, [], {"n1"}) == Decision(2, ())
    # Replicas and placement shape no instance: changing them replaces none.
    one = gateway()
    assert one.template == two.template


def test_a_gateway_s_template_hash_is_what_it_always_was() -> None:
    """The Envoy's JSON as Gateways' instances have always been hashed from:
    stored gateway instances do not roll on upgrade."""
    edge = gateway(listeners=[{"name": "b", "port": 9000, "routes": [{"service": "web"}]},
                              {"name": "a", "port": 8000, "routes": [{"service": "web"}]}])
    assert edge.template == template_hash({
        "gateway": True, "hostPorts": [8000, 9000], "driver": "process",
        "resources": {"cpu": 100, "memory": 64}})
    assert edge.template == "81fdc75b2d"  # what the previous version stored
    workload = edge.workload
    assert (workload.gateway, workload.host_ports, workload.driver) == (
        True, [8000, 9000], "process")
    assert workload.resources == GATEWAY_RESOURCES
    assert (GATEWAY_RESOURCES.cpu, GATEWAY_RESOURCES.memory) == (100, 64)
    assert (edge.update.strategy, edge.update.max_surge, edge.update.max_unavailable) == (
        "rolling", 1, 0)
    assert gateway(replicas=3).update.max_unavailable == 1
    # Its instances say they are a Gateway's.
    assert InstanceSpec(service="edge", gateway=edge.gateway).gateway is True


def test_new_gateway_ports_replace_one_replica_at_a_time_even_on_full_nodes() -> None:
    """With a replica on every node, a new one fits only where an old one
    left: one old replica goes while the first new one waits for its node."""
    moved = gateway(replicas=2, listeners=[
        {"name": "web", "port": 8001, "routes": [{"service": "web"}]}])
    replicas = [instance("o1", node="n1", template=OLD), instance("o2", node="n2", template=OLD)]
    assert decide(moved, replicas, {"n1", "n2"}) == Decision(1, ("o1",))
    # A single replica keeps serving until its replacement is ready.
    single = gateway(listeners=[
        {"name": "web", "port": 8001, "routes": [{"service": "web"}]}])
    assert decide(single, replicas[:1], {"n1"}) == Decision(1, ())
