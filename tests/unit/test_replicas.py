"""Replica decisions: how many instances to create, which to remove."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.controllers.reconciler import gateway_as_service
from controlplane.controllers.replicas import Decision, decide, template_hash
from controlplane.model import Resource

SPEC: dict[str, Any] = {"image": "web:1", "port": 8080, "replicas": 2,
                        "update": {"strategy": "rolling", "maxSurge": 1, "maxUnavailable": 0}}


def service(**changes: Any) -> Resource:
    return Resource(kind="Service", name="web", spec={**SPEC, **changes})


def instance(name: str, node: str = "n1", state: str = "healthy", template: str | None = None,
             created: float = 0.0) -> Resource:
    return Resource(kind="Instance", name=name, create_time=created,
                    spec={"service": "web", "node": node,
                          "template": template or template_hash(SPEC)},
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
def test_decide(svc: Resource | None, instances: list[Resource], usable: set[str],
                expected: Decision) -> None:
    assert decide(svc, instances, usable) == expected


def test_replicas_do_not_change_the_template() -> None:
    assert template_hash({**SPEC, "replicas": 9}) == template_hash(SPEC)
    assert template_hash({**SPEC, "image": "web:2"}) != template_hash(SPEC)


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


def gateway(**spec: Any) -> Resource:
    return Resource(kind="Gateway", name="edge", spec={
        "listeners": [{"name": "web", "port": 8000, "routes": [{"service": "web"}]}], **spec})


def test_a_gateway_runs_its_replicas_where_its_placement_says() -> None:
    placement = {"constraints": [{"key": "zone", "operator": "=", "value": "b"}],
                 "strategy": "binpack", "antiAffinity": ["web"]}
    two = gateway_as_service(gateway(replicas=2, placement=placement))
    assert two.spec["replicas"] == 2 and two.spec["placement"] == placement
    assert two.spec["hostPorts"] == [8000]
    assert decide(two, [], {"n1"}) == Decision(2, ())
    # Replicas and placement shape no instance: changing them replaces none.
    one = gateway_as_service(gateway())
    assert template_hash(one.spec) == template_hash(two.spec)


def test_new_gateway_ports_replace_one_replica_at_a_time_even_on_full_nodes() -> None:
    """With a replica on every node, a new one fits only where an old one
    left: one old replica goes while the first new one waits for its node."""
    moved = gateway_as_service(gateway(replicas=2, listeners=[
        {"name": "web", "port": 8001, "routes": [{"service": "web"}]}]))
    replicas = [instance("o1", node="n1", template=OLD), instance("o2", node="n2", template=OLD)]
    assert decide(moved, replicas, {"n1", "n2"}) == Decision(1, ("o1",))
    # A single replica keeps serving until its replacement is ready.
    single = gateway_as_service(gateway(listeners=[
        {"name": "web", "port": 8001, "routes": [{"service": "web"}]}]))
    assert decide(single, replicas[:1], {"n1"}) == Decision(1, ())
