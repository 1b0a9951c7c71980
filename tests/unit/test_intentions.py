"""Intention decisions: precedence, deny wins ties, L7 rules (matched as Envoy
matches them: RE2 regexes, refused at apply when Envoy could not run them), the
default."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.errors import InvalidManifest
from controlplane.manifests import to_resource
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


def header_rule(**match: Any) -> list[Any]:
    return ranked([intention("h", "*", "api", ALLOW, http=[{"headers": [
        {"name": "x-team", **match}]}])])


@pytest.mark.parametrize(("match", "headers", "allowed"), [
    ({"exact": "core"}, {"X-Team": "core"}, True),
    ({"exact": "core"}, {"x-team": "core-2"}, False),
    ({"exact": ""}, {"x-team": ""}, True),
    ({"exact": ""}, {}, False),
    ({"prefix": "co"}, {"x-team": "core"}, True),
    ({"prefix": "co"}, {"x-team": "edge"}, False),
    ({"prefix": "co"}, {}, False),
    ({"regex": "core|edge"}, {"x-team": "edge"}, True),
    ({"regex": "core"}, {"x-team": "core-2"}, False),  # the whole value, as Envoy
    ({"regex": "co.*"}, {}, False),
    # RE2's \d is ASCII, as in Envoy; Python's re would match the Arabic-Indic 3.
    ({"regex": r"\d"}, {"x-team": "\u0663"}, False),
    ({"regex": r"\d"}, {"x-team": "3"}, True),
    ({"present": True}, {"x-team": ""}, True),
    ({"present": True}, {"x-other": "core"}, False),
    ({"present": False}, {}, True),
    ({"present": False}, {"x-team": "core"}, False),
], ids=lambda v: repr(v) if not isinstance(v, bool) else ("allowed" if v else "denied"))
def test_each_header_match(match: dict[str, Any], headers: dict[str, str], allowed: bool) -> None:
    decision = decide(header_rule(**match), ("d", "x"), ("default", "api"), Request(
        headers=headers))
    assert decision.action == (ALLOW if allowed else DENY), decision.explain()


@pytest.mark.parametrize(("rule", "request_", "allowed"), [
    ({"pathExact": "/a"}, Request("/a"), True),
    ({"pathExact": "/a"}, Request("/a?x=1"), True),  # the query is not part of the path
    ({"pathExact": "/a"}, Request("/a/"), False),
    ({"pathExact": "/a"}, Request("/ab"), False),
    ({"pathPrefix": "/a"}, Request("/ab?x"), True),
    ({"methods": ["GET"]}, Request("/", "GET"), True),
    ({"methods": ["GET"]}, Request("/", "get"), False),  # methods are case-sensitive
], ids=["exact", "exact-with-query", "exact-not-a-prefix", "exact-not-a-longer-path",
        "prefix", "method", "method-case"])
def test_path_and_method_rules(rule: dict[str, Any], request_: Request, allowed: bool) -> None:
    rules = ranked([intention("p", "*", "api", ALLOW, http=[rule])])
    decision = decide(rules, ("d", "x"), ("default", "api"), request_)
    assert decision.action == (ALLOW if allowed else DENY), decision.explain()


def refused(**match: Any) -> list[str]:
    doc = {"apiVersion": "flotilla.dev/v1", "kind": "Intention", "metadata": {"name": "i"},
           "spec": {"source": "a", "destination": "b", "action": "allow", "http": [
               {"pathPrefix": "/"},
               {"headers": [{"name": "x-ok", "exact": "1"}, {"name": "x-team", **match}]}]}}
    with pytest.raises(InvalidManifest) as caught:
        to_resource(doc, "i.yaml")
    return [f"{v.path}: {v.message}" for v in caught.value.violations]


@pytest.mark.parametrize(("match", "says"), [
    ({"regex": r"(a)\1"}, "invalid escape sequence"),  # a backreference
    ({"regex": "(?=a)a"}, "invalid perl operator: (?="),  # lookahead
    ({"regex": "(?<!a)b"}, "invalid perl operator: (?<!"),  # lookbehind
    ({"regex": "a++"}, "bad repetition operator: ++"),  # possessive
    ({"regex": "(?>a)"}, "invalid perl operator: (?>"),  # atomic group
    ({"regex": r"a\Z"}, r"invalid escape sequence: \Z"),
    ({"regex": "[a-z]{200}"}, "too complex for Envoy (RE2 program size 204, at most 100)"),
    ({"regex": ""}, "must not be empty"),
], ids=["backreference", "lookahead", "lookbehind", "possessive", "atomic", "python-Z",
        "program-size", "empty"])
def test_a_regex_envoy_cannot_run_is_refused_naming_the_field(match: dict[str, Any],
                                                              says: str) -> None:
    [problem] = refused(**match)
    assert problem.startswith("spec.http[1].headers[1].regex: "), problem
    assert says in problem
    if match["regex"] and "program size" not in says:
        assert "write RE2 syntax" in problem


def test_a_header_match_envoy_would_refuse_or_never_see_is_refused() -> None:
    assert refused(prefix="") == ["spec.http[1].headers[1].prefix: must not be empty"]
    [name] = refused(exact="1", name="x team")
    assert name.startswith("spec.http[1].headers[1].name: 'x team' is not an HTTP header name")


def test_host_is_authority_and_pseudo_headers_are_headers() -> None:
    """As Envoy finds them: HTTP/1's Host under either name, :path and :method."""
    def allowed(name: str, headers: dict[str, str], path: str = "/", prefix: str = "shop") -> bool:
        rules = ranked([intention("h", "*", "api", ALLOW, http=[{"headers": [
            {"name": name, "prefix": prefix}]}])])
        return decide(rules, ("d", "x"), ("default", "api"),
                      Request(path, headers=headers)).action == ALLOW

    assert allowed(":authority", {"Host": "shop.test"})
    assert allowed("host", {":authority": "shop.test"})
    assert not allowed("host", {"x-host": "shop.test"})
    assert allowed(":path", {}, "/shop/cart", "/shop") and not allowed(":path", {}, "/", "/shop")
    assert allowed(":method", {}, prefix="GE")
