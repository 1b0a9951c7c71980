"""Replica decisions: how many instances to create, which to remove."""

from __future__ import annotations

from typing import Any

import pytest

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
