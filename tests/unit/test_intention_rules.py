"""Apply's rule of one intention per source and destination reads patterns
as intentions do: ``*`` is every service of every namespace, not the
intention's own namespace's (``default/*``)."""

from __future__ import annotations

from controlplane.manifests import check_batch, to_resource
from controlplane.model import Resource
from tests.unit.test_external import Objects


def intention(name: str, source: str, destination: str = "web",
              action: str = "allow") -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": "Intention",
                        "metadata": {"name": name},
                        "spec": {"source": source, "destination": destination,
                                 "action": action}})


def service(name: str) -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                        "metadata": {"name": name}, "spec": {"image": "app:1", "port": 8080}})


WEB, FRONTEND = service("web"), service("frontend")


def test_every_namespace_and_this_namespace_are_two_sources() -> None:
    batch = [intention("all", "*", action="deny"), intention("mine", "default/*")]
    assert check_batch(batch, Objects(WEB)) == []


def test_the_same_source_written_two_ways_is_one_intention_too_many() -> None:
    batch = [intention("short", "frontend"), intention("long", "default/frontend")]
    problems = check_batch(batch, Objects(WEB, FRONTEND))
    assert [(p.path, p.message) for p in problems][:1] == [(
        "spec.source", "Intention 'long' already covers default/frontend -> default/web; "
        "one intention per source and destination, so edit that one")]
