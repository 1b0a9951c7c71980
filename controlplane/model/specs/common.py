"""What every kind's schema is made of: the strict base model, the marker
of fields refused until they have an effect, placement (Services and
Gateways) and header matches (TrafficPolicy routes and Intentions)."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from controlplane.model.types import FieldError, Name, check_label_key

#: Ports inside every pod that belong to the Envoy sidecar.
RESERVED_PORTS = range(15000, 15100)


class Schema(BaseModel):
    """A spec, or part of one: frozen, strict, camelCase in manifests."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, frozen=True, populate_by_name=False
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as stored and as `get -o yaml` shows it: camelCase,
        defaults included, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SystemSchema(Schema):
    """The spec of an object Flotilla writes itself (Node, Instance,
    Certificate): never applied, so it is built by field name in code and
    decoded by alias from the store; a field an older version stored and this
    one dropped is ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


#: The key, in a field's ``json_schema_extra``, of why the field is refused:
#: the schema knows its shape, Flotilla does not give it an effect yet.
NOT_SUPPORTED = "flotilla-not-supported"
#: The key, in a field's ``json_schema_extra``, of values refused the same way.
NOT_SUPPORTED_VALUES = "flotilla-not-supported-values"


def not_supported_yet(why: str, default: Any = None) -> Any:
    """A field that validates but is refused at apply when set (anything but
    *default*): *why* says what is missing and what to do instead. The issue
    that gives the field its effect removes the marker."""
    return Field(default=default, json_schema_extra={NOT_SUPPORTED: why})


def one_of(model: BaseModel, fields: tuple[str, ...], where: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(to_camel(f) for f in fields)
        got = ", ".join(to_camel(f) for f in given) or "none"
        raise ValueError(f"{where} needs exactly one of {names} (got {got})")


class Constraint(Schema):
    key: Annotated[str, Field(min_length=1)]
    operator: Literal["=", "!=", "in", "not-in", "exists", "not-exists"] = "="
    value: str | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _operands(self) -> Constraint:
        if self.operator in ("=", "!=") and (self.value is None or self.values is not None):
            raise ValueError(f"operator {self.operator!r} takes one 'value' (and no 'values')")
        if self.operator in ("in", "not-in") and (not self.values or self.value is not None):
            raise ValueError(f"operator {self.operator!r} takes a non-empty 'values' list")
        if self.operator in ("exists", "not-exists") and (
            self.value is not None or self.values is not None
        ):
            raise ValueError(f"operator {self.operator!r} takes neither 'value' nor 'values'")
        return self


#: A node label key, as in ``spec.placement.spreadBy``.
LabelKey = Annotated[str, AfterValidator(check_label_key)]


class PlacementSpec(Schema):
    """Where a Service's instances may run, and which nodes they prefer.

    Services named here are in the same namespace. ``affinity`` and
    ``antiAffinity`` are required (a node that breaks one is not a candidate);
    the ``preferred`` forms only score.
    """

    constraints: list[Constraint] = []
    #: spread balances load across nodes and keeps replicas apart; binpack
    #: fills the fullest node first, replicas included.
    strategy: Literal["binpack", "spread"] = "spread"
    #: Only nodes running an instance of each of these services; naming
    #: the Service itself is ignored.
    affinity: list[Name] = []
    #: Only nodes running no instance of these services; naming the Service
    #: itself keeps its replicas on distinct nodes.
    anti_affinity: list[Name] = []
    #: Prefer nodes running instances of these services.
    preferred_affinity: list[Name] = []
    #: Prefer nodes running no instance of these services.
    preferred_anti_affinity: list[Name] = []
    #: Balance the replicas across the values of these node labels (rack,
    #: zone); nodes without a label are used only when no labelled node fits.
    spread_by: list[LabelKey] = []

    @model_validator(mode="after")
    def _consistent(self) -> PlacementSpec:
        for i, name in enumerate(self.anti_affinity):
            if name in self.affinity:
                raise FieldError(
                    f"antiAffinity[{i}]",
                    f"{name!r} is also in affinity: no node can both run it and not run it; "
                    "keep it in one of them (or make one preferredAffinity / "
                    "preferredAntiAffinity)")
        for i, key in enumerate(self.spread_by):
            if key in self.spread_by[:i]:
                raise FieldError(f"spreadBy[{i}]", f"{key!r} is listed twice; list it once")
        return self


#: Envoy refuses a regex whose RE2 program is larger (its runtime key
#: ``re2.max_program_size.error_level``, which sidecar bootstraps leave at its
#: default): the whole listener or route table carrying it would be NACKed.
MAX_REGEX_PROGRAM_SIZE = 100


@functools.lru_cache(maxsize=1024)
def re2_regex(pattern: str) -> Any:
    """*pattern* compiled by RE2, the engine Envoy runs every ``safe_regex``
    with; raises ``re2.error``. Whatever decides a match in Python (`flotilla
    intentions check`) matches with this, so it decides as the proxies do."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _check_regex(value: str) -> str:
    try:
        size = re2_regex(value).programsize
    except re2.error as error:
        reason = error.args[0].decode() if isinstance(error.args[0], bytes) else error.args[0]
        raise ValueError(
            f"{value!r} is not a regex Envoy runs ({reason}): write RE2 syntax, which has no "
            "backreferences, lookahead or lookbehind, possessive quantifiers or atomic groups"
        ) from None
    if size > MAX_REGEX_PROGRAM_SIZE:
        raise ValueError(f"{value!r} is too complex for Envoy (RE2 program size {size}, at most "
                         f"{MAX_REGEX_PROGRAM_SIZE}): simplify it, or match with exact or prefix")
    return value


#: An HTTP field name (RFC 9110 token), or a pseudo-header (``:authority``).
_HEADER_NAME = re.compile(r":?[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name: use letters, digits and "
                         "!#$%&'*+-.^_`|~ (a pseudo-header such as ':authority' starts with ':')")
    return value


class HeaderMatch(Schema):
    """One request header: exactly one of exact, prefix, regex (RE2, matched
    against the whole value) or present. Names are case-insensitive."""

    name: Annotated[str, AfterValidator(_check_header_name)]
    exact: str | None = None
    prefix: Annotated[str, Field(min_length=1)] | None = None
    regex: Annotated[str, Field(min_length=1), AfterValidator(_check_regex)] | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _how(self) -> HeaderMatch:
        one_of(self, ("exact", "prefix", "regex", "present"), f"header match {self.name!r}")
        return self
