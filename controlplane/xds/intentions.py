"""Intentions: who may call whom, decided the way every proxy will enforce it.

``decide(ranked(intentions), source, destination, request, default)`` is the one
rule, used by `flotilla intentions check` and by the RBAC compiler alike:

- Patterns are ``name`` (the intention's namespace), ``namespace/name``,
  ``namespace/*`` and ``*`` (or ``*/*``: every service of every namespace).
- Precedence (as Consul orders it): the destination's exactness counts
  first, then the source's: exact > ``namespace/*`` > ``*``. At equal
  precedence a deny wins.
- An intention with L7 ``http`` rules applies to a request when one of its
  rules matches it (path exact or prefix, methods, headers); to other requests
  it does not apply, and the next intention (or the default) decides.
  Without a request (a plain connection) L7 intentions do not apply.
- Nothing applies: the mesh-wide default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.model import Resource
from controlplane.model.specs import IntentionSpec, re2_regex
from controlplane.model.specs.intention import HttpPermission

ALLOW = "allow"
DENY = "deny"
DEFAULT = "default"

Service = tuple[str, str]


@dataclass(frozen=True)
class Request:
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: str
    #: ``namespace/name`` of the intention that decided, or "default".
    by: str
    precedence: int = 0
    #: The L7 rule (its index) that matched, when one did.
    rule: int | None = None

    def explain(self) -> str:
        if self.by == DEFAULT:
            return f"{self.action.upper()} by the mesh-wide default ({self.action})"
        rule = f", http rule {self.rule}" if self.rule is not None else ""
        return f"{self.action.upper()} by intention {self.by} (precedence {self.precedence}{rule})"


def qualify(pattern: str, namespace: str) -> tuple[str, str]:
    """``(namespace, name)`` of a pattern written in an intention of ``namespace``."""
    if pattern == "*":
        return ("*", "*")
    ns, _, name = pattern.rpartition("/")
    return (ns or namespace, name)


def _exactness(pattern: tuple[str, str]) -> int:
    """2 exact, 1 ``namespace/*``, 0 ``*/*``."""
    return 0 if pattern[0] == "*" else (1 if pattern[1] == "*" else 2)


def precedence(source: tuple[str, str], destination: tuple[str, str]) -> int:
    """1 (``*`` -> ``*``) to 9 (exact -> exact)."""
    return _exactness(destination) * 3 + _exactness(source) + 1


def matches(pattern: tuple[str, str], service: Service) -> bool:
    return pattern[0] in ("*", service[0]) and pattern[1] in ("*", service[1])


def header_name(name: str) -> str:
    """A header's name as Envoy looks it up: lower case, and HTTP/1's ``host``
    is HTTP/2's ``:authority``."""
    lowered = name.lower()
    return ":authority" if lowered == "host" else lowered


def rule_matches(rule: HttpPermission, request: Request) -> bool:
    """Whether one L7 rule matches, as Envoy's RBAC matches it: ``pathExact``
    ignores a query string, ``pathPrefix`` does not; methods are
    case-sensitive; a header rule on an absent header fails (but for
    ``present: false``); a regex is RE2, matched against the whole value;
    ``:path`` and ``:method`` are headers too."""
    path, exact = request.path, rule.path_exact
    if exact is not None and not (path == exact or path.startswith(f"{exact}?")):
        return False
    if rule.path_prefix is not None and not path.startswith(rule.path_prefix):
        return False
    if rule.methods and request.method not in rule.methods:
        return False
    headers = {**{header_name(k): v for k, v in request.headers.items()},
               ":path": path, ":method": request.method}
    for header in rule.headers:
        value = headers.get(header_name(header.name))
        if header.present is not None:
            if (value is not None) != header.present:
                return False
        elif value is None:
            return False
        elif header.exact is not None and value != header.exact:
            return False
        elif header.prefix is not None and not value.startswith(header.prefix):
            return False
        elif header.regex is not None and re2_regex(header.regex).fullmatch(value) is None:
            return False
    return True


@dataclass(frozen=True)
class Ranked:
    """An intention with its patterns resolved, in evaluation order."""

    key: str
    source: tuple[str, str]
    destination: tuple[str, str]
    action: str
    rules: tuple[HttpPermission, ...]
    precedence: int

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.precedence, 0 if self.action == DENY else 1, self.key)


def ranked(intentions: Iterable[Resource]) -> list[Ranked]:
    """Every intention, highest precedence first, deny before allow."""
    found = []
    for intention in intentions:
        spec = intention.typed(IntentionSpec)
        source = qualify(spec.source, intention.namespace)
        destination = qualify(spec.destination, intention.namespace)
        found.append(Ranked(
            key=f"{intention.namespace}/{intention.name}", source=source,
            destination=destination, action=spec.action,
            rules=tuple(spec.http), precedence=precedence(source, destination),
        ))
    return sorted(found, key=lambda r: r.order)


def decide(intentions: Sequence[Ranked], source: Service, destination: Service,
           request: Request | None = None, default: str = DENY) -> Decision:
    """The decision for one call; ``intentions`` as :func:`ranked` orders them."""
    for intention in intentions:
        if not (matches(intention.source, source) and matches(intention.destination,
                                                              destination)):
            continue
        if not intention.rules:
            return Decision(intention.action, intention.key, intention.precedence)
        if request is None:
            continue
        for index, rule in enumerate(intention.rules):
            if rule_matches(rule, request):
                return Decision(intention.action, intention.key, intention.precedence, index)
    return Decision(default, DEFAULT)
