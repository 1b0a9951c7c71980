"""The store's replicated log on Consul KV, for several control-plane replicas.

Every committed write transaction of any replica is one log entry (its events
and private writes, as the local SQLite store recorded them), appended with
check-and-set on the head key in the same Consul transaction:

    <prefix>/head                      the resourceVersion of the newest entry
    <prefix>/log/<bucket>/<end rv>     an entry: {"start", "end", "events", "private"}

An append whose ``start`` is not the head fails (``LogMoved``): another
replica wrote first; the writer catches up and redoes its transaction. Each
replica keeps a full SQLite copy it reads from and follows the head with
blocking queries. Values are JSON; Secret specs and private values are
already sealed by the store before they get here.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import consul
import requests
from consul.callback import CB
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError

from controlplane.errors import PermissionDenied, TemporaryError, UserError

T = TypeVar("T")

#: Entries per KV folder (a catch-up reads whole folders).
BUCKET = 1000
SCHEME = "consul"
DEFAULT_PORT = 8500
#: Seconds one request may take before Consul counts as unreachable (a
#: blocking query gets its wait on top, as py-consul reckons it).
REQUEST_TIMEOUT = 5.0


class LogMoved(Exception):
    """Another replica appended first: catch up and retry."""


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


def parse_store_url(url: str) -> tuple[ConsulAddress, str]:
    """(address, key prefix) of ``consul://HOST:PORT[/PREFIX]``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != SCHEME or not parsed.hostname or not parsed.port:
        raise UserError(f"{url!r} is not a Consul store: use consul://HOST:PORT[/PREFIX] "
                        "(e.g. consul://127.0.0.1:8500/flotilla)")
    prefix = parsed.path.strip("/") or "flotilla"
    return ConsulAddress(parsed.hostname, parsed.port), prefix


class ConsulClient:
    """The one Consul client of the control plane (catalog, the store's KV
    log, the leader lock): py-consul over one keep-alive session, every
    failure mapped onto :mod:`controlplane.errors` with a message that names
    Consul's address and what was being done:

    - Consul cannot be reached, times out or answers 5xx: ``TemporaryError``
      (``cannot reach Consul at 127.0.0.1:8500: connection refused``);
    - the ACL token is missing or lacks a permission: ``PermissionDenied``,
      saying which flag gives the token (``token_hint``);
    - Consul rejects a request as malformed: ``UserError``.

    ``token`` is the ACL token sent as ``X-Consul-Token`` ("" for none).
    """

    def __init__(self, address: ConsulAddress, token: str = "", *,
                 timeout: float = REQUEST_TIMEOUT, token_hint: str = "") -> None:
        self.address = address
        self.api = consul.Consul(host=address.host, port=address.port,
                                 connections_timeout=timeout)
        # py-consul prefers $CONSUL_HTTP_TOKEN to the token it is given; the
        # flags (which default to that variable) decide.
        self.api.token = token or None
        self._timeout = timeout
        self._hint = token_hint

    def __str__(self) -> str:
        return f"Consul at {self.address}"

    def call(self, what: str, request: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``request(*args, **kwargs)`` (a py-consul method), its failures
        mapped; ``what`` says what it does ("read the log's head")."""
        try:
            return request(*args, **kwargs)
        except requests.Timeout:
            raise TemporaryError(f"{self} did not answer within {self._timeout:g}s "
                                 f"(trying to {what})") from None
        except requests.ConnectionError as error:
            raise TemporaryError(f"cannot reach {self}: {_reason(error)}") from None
        except (ACLPermissionDenied, ACLDisabled) as error:
            hint = f"; {self._hint}" if self._hint else ""
            raise PermissionDenied(
                f"{self} refused to {what}: {_body(error) or 'permission denied'}{hint}"
            ) from None
        except (BadRequest, ClientError) as error:
            raise UserError(f"{self} rejected the request to {what}: {_body(error)}") from None
        except consul.ConsulException as error:
            raise TemporaryError(f"{self} failed to {what}: {_body(error)}") from None

    def transact(self, what: str, ops: list[dict[str, Any]]) -> tuple[int, Any]:
        """One ``/v1/txn``: (200, its results) or (409, the errors of its rollback)."""
        reply: tuple[int, Any] = self.call(
            what, self.api.http.put, _txn_reply, "/v1/txn", data=json.dumps(ops),
            headers=self.api.prepare_headers())
        return reply


def _txn_reply(response: Any) -> tuple[int, Any]:
    """A /v1/txn answer: (200, results) or (409, the errors of a rollback);
    any other status raises as py-consul maps it."""
    if response.code in (200, 409):
        return int(response.code), json.loads(response.body or "null")
    CB.json(allow_404=False)(response)
    raise consul.ConsulException(f"{response.code} {response.body}")


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


class ConsulLog:
    def __init__(self, url: str, token: str = "", timeout: float = REQUEST_TIMEOUT) -> None:
        address, self.prefix = parse_store_url(url)
        self.client = ConsulClient(address, token, timeout=timeout,
                                   token_hint="give --store-token (or CONSUL_HTTP_TOKEN) a "
                                   f"token with key:write on {self.prefix}/")
        self._kv = self.client.api.kv
        self._head_key = f"{self.prefix}/head"
        #: The head as last seen: (resourceVersion, its ModifyIndex).
        self.head = (0, 0)

    @property
    def base(self) -> str:
        return str(self.client.address)

    def _seen(self, found: Any) -> tuple[int, int]:
        if not found:
            self.head = (0, 0)
        else:
            self.head = (int(found["Value"] or b"0"), int(found["ModifyIndex"]))
        return self.head

    def read_head(self) -> tuple[int, int]:
        _, found = self.client.call("read the log's head", self._kv.get, self._head_key)
        return self._seen(found)

    def wait_head(self, index: int, wait: float) -> tuple[int, int]:
        """The head once its ModifyIndex passes ``index`` (or ``wait`` seconds)."""
        consul_index, found = self.client.call(
            "wait for the log's head", self._kv.get, self._head_key, index=str(index),
            wait=f"{int(wait)}s")
        if not found:
            return 0, int(consul_index or 0)
        return self._seen(found)[0], int(consul_index or 0)

    def append(self, start: int, end: int, entry: dict[str, Any]) -> None:
        """Add ``entry`` (resourceVersions start+1..end) if the head is still
        ``start``; else LogMoved (the head is re-read)."""
        rv, index = self.head
        if rv != start:
            self.read_head()
            raise LogMoved()
        value = base64.b64encode(json.dumps(entry, separators=(",", ":")).encode()).decode()
        status, answer = self.client.transact("append to the log", [
            {"KV": {"Verb": "cas", "Key": self._head_key, "Index": index,
                    "Value": base64.b64encode(str(end).encode()).decode()}},
            {"KV": {"Verb": "set", "Key": self._entry_key(end), "Value": value}},
        ])
        if status == 409:
            self.read_head()
            raise LogMoved()
        results = (answer or {}).get("Results") or []
        head = next((r["KV"] for r in results if r["KV"]["Key"] == self._head_key), None)
        self.head = (end, int(head["ModifyIndex"]) if head else 0)

    def entries(self, after: int) -> list[dict[str, Any]]:
        """Every entry that ends after ``after``, oldest first."""
        head = self.read_head()[0]
        found: list[dict[str, Any]] = []
        for bucket in range(after // BUCKET, head // BUCKET + 1):
            _, listed = self.client.call("read the log", self._kv.get,
                                         f"{self.prefix}/log/{bucket:08d}/", recurse=True)
            for item in listed or ():
                entry = json.loads(item["Value"])
                if entry["end"] > after:
                    found.append(entry)
        found.sort(key=lambda e: int(e["end"]))
        return found

    def _entry_key(self, end: int) -> str:
        return f"{self.prefix}/log/{end // BUCKET:08d}/{end:012d}"
