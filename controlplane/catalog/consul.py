"""The Consul adapter: the agent HTTP API through py-consul (one
keep-alive session), with every failure mapped onto
:mod:`controlplane.errors` and a message that names Consul's address and
says what went wrong:

- Consul cannot be reached, times out or answers 5xx: ``TemporaryError``
  (``cannot reach Consul at 127.0.0.1:8500: connection refused``); the
  registry retries with backoff;
- the ACL token is missing or lacks a permission: ``PermissionDenied``;
- Consul rejects a request as malformed: ``UserError``.

``parse_url("consul://HOST:PORT")`` checks what ``--catalog`` takes.

Thread-safety: a ``ConsulCatalog`` is used by one thread (the registry).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import consul
import requests
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError

from controlplane.catalog.registrations import (
    CHECK_TTL,
    DEREGISTER_CRITICAL_AFTER,
    PASSING,
    Registration,
)
from controlplane.errors import PermissionDenied, TemporaryError, UserError

T = TypeVar("T")

SCHEME = "consul"
DEFAULT_PORT = 8500
#: Seconds one request may take before Consul counts as unreachable.
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class ConsulAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> ConsulAddress:
    """``consul://HOST[:PORT]`` (port 8500 when left out) as an address;
    a ``UserError`` that shows the expected form otherwise."""
    form = "use consul://HOST:PORT, e.g. consul://127.0.0.1:8500"
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme != SCHEME:
        raise UserError(f"{url!r} is not a Consul address: {form}")
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"{url!r} has a bad port: {form}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise UserError(f"{url!r} is not a Consul address: {form}")
    return ConsulAddress(parts.hostname, port or DEFAULT_PORT)


def _seconds(value: float) -> str:
    return f"{value:g}s"


class ConsulCatalog:
    """Flotilla's view of one Consul agent: its services and checks, and
    registering, deregistering and passing the TTL checks of entries.
    ``token`` is the ACL token sent as ``X-Consul-Token`` ("" for none)."""

    def __init__(self, address: ConsulAddress, token: str = "", *,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self.address = address
        self._client = consul.Consul(host=address.host, port=address.port,
                                     connections_timeout=timeout)
        # py-consul prefers $CONSUL_HTTP_TOKEN to the token it is given; the
        # server's --catalog-token (which defaults to that variable) decides.
        self._client.token = token or None
        self._timeout = timeout

    @classmethod
    def from_url(cls, url: str, token: str = "") -> ConsulCatalog:
        return cls(parse_url(url), token)

    def __str__(self) -> str:
        return f"Consul at {self.address}"

    def services(self) -> Mapping[str, Mapping[str, Any]]:
        """Every service on the agent, by service ID (``/v1/agent/services``)."""
        found = self._call("list services", self._client.agent.services)
        return found or {}

    def checks(self) -> Mapping[str, str]:
        """Check ID -> status of every check on the agent."""
        found = self._call("list checks", self._client.agent.checks) or {}
        return {str(check_id): str(check.get("Status", "")) for check_id, check in found.items()}

    def register(self, entry: Registration) -> None:
        """Register (or replace) ``entry`` with a TTL check that starts passing."""
        check = {
            "CheckID": entry.check_id, "Name": "Flotilla instance health",
            "Notes": "Passed by the Flotilla control plane while the instance serves.",
            "TTL": _seconds(CHECK_TTL), "Status": PASSING,
            "DeregisterCriticalServiceAfter": _seconds(DEREGISTER_CRITICAL_AFTER),
        }
        self._call(f"register {entry.id}", self._client.agent.service.register,
                   entry.name, service_id=entry.id, address=entry.address, port=entry.port,
                   tags=list(entry.tags), meta=dict(entry.meta), check=check,
                   replace_existing_checks=True)

    def deregister(self, entry_id: str) -> None:
        self._call(f"deregister {entry_id}", self._client.agent.service.deregister, entry_id)

    def pass_check(self, check_id: str) -> bool:
        """Mark a TTL check passing; False when the agent has no such check."""
        try:
            return bool(self._call(f"pass check {check_id}",
                                   self._client.agent.check.ttl_pass, check_id))
        except TemporaryError as error:
            if "unknown check" in str(error).lower() or "does not have" in str(error):
                return False
            raise

    def leader(self) -> str:
        """The address of the cluster's leader ("" while there is none)."""
        return str(self._call("ask for the leader", self._client.status.leader) or "")

    def _call(self, what: str, request: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return request(*args, **kwargs)
        except requests.Timeout:
            raise TemporaryError(f"{self} did not answer within {self._timeout:g}s "
                                 f"(trying to {what})") from None
        except requests.ConnectionError as error:
            raise TemporaryError(f"cannot reach {self}: {_reason(error)}") from None
        except (ACLPermissionDenied, ACLDisabled) as error:
            raise PermissionDenied(
                f"{self} refused to {what}: {_body(error) or 'permission denied'}; give "
                "--catalog-token (or CONSUL_HTTP_TOKEN) a token with service:write and "
                "node:read") from None
        except (BadRequest, ClientError) as error:
            raise UserError(f"{self} rejected the request to {what}: {_body(error)}") from None
        except consul.ConsulException as error:
            raise TemporaryError(f"{self} failed to {what}: {_body(error)}") from None


def _reason(error: requests.ConnectionError) -> str:
    """'connection refused' from requests' long message, when it says so."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip().lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return "no connection"


def _body(error: Exception) -> str:
    return " ".join(str(error).split())
