"""The Consul catalog adapter: the catalog and transaction APIs through the
control plane's one Consul client (:class:`controlplane.store.consul.ConsulClient`,
which maps every failure onto :mod:`controlplane.errors`; the registry
retries a ``TemporaryError`` with backoff). A transaction that Consul rolls
back because of some of its entries names them (``write`` returns why each
was refused and writes the others).

Flotilla's entries live on catalog nodes of its own (external nodes, as
consul-esm registers them), spread over ``CATALOG_SHARDS`` of them because
Consul's cost of writing a check grows with the checks already on its node.
They are written in transactions of up to ``TXN_MAX_OPS`` operations
(``/v1/txn``): one round trip registers 56 entries with their checks, where
the agent API takes one per entry and slows down as the agent holds more.

``parse_url("consul://HOST:PORT")`` checks what ``--catalog`` takes.

Thread-safety: a ``ConsulCatalog`` is used by one thread (the registry).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from controlplane.catalog.registrations import (
    CATALOG_SHARDS,
    NODE_META,
    PASSING,
    CatalogEntry,
    catalog_nodes,
    shard_node,
)
from controlplane.errors import UserError
from controlplane.store.consul import (
    REQUEST_TIMEOUT,
    ConsulAddress,
    ConsulClient,
    parse_url,
)

T = TypeVar("T")

#: The most operations Consul takes in one transaction.
TXN_MAX_OPS = 128
#: The catalog node of Flotilla's entries when none is named.
DEFAULT_NODE = "flotilla"

__all__ = ["REQUEST_TIMEOUT", "TXN_MAX_OPS", "ConsulAddress", "ConsulCatalog", "parse_url"]


class ConsulCatalog:
    """Flotilla's nodes in one Consul datacenter's catalog: the services and
    checks on them, and writing them. ``token`` is the ACL token sent as
    ``X-Consul-Token`` ("" for none); ``node`` is what the names of the
    catalog nodes start with (``<node>-0`` ... one per shard) and
    ``node_address`` their address (each entry carries its own)."""

    def __init__(self, address: ConsulAddress, token: str = "", *, node: str = DEFAULT_NODE,
                 node_address: str = "127.0.0.1", timeout: float = REQUEST_TIMEOUT,
                 shards: int = CATALOG_SHARDS) -> None:
        self.address = address
        self.node = node
        self.nodes = catalog_nodes(node, shards)
        self._shards = shards
        self._consul = ConsulClient(
            address, token, timeout=timeout,
            token_hint="give --catalog-token (or CONSUL_HTTP_TOKEN) a token with "
                       "service:write and node:write")
        self._call = self._consul.call
        self._client = self._consul.api
        self._node_ops: dict[str, dict[str, Any]] = {
            name: {"Node": {"Verb": "set", "Node": {
                "Node": name, "Address": node_address, "Meta": dict(NODE_META)}}}
            for name in self.nodes}

    @classmethod
    def from_url(cls, url: str, token: str = "", *, node: str = DEFAULT_NODE,
                 node_address: str = "127.0.0.1") -> ConsulCatalog:
        return cls(parse_url(url), token, node=node, node_address=node_address)

    def __str__(self) -> str:
        return f"Consul at {self.address}"

    def services(self) -> Mapping[str, Mapping[str, Any]]:
        """Every service on Flotilla's nodes, by service ID, with its node's
        name added as ``Node`` (none on a node not registered)."""
        services: dict[str, Mapping[str, Any]] = {}
        for node in self.nodes:
            _, found = self._call(f"list the services of {node}", self._client.catalog.node,
                                  node)
            for service_id, service in ((found or {}).get("Services") or {}).items():
                services[service_id] = {**service, "Node": node}
        return services

    def checks(self) -> Mapping[str, str]:
        """Check ID -> status of every check on Flotilla's nodes."""
        checks: dict[str, str] = {}
        for node in self.nodes:
            _, found = self._call(f"list the checks of {node}", self._client.health.node, node)
            checks.update({str(check["CheckID"]): str(check.get("Status", ""))
                           for check in found or ()})
        return checks

    def write(self, register: Sequence[CatalogEntry], deregister: Sequence[CatalogEntry] = ()
              ) -> dict[str, str]:
        """Deregister and register (or replace) entries, each registered with
        its check passing, in as few transactions as fit. Returns entry ID ->
        why Consul refused it, for entries it refused (the others are
        written); raises when Consul cannot be reached or refuses the token."""
        groups = [(entry, [self._delete_op(entry)]) for entry in deregister]
        groups += [(entry, self._set_ops(entry)) for entry in register]
        refused: dict[str, str] = {}
        # Room for the set operation of every node an entry is on.
        for chunk in _chunks(groups, TXN_MAX_OPS - len(self.nodes)):
            while chunk:
                ops = [(entry, op) for entry, entry_ops in chunk for op in entry_ops]
                failed = self._transact([op for _, op in ops])
                if not failed:
                    break
                for index, why in failed.items():
                    refused[ops[index][0].id] = why
                chunk = [(entry, entry_ops) for entry, entry_ops in chunk
                         if entry.id not in refused]
        return refused

    def _delete_op(self, entry: CatalogEntry) -> dict[str, Any]:
        node = entry.node or shard_node(self.node, entry.id, self._shards)
        return {"Service": {"Verb": "delete", "Node": node,
                            "Service": {"ID": entry.id, "Service": entry.name}}}

    def _set_ops(self, entry: CatalogEntry) -> list[dict[str, Any]]:
        node = entry.node or shard_node(self.node, entry.id, self._shards)
        return [
            {"Service": {"Verb": "set", "Node": node, "Service": {
                "ID": entry.id, "Service": entry.name, "Address": entry.address,
                "Port": entry.port, "Tags": list(entry.tags), "Meta": dict(entry.meta)}}},
            {"Check": {"Verb": "set", "Check": {
                "Node": node, "CheckID": entry.check_id, "Name": "Flotilla instance health",
                "Notes": "Set by the Flotilla control plane while the instance serves.",
                "Status": PASSING, "ServiceID": entry.id, "ServiceName": entry.name}}},
        ]

    def _transact(self, ops: list[dict[str, Any]]) -> dict[int, str]:
        """One transaction (the nodes ``ops`` are on first, then ``ops``); {}
        when it committed, else index in ``ops`` -> why Consul rolled it back."""
        nodes = sorted({op[kind]["Node"] if kind == "Service" else op[kind]["Check"]["Node"]
                        for op in ops for kind in op})
        what = f"write {len(ops)} catalog operation(s)"
        code, body = self._consul.transact(what, [*(self._node_ops[n] for n in nodes), *ops])
        if code == 200:
            return {}
        errors = (body or {}).get("Errors") or []
        failed = {int(e.get("OpIndex", 0)) - len(nodes): str(e.get("What", "")) for e in errors}
        if not failed or min(failed) < 0:
            why = "; ".join(str(e.get("What", "")) for e in errors) or json.dumps(body)
            raise UserError(f"{self} rejected Flotilla's catalog nodes {', '.join(nodes)}: "
                            f"{why}")
        return failed

    def passing(self, name: str, index: int = 0, wait: float = 0.0
                ) -> tuple[int, list[Mapping[str, Any]]]:
        """Consul's index and the entries of service ``name`` whose checks all
        pass (``/v1/health/service/<name>?passing``, any node). With an
        ``index``, a blocking query: it answers once Consul's index moves past
        it, or after ``wait`` seconds (give the catalog a longer timeout)."""
        found, entries = self._call(
            f"read the health of service {name}", self._client.health.service, name,
            passing=True, index=str(index) if index else None,
            wait=f"{wait:g}s" if index and wait else None)
        return int(found or 0), list(entries or ())

    def leader(self) -> str:
        """The address of the cluster's leader ("" while there is none)."""
        return str(self._call("ask for the leader", self._client.status.leader) or "")


def _chunks(groups: list[tuple[T, list[Any]]], size: int
            ) -> Iterator[list[tuple[T, list[Any]]]]:
    """``groups`` (an entry and its operations) in consecutive lists of at
    most ``size`` operations; an entry's operations are never split."""
    chunk: list[tuple[T, list[Any]]] = []
    count = 0
    for group in groups:
        if chunk and count + len(group[1]) > size:
            yield chunk
            chunk, count = [], 0
        chunk.append(group)
        count += len(group[1])
    if chunk:
        yield chunk
