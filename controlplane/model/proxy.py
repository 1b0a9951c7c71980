"""What a proxy announces in its bootstrap's node metadata, and how it is
read back: the contract between the agent that writes an Envoy's (or a
proxyless client's) bootstrap and the xDS server that configures it. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SIDECAR = "sidecar"
GATEWAY = "gateway"
PROXYLESS = "proxyless"
PROXY_KINDS = (SIDECAR, GATEWAY, PROXYLESS)


@dataclass(frozen=True)
class Proxy:
    """A connected proxy, as its bootstrap's node metadata describes it.

    Sidecars listen for inbound traffic on ``inbound`` (address, port) and
    forward it to the app on 127.0.0.1:``app_port``; each upstream
    ``namespace/name`` maps to the (address, port or None) its outbound
    listener binds, where None means "the upstream service's own port".
    """

    id: str
    kind: str
    namespace: str
    #: The service (sidecar), gateway name (gateway) or client name (proxyless).
    name: str
    node: str = ""
    instance: str = ""
    inbound: tuple[str, int] | None = None
    app_port: int | None = None
    upstreams: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)


class ProxyError(ValueError):
    """A proxy's bootstrap metadata is unusable; the message says why."""


def proxy_of(node_id: str, metadata: Mapping[str, Any]) -> Proxy:
    """The proxy a node id and its ``flotilla`` metadata describe. A proxy
    without metadata is a proxyless client in the default namespace."""
    meta = metadata.get("flotilla") or {}
    if not isinstance(meta, Mapping):
        raise ProxyError("node metadata 'flotilla' must be an object")
    kind = str(meta.get("kind", PROXYLESS))
    if kind not in PROXY_KINDS:
        raise ProxyError(f"node metadata flotilla.kind {kind!r} is not one of "
                         f"{', '.join(PROXY_KINDS)}")
    inbound = meta.get("inbound")
    upstreams: dict[str, tuple[str, int | None]] = {}
    for key, where in (meta.get("upstreams") or {}).items():
        port = where.get("port")
        upstreams[str(key)] = (str(where.get("address", "127.0.0.1")),
                               int(port) if port else None)
    try:
        return Proxy(
            id=node_id, kind=kind, namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or node_id), node=str(meta.get("node", "")),
            instance=str(meta.get("instance", "")),
            inbound=(str(inbound["address"]), int(inbound["port"])) if inbound else None,
            app_port=int(meta["appPort"]) if meta.get("appPort") else None,
            upstreams=upstreams,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ProxyError(f"node metadata 'flotilla' is malformed: {error}") from None


def proxy_metadata(proxy: Proxy) -> dict[str, Any]:
    """The node metadata a proxy's bootstrap carries: what ``proxy_of`` reads."""
    meta: dict[str, Any] = {
        "kind": proxy.kind, "namespace": proxy.namespace, "name": proxy.name,
        "node": proxy.node, "instance": proxy.instance,
        "upstreams": {key: {"address": address, **({"port": port} if port else {})}
                      for key, (address, port) in proxy.upstreams.items()},
    }
    if proxy.inbound is not None:
        meta["inbound"] = {"address": proxy.inbound[0], "port": proxy.inbound[1]}
    if proxy.app_port:
        meta["appPort"] = proxy.app_port
    return {"flotilla": meta}


def upstream_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"
