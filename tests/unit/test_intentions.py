"""Intention decisions: precedence, deny wins ties, L7 rules, the default."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.model import Resource
from controlplane.xds.intentions import (
    ALLOW,
    DEFAULT,
    DENY,
    Request,
    decide,
    precedence,
    qualify,
    ranked,
)


def intention(name: str, source: str, destination: str, action: str, namespace: str = "default",
              **spec: Any) -> Resource:
    return Resource(kind="Intention", name=name, namespace=namespace,
                    spec={"source": source, "destination": destination, "action": action, **spec})


MESH = [
    intention("default-deny", "*", "*", DENY),
    intention("frontend-to-backend", "frontend", "backend", ALLOW),
    intention("shop-to-backend", "shop/*", "backend", DENY),
    intention("ops-anything", "ops/*", "*", ALLOW, namespace="ops"),
    intention("public-only", "*", "web", ALLOW, http=[
        {"pathPrefix": "/public/", "methods": ["GET"]},
        {"pathExact": "/healthz"},
    ]),
    intention("tie-allow", "default/*", "default/api", ALLOW),
    intention("tie-deny", "default/*", "api", DENY, namespace="default"),
]


@pytest.mark.parametrize(("source", "destination", "request_", "action", "by"), [
    (("default", "frontend"), ("default", "backend"), None, ALLOW, "default/frontend-to-backend"),
    (("default", "other"), ("default", "backend"), None, DENY, "default/default-deny"),
    (("shop", "cart"), ("default", "backend"), None, DENY, "default/shop-to-backend"),
    (("ops", "debugger"), ("default", "backend"), None, ALLOW, "ops/ops-anything"),
    (("ops", "debugger"), ("shop", "cart"), None, ALLOW, "ops/ops-anything"),
    # Equal precedence (namespace/* -> exact): deny wins.
    (("default", "x"), ("default", "api"), None, DENY, "default/tie-deny"),
    # L7: the rule must match; otherwise the next intention decides.
    (("default", "x"), ("default", "web"), Request("/public/x", "GET"), ALLOW, "default/public-only"),
    (("default", "x"), ("default", "web"), Request("/public/x", "POST"), DENY, "default/default-deny"),
    (("default", "x"), ("default", "web"), Request("/private", "GET"), DENY, "default/default-deny"),
    (("default", "x"), ("default", "web"), Request("/healthz", "DELETE"), ALLOW, "default/public-only"),
    (("default", "x"), ("default", "web"), None, DENY, "default/default-deny"),
])
def test_decisions(source: tuple[str, str], destination: tuple[str, str],
                   request_: Request | None, action: str, by: str) -> None:
    decision = decide(ranked(MESH), source, destination, request_)
    assert (decision.action, decision.by) == (action, by), decision.explain()


def test_nothing_applies_the_default_decides() -> None:
    only = ranked([intention("a", "frontend", "backend", ALLOW)])
    assert decide(only, ("default", "x"), ("default", "y")).by == DEFAULT
    assert decide(only, ("default", "x"), ("default", "y"), default=ALLOW).action == ALLOW
    assert "mesh-wide default" in decide(only, ("default", "x"), ("default", "y")).explain()


def test_precedence_puts_the_destination_first() -> None:
    exact, ns, anything = ("a", "b"), ("a", "*"), ("*", "*")
    assert precedence(exact, exact) == 9 and precedence(anything, anything) == 1
    assert precedence(anything, exact) > precedence(exact, ns) > precedence(exact, anything)
    assert qualify("*", "shop") == ("*", "*") and qualify("web", "shop") == ("shop", "web")
    assert qualify("ops/*", "shop") == ("ops", "*")


def test_header_rules() -> None:
    rules = ranked([intention("h", "*", "api", ALLOW, http=[{"headers": [
        {"name": "X-Team", "exact": "core"}, {"name": "x-debug", "present": False}]}])])
    allowed = Request(headers={"x-team": "core"})
    assert decide(rules, ("d", "x"), ("default", "api"), allowed).action == ALLOW
    assert decide(rules, ("d", "x"), ("default", "api"),
                  Request(headers={"x-team": "core", "x-debug": "1"})).action == DENY
    assert decide(rules, ("d", "x"), ("default", "api"),
                  Request(headers={"x-team": "edge"})).action == DENY
