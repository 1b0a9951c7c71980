"""The Intention spec: who may call whom, and on which requests."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, model_validator

from controlplane.model.specs.common import HeaderMatch, Schema
from controlplane.model.types import AbsPath, check_dns_label


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]


def _check_service_pattern(value: str) -> str:
    """``svc``, ``ns/svc``, ``*``, ``ns/*`` or ``*/*``."""
    namespace, _, name = value.rpartition("/")
    for part in (namespace, name) if namespace else (name,):
        if part != "*":
            try:
                check_dns_label(part)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a service: use 'name', 'namespace/name', "
                    "or '*' as a wildcard for either part"
                ) from None
    return value


ServicePattern = Annotated[str, AfterValidator(_check_service_pattern)]


class HttpPermission(Schema):
    path_exact: AbsPath | None = None
    path_prefix: AbsPath | None = None
    methods: list[HttpMethod] = []
    headers: list[HeaderMatch] = []

    @model_validator(mode="after")
    def _path(self) -> HttpPermission:
        if self.path_exact is not None and self.path_prefix is not None:
            raise ValueError("use pathExact or pathPrefix, not both")
        if self.path_exact is None and self.path_prefix is None and not (
            self.methods or self.headers
        ):
            raise ValueError("an http rule needs at least one of pathExact, pathPrefix, "
                             "methods or headers")
        return self


class IntentionSpec(Schema):
    source: ServicePattern
    destination: ServicePattern
    action: Literal["allow", "deny"]
    #: L7 rules for http and grpc destinations: the intention applies to a
    #: request when any rule matches it. Empty: every request (L4).
    http: list[HttpPermission] = []
    description: str = ""
