"""The Gateway spec: ingress listeners and their routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controlplane.model.specs.common import (
    NOT_SUPPORTED_VALUES,
    PlacementSpec,
    Schema,
    not_supported_yet,
)
from controlplane.model.types import AbsPath, FieldError, Name, Port, Replicas


class GatewayRoute(Schema):
    host: str | None = None
    path_prefix: AbsPath = "/"
    service: Name
    namespace: Name | None = None


class GatewayTLS(Schema):
    #: A Secret of type tls holding tls.crt and tls.key.
    secret: Name


class Listener(Schema):
    name: Name
    port: Port
    protocol: Literal["http", "https", "tcp"] = Field(default="http", json_schema_extra={
        NOT_SUPPORTED_VALUES: {"https": "https listeners are not supported yet: the gateway "
                               "would serve plain HTTP on this port; use protocol http (and "
                               "terminate TLS in front of the gateway)"}})
    tls: GatewayTLS | None = not_supported_yet(
        "TLS at the gateway is not supported yet; remove tls and use protocol http")
    routes: Annotated[list[GatewayRoute], Field(min_length=1)]

    @model_validator(mode="after")
    def _tls(self) -> Listener:
        if self.protocol == "https" and self.tls is None:
            raise ValueError("protocol https needs tls.secret naming a Secret of type tls")
        if self.protocol != "https" and self.tls is not None:
            raise ValueError(f"tls only applies to protocol https, not {self.protocol}")
        if self.protocol == "tcp" and (
            len(self.routes) != 1 or self.routes[0].host is not None
            or self.routes[0].path_prefix != "/"
        ):
            raise ValueError("a tcp listener forwards to exactly one route, without host or "
                             "pathPrefix")
        seen: set[tuple[str | None, str]] = set()
        for route in self.routes:
            if (route.host, route.path_prefix) in seen:
                raise ValueError(
                    f"two routes match host {route.host or '*'} and pathPrefix "
                    f"{route.path_prefix}; the second could never be reached"
                )
            seen.add((route.host, route.path_prefix))
        return self


class GatewaySpec(Schema):
    listeners: Annotated[list[Listener], Field(min_length=1)]
    replicas: Annotated[Replicas, Field(ge=1)] = 1
    placement: PlacementSpec = PlacementSpec()

    @model_validator(mode="after")
    def _unique(self) -> GatewaySpec:
        names: dict[str, int] = {}
        ports: dict[int, int] = {}
        for i, listener in enumerate(self.listeners):
            if listener.name in names:
                raise FieldError(
                    f"listeners[{i}].name",
                    f"{listener.name!r} is already used by listeners[{names[listener.name]}]; "
                    "give each listener its own name",
                )
            if listener.port in ports:
                raise FieldError(
                    f"listeners[{i}].port",
                    f"port {listener.port} is already used by listeners[{ports[listener.port]}]; "
                    "give each listener its own port",
                )
            names[listener.name] = i
            ports[listener.port] = i
        return self
