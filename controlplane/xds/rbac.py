"""Intentions compiled to Envoy RBAC on a sidecar's inbound listener.

The same first-match rule as :func:`controlplane.xds.intentions.decide`, as an
Envoy matcher list: one entry per intention (per L7 rule) that applies to the
destination, highest precedence first, deny before allow at equal
precedence; the peer is its certificate's SPIFFE ID (mutual TLS), the request
its ``:path``, ``:method`` and headers; nothing matching is the mesh-wide
default. http and grpc services get the HTTP RBAC filter (denied: 403, which
Envoy answers gRPC callers as PERMISSION_DENIED); tcp services the network
one (denied: the connection closes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension
from xds.type.matcher.v3 import matcher_pb2, regex_pb2, string_pb2

from controlplane.model.specs.intention import HttpPermission
from controlplane.xds.intentions import ALLOW, DENY, Ranked, matches

Matcher: Any = matcher_pb2.Matcher
Predicate: Any = Matcher.MatcherList.Predicate
#: xds-protos ships no type information: its messages are typed as Any here.
Proto = Any


def _typed(name: str, message: Message) -> Proto:
    packed = any_pb2.Any()
    packed.Pack(message)
    return xds_extension.TypedExtensionConfig(name=name, typed_config=packed)


def _action(name: str, action: str) -> Proto:
    return Matcher.OnMatch(action=_typed("envoy.filters.rbac.action", rbac_config.Action(
        name=name, action=rbac_config.RBAC.ALLOW if action == ALLOW else rbac_config.RBAC.DENY)))


def _single(input_name: str, input_message: Message,
            value: Proto) -> Proto:
    return Predicate(single_predicate=Predicate.SinglePredicate(
        input=_typed(input_name, input_message), value_match=value))


def _header(name: str, value: Proto) -> Proto:
    return _single("envoy.matching.inputs.request_headers",
                   http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name), value)


def _all(predicates: Sequence[Proto]) -> Proto:
    if len(predicates) == 1:
        return predicates[0]
    return Predicate(and_matcher=Predicate.PredicateList(predicate=list(predicates)))


def _any(predicates: Sequence[Proto]) -> Proto:
    if len(predicates) == 1:
        return predicates[0]
    return Predicate(or_matcher=Predicate.PredicateList(predicate=list(predicates)))


def _regex(pattern: str) -> Proto:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(
        google_re2=regex_pb2.RegexMatcher.GoogleRE2(), regex=pattern))


def _san(value: Proto) -> Proto:
    return _single("envoy.matching.inputs.uri_san", ssl_inputs_pb2.UriSanInput(), value)


def peer(trust_domain: str, source: tuple[str, str]) -> Proto:
    """The peer certificate's SPIFFE ID matches a source pattern. Namespaces
    and names are DNS labels (no ``/``), so ``*/name`` is a prefix and a suffix."""
    namespace, name = source
    root = f"spiffe://{trust_domain}/"
    if (namespace, name) == ("*", "*"):
        return _san(string_pb2.StringMatcher(prefix=root))
    if namespace == "*":
        return _all([_san(string_pb2.StringMatcher(prefix=f"{root}ns/")),
                     _san(string_pb2.StringMatcher(suffix=f"/svc/{name}"))])
    if name == "*":
        return _san(string_pb2.StringMatcher(prefix=f"{root}ns/{namespace}/svc/"))
    return _san(string_pb2.StringMatcher(exact=f"{root}ns/{namespace}/svc/{name}"))


def rule(permission: HttpPermission) -> list[Proto]:
    """The request conditions of one L7 rule."""
    found = []
    if permission.path_exact is not None:
        # The query string is not part of the path. No regex: Envoy refuses one
        # whose RE2 program is larger than 100, which a long path would make.
        path = permission.path_exact
        found.append(_any([_header(":path", string_pb2.StringMatcher(exact=path)),
                           _header(":path", string_pb2.StringMatcher(prefix=f"{path}?"))]))
    if permission.path_prefix is not None:
        found.append(_header(":path", string_pb2.StringMatcher(prefix=permission.path_prefix)))
    if permission.methods:
        found.append(_any([_header(":method", string_pb2.StringMatcher(exact=m))
                           for m in permission.methods]))
    for header in permission.headers:
        name = header.name.lower()
        if header.exact is not None:
            found.append(_header(name, string_pb2.StringMatcher(exact=header.exact)))
        if header.prefix is not None:
            found.append(_header(name, string_pb2.StringMatcher(prefix=header.prefix)))
        if header.regex is not None:
            found.append(_header(name, _regex(header.regex)))
        if header.present is not None:
            present = _header(name, _regex(".*"))
            found.append(present if header.present else Predicate(not_matcher=present))
    return found


def matcher(intentions: Sequence[Ranked], destination: tuple[str, str], trust_domain: str,
            default: str, *, l7: bool) -> Proto:
    entries = []
    for intention in intentions:
        if not matches(intention.destination, destination):
            continue
        source = peer(trust_domain, intention.source)
        if not intention.rules:
            entries.append(Matcher.MatcherList.FieldMatcher(
                predicate=source, on_match=_action(intention.key, intention.action)))
        elif l7:
            entries += [Matcher.MatcherList.FieldMatcher(
                predicate=_all([source, *rule(permission)]),
                on_match=_action(f"{intention.key}#{index}", intention.action))
                for index, permission in enumerate(intention.rules)]
    found = Matcher(on_no_match=_action("default", DENY if default == DENY else ALLOW))
    if entries:
        found.matcher_list.CopyFrom(Matcher.MatcherList(matchers=entries))
    return found


def http_filter(intentions: Sequence[Ranked], destination: tuple[str, str],
                trust_domain: str, default: str) -> Proto:
    return http_rbac.RBAC(matcher=matcher(intentions, destination, trust_domain, default,
                                          l7=True))


def network_filter(intentions: Sequence[Ranked], destination: tuple[str, str],
                   trust_domain: str, default: str) -> Proto:
    return network_rbac.RBAC(stat_prefix="inbound_rbac", matcher=matcher(
        intentions, destination, trust_domain, default, l7=False))

