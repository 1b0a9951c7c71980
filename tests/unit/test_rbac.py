"""The RBAC compiler (controlplane/xds/rbac.py): where each intention field
lands in Envoy's RBAC matcher (a table, read through a compact rendering of
the protos), and a property that the compiled matcher, evaluated the way
Envoy evaluates it, decides every call as :func:`intentions.decide` (what
`flotilla intentions check` prints) does.

Intentions go through the manifest validator first, so the compiler sees
them exactly as the store keeps them. The evaluator below covers the subset
of Envoy's matcher API that rbac.py emits and fails on anything else, so a
new kind of matcher has to be taught to it (and so checked) here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.specs import MAX_REGEX_PROGRAM_SIZE, re2_regex
from controlplane.manifests.validate import to_resource
from controlplane.model import Resource
from controlplane.xds import rbac
from controlplane.xds.intentions import ALLOW, DENY, Request, decide, ranked

DOMAIN = "mesh.test"
BACKEND = ("default", "backend")


def intention(name: str, source: str, action: str, destination: str = "backend",
              namespace: str = "default", **spec: Any) -> Resource:
    return to_resource({
        "apiVersion": "flotilla.dev/v1", "kind": "Intention",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, "destination": destination, "action": action, **spec}})


def spiffe(service: tuple[str, str]) -> str:
    return f"spiffe://{DOMAIN}/ns/{service[0]}/svc/{service[1]}"


# --- Reading the protos --------------------------------------------------------------------

def _inner(typed: Any, message: Any) -> Any:
    found = message()
    assert typed.typed_config.Unpack(found), typed.typed_config.type_url
    return found


def _action(on_match: Any) -> tuple[str, str]:
    """(allow or deny, the action's name) of an on_match."""
    assert on_match.action.name == "envoy.filters.rbac.action"
    action = _inner(on_match.action, rbac_config.Action)
    return (ALLOW if action.action == rbac_config.RBAC.ALLOW else DENY, action.name)


def _input(single: Any) -> str:
    """``san`` or the header's name."""
    if single.input.name == "envoy.matching.inputs.uri_san":
        _inner(single.input, ssl_inputs_pb2.UriSanInput)
        return "san"
    assert single.input.name == "envoy.matching.inputs.request_headers"
    return str(_inner(single.input, http_inputs_pb2.HttpRequestHeaderMatchInput).header_name)


def _value(matcher: Any) -> tuple[str, str]:
    assert not matcher.ignore_case
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        assert matcher.safe_regex.WhichOneof("engine_type") == "google_re2"
        pattern = str(matcher.safe_regex.regex)
        size = re2_regex(pattern).programsize
        assert size <= MAX_REGEX_PROGRAM_SIZE, f"Envoy would NACK {pattern!r} (size {size})"
        return "regex", pattern
    assert kind in ("exact", "prefix", "suffix"), kind
    return kind, str(getattr(matcher, kind))


def render(predicate: Any) -> str:
    """``san exact 'spiffe://...'``, ``(a & b)``, ``(a | b)``, ``!a``."""
    kind = predicate.WhichOneof("match_type")
    if kind == "single_predicate":
        single = predicate.single_predicate
        how, value = _value(single.value_match)
        return f"{_input(single)} {how} {value!r}"
    if kind == "not_matcher":
        return "!" + render(predicate.not_matcher)
    join = {"and_matcher": " & ", "or_matcher": " | "}[kind]
    return "(" + join.join(render(p) for p in getattr(predicate, kind).predicate) + ")"


def rendered(matcher: Any) -> list[str]:
    """``name: action if predicate`` per entry, in order, then the default."""
    out = []
    for entry in matcher.matcher_list.matchers:
        action, name = _action(entry.on_match)
        out.append(f"{name}: {action} if {render(entry.predicate)}")
    return [*out, "%s: %s" % _action(matcher.on_no_match)[::-1]]


def http(intentions: Sequence[Resource], default: str = DENY) -> list[str]:
    compiled = rbac.http_filter(ranked(intentions), BACKEND, DOMAIN, default)
    assert not compiled.HasField("rules"), "the matcher API only"
    return rendered(compiled.matcher)


# --- Evaluating them as Envoy does ---------------------------------------------------------

def holds(predicate: Any, san: str, headers: Mapping[str, str] | None) -> bool:
    """Envoy's matcher: an input with no data (an absent header) matches
    nothing; ``host`` is found as ``:authority``."""
    kind = predicate.WhichOneof("match_type")
    if kind == "single_predicate":
        single = predicate.single_predicate
        name = _input(single)
        if name == "san":
            data: str | None = san
        else:
            assert headers is not None, "a network filter has no request headers"
            data = headers.get(":authority" if name == "host" else name)
        if data is None:
            return False
        how, value = _value(single.value_match)
        if how == "regex":
            return re2_regex(value).fullmatch(data) is not None
        return {"exact": data == value, "prefix": data.startswith(value),
                "suffix": data.endswith(value)}[how]
    if kind == "not_matcher":
        return not holds(predicate.not_matcher, san, headers)
    results = [holds(p, san, headers) for p in getattr(predicate, kind).predicate]
    return all(results) if kind == "and_matcher" else any(results)


def evaluate(matcher: Any, source: tuple[str, str],
             request: Request | None) -> tuple[str, str]:
    """(action, name of the entry that decided): the first entry whose
    predicate holds, else ``on_no_match``; the request as Envoy's header map
    has it (lower-case names, ``:path`` with the query, ``:method``)."""
    headers = None if request is None else {
        **{(":authority" if k.lower() == "host" else k.lower()): v
           for k, v in request.headers.items()},
        ":path": request.path, ":method": request.method}
    for entry in matcher.matcher_list.matchers:
        if holds(entry.predicate, spiffe(source), headers):
            return _action(entry.on_match)
    return _action(matcher.on_no_match)


# --- Where each field lands ----------------------------------------------------------------

SAN_FRONTEND = "san exact 'spiffe://mesh.test/ns/default/svc/frontend'"

CASES = [
    pytest.param([intention("a", "frontend", "allow")],
                 [f"default/a: allow if {SAN_FRONTEND}", "default: deny"], id="allow-l4-exact"),
    pytest.param([intention("d", "frontend", "deny")],
                 [f"default/d: deny if {SAN_FRONTEND}", "default: deny"], id="deny-l4-exact"),
    pytest.param([intention("n", "shop/*", "allow")],
                 ["default/n: allow if san prefix 'spiffe://mesh.test/ns/shop/svc/'",
                  "default: deny"], id="namespace-wildcard-source"),
    pytest.param([intention("s", "*", "deny")],
                 ["default/s: deny if san prefix 'spiffe://mesh.test/'", "default: deny"],
                 id="any-source"),
    pytest.param([intention("s", "*/frontend", "allow")],
                 ["default/s: allow if (san prefix 'spiffe://mesh.test/ns/' & "
                  "san suffix '/svc/frontend')", "default: deny"],
                 id="a-name-in-any-namespace-is-not-every-source"),
    pytest.param([intention("o", "frontend", "allow", destination="other"),
                  intention("w", "frontend", "deny", destination="shop/backend")],
                 ["default: deny"], id="other-destinations-are-left-out"),
    pytest.param([intention("a", "frontend", "allow", destination="*")],
                 [f"default/a: allow if {SAN_FRONTEND}", "default: deny"],
                 id="wildcard-destination"),
    pytest.param([intention("p", "frontend", "allow", http=[{"pathExact": "/a"}])],
                 [f"default/p#0: allow if ({SAN_FRONTEND} & "
                  "(:path exact '/a' | :path prefix '/a?'))", "default: deny"],
                 id="pathExact-with-or-without-a-query"),
    pytest.param([intention("p", "frontend", "allow", http=[{"pathPrefix": "/api/"}])],
                 [f"default/p#0: allow if ({SAN_FRONTEND} & :path prefix '/api/')",
                  "default: deny"], id="pathPrefix"),
    pytest.param([intention("m", "frontend", "allow", http=[{"methods": ["GET", "HEAD"]}])],
                 [f"default/m#0: allow if ({SAN_FRONTEND} & "
                  "(:method exact 'GET' | :method exact 'HEAD'))", "default: deny"],
                 id="methods"),
    pytest.param([intention("h", "frontend", "allow", http=[{"headers": [
        {"name": "X-Team", "exact": "core"}]}])],
                 [f"default/h#0: allow if ({SAN_FRONTEND} & x-team exact 'core')",
                  "default: deny"], id="header-exact-lower-cases-the-name"),
    pytest.param([intention("h", "frontend", "allow", http=[{"headers": [
        {"name": "x-team", "prefix": "co"}]}])],
                 [f"default/h#0: allow if ({SAN_FRONTEND} & x-team prefix 'co')",
                  "default: deny"], id="header-prefix"),
    pytest.param([intention("h", "frontend", "allow", http=[{"headers": [
        {"name": "x-build", "regex": "[0-9]+"}]}])],
                 [f"default/h#0: allow if ({SAN_FRONTEND} & x-build regex '[0-9]+')",
                  "default: deny"], id="header-regex-is-re2"),
    pytest.param([intention("h", "frontend", "allow", http=[{"headers": [
        {"name": "x-debug", "present": True}]}])],
                 [f"default/h#0: allow if ({SAN_FRONTEND} & x-debug regex '.*')",
                  "default: deny"], id="header-present"),
    pytest.param([intention("h", "frontend", "allow", http=[{"headers": [
        {"name": "x-debug", "present": False}]}])],
                 [f"default/h#0: allow if ({SAN_FRONTEND} & !x-debug regex '.*')",
                  "default: deny"], id="header-absent"),
    pytest.param([intention("r", "frontend", "deny", http=[
        {"pathPrefix": "/admin", "methods": ["POST"],
         "headers": [{"name": "x-a", "exact": "1"}, {"name": "x-b", "present": True}]},
        {"pathExact": "/x"}])],
                 [f"default/r#0: deny if ({SAN_FRONTEND} & :path prefix '/admin' & "
                  ":method exact 'POST' & x-a exact '1' & x-b regex '.*')",
                  f"default/r#1: deny if ({SAN_FRONTEND} & "
                  "(:path exact '/x' | :path prefix '/x?'))", "default: deny"],
                 id="a-rule-is-all-of-its-conditions-and-each-rule-is-an-entry"),
    pytest.param([intention("wide", "*", "allow"),
                  intention("ns", "default/*", "allow"),
                  intention("exact", "frontend", "deny", http=[{"pathPrefix": "/admin"}])],
                 [f"default/exact#0: deny if ({SAN_FRONTEND} & :path prefix '/admin')",
                  "default/ns: allow if san prefix 'spiffe://mesh.test/ns/default/svc/'",
                  "default/wide: allow if san prefix 'spiffe://mesh.test/'", "default: deny"],
                 id="exact-before-namespace-before-any"),
    # Equal precedence (exact -> exact, from two namespaces): the deny first.
    pytest.param([intention("a-allow", "frontend", "allow"),
                  intention("z-deny", "default/frontend", "deny", destination="default/backend",
                            namespace="ops", http=[{"pathExact": "/secret"}])],
                 [f"ops/z-deny#0: deny if ({SAN_FRONTEND} & "
                  "(:path exact '/secret' | :path prefix '/secret?'))",
                  f"default/a-allow: allow if {SAN_FRONTEND}", "default: deny"],
                 id="deny-first-at-equal-precedence"),
]


@pytest.mark.parametrize(("intentions", "expected"), CASES)
def test_http_rbac_fields(intentions: list[Resource], expected: list[str]) -> None:
    assert http(intentions) == expected


def test_the_default_is_on_no_match() -> None:
    assert http([], default=ALLOW) == ["default: allow"]
    assert http([], default=DENY) == ["default: deny"]
    compiled = rbac.http_filter([], BACKEND, DOMAIN, DENY)
    assert not compiled.matcher.HasField("matcher_list")  # Envoy refuses an empty list


def test_the_network_filter_leaves_l7_intentions_out() -> None:
    mesh = ranked([intention("l4", "frontend", "allow"),
                   intention("l7", "shop/*", "deny", http=[{"pathPrefix": "/"}])])
    compiled = rbac.network_filter(mesh, BACKEND, DOMAIN, ALLOW)
    assert compiled.stat_prefix == "inbound_rbac"
    assert rendered(compiled.matcher) == [f"default/l4: allow if {SAN_FRONTEND}",
                                          "default: allow"]


# --- The property: Envoy decides as `intentions check` does -------------------------------

SERVICES = [(ns, name) for ns in ("default", "shop") for name in ("frontend", "backend", "cart")]
PATTERNS = ["*", "*/*", "default/*", "shop/*", "*/frontend", "*/cart", "frontend", "backend",
            "shop/cart", "default/backend"]
HEADER_NAMES = ["x-team", "X-Team", "x-debug", "host", ":authority", ":path"]
VALUES = ["core", "core-2", "edge", "", "7", "\u0663"]  # the last: an Arabic-Indic digit
REGEXES = ["core.*", "[a-z]+", "(core|edge)", r"\d", "c?ore(-[0-9])?", ".*"]
LONG = "/" + "a" * 120  # as a regex, too large an RE2 program for Envoy
PATHS = ["/", "/a", "/a?x=1", "/a/b", "/ab", "/admin", "/admin?", "/x?y", LONG, LONG + "?q"]
METHODS = ["GET", "POST", "DELETE", "get"]

header_rules = st.one_of(
    st.builds(lambda n, v: {"name": n, "exact": v}, st.sampled_from(HEADER_NAMES),
              st.sampled_from(VALUES)),
    st.builds(lambda n, v: {"name": n, "prefix": v}, st.sampled_from(HEADER_NAMES),
              st.sampled_from([v for v in VALUES if v])),
    st.builds(lambda n, v: {"name": n, "regex": v}, st.sampled_from(HEADER_NAMES),
              st.sampled_from(REGEXES)),
    st.builds(lambda n, v: {"name": n, "present": v}, st.sampled_from(HEADER_NAMES),
              st.booleans()),
)


@st.composite
def http_rules(draw: st.DrawFn) -> dict[str, Any]:
    found: dict[str, Any] = {}
    path = draw(st.sampled_from([None, "pathExact", "pathPrefix"]))
    if path:
        found[path] = draw(st.sampled_from(["/a", "/admin", "/", "/x?y", LONG]))
    methods = draw(st.lists(st.sampled_from(["GET", "POST", "DELETE"]), max_size=2, unique=True))
    if methods:
        found["methods"] = methods
    headers = draw(st.lists(header_rules, max_size=2))
    if headers or not found:
        found["headers"] = headers or [draw(header_rules)]
    return found


@st.composite
def meshes(draw: st.DrawFn) -> list[Resource]:
    count = draw(st.integers(0, 6))
    return [intention(f"i{i}", draw(st.sampled_from(PATTERNS)), draw(st.sampled_from(
        [ALLOW, DENY])), destination=draw(st.sampled_from(PATTERNS)),
        namespace=draw(st.sampled_from(["default", "shop"])),
        http=draw(st.lists(http_rules(), max_size=2)))
        for i in range(count)]


requests = st.builds(
    Request, st.sampled_from(PATHS), st.sampled_from(METHODS),
    st.dictionaries(st.sampled_from(["x-team", "X-Debug", "x-other", "Host"]),
                    st.sampled_from(VALUES), max_size=2))


def _by(decision: Any) -> str:
    return decision.by if decision.rule is None else f"{decision.by}#{decision.rule}"


@settings(max_examples=400, deadline=None)
@given(mesh=meshes(), source=st.sampled_from(SERVICES), destination=st.sampled_from(SERVICES),
       request=requests, default=st.sampled_from([ALLOW, DENY]))
def test_envoy_decides_every_request_as_intentions_check_does(
        mesh: list[Resource], source: tuple[str, str], destination: tuple[str, str],
        request: Request, default: str) -> None:
    order = ranked(mesh)
    decision = decide(order, source, destination, request, default)
    compiled = rbac.http_filter(order, destination, DOMAIN, default)
    assert evaluate(compiled.matcher, source, request) == (decision.action, _by(decision))


@settings(max_examples=200, deadline=None)
@given(mesh=meshes(), source=st.sampled_from(SERVICES), destination=st.sampled_from(SERVICES),
       default=st.sampled_from([ALLOW, DENY]))
def test_envoy_decides_every_connection_as_intentions_check_does(
        mesh: list[Resource], source: tuple[str, str], destination: tuple[str, str],
        default: str) -> None:
    order = ranked(mesh)
    decision = decide(order, source, destination, None, default)
    compiled = rbac.network_filter(order, destination, DOMAIN, default)
    assert evaluate(compiled.matcher, source, None) == (decision.action, _by(decision))
