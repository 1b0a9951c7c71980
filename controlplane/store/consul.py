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
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from controlplane.errors import TemporaryError, UserError

#: Entries per KV folder (a catch-up reads whole folders).
BUCKET = 1000


class LogMoved(Exception):
    """Another replica appended first: catch up and retry."""


def parse_store_url(url: str) -> tuple[str, str]:
    """(http base URL, key prefix) of ``consul://HOST:PORT[/PREFIX]``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "consul" or not parsed.hostname or not parsed.port:
        raise UserError(f"{url!r} is not a Consul store: use consul://HOST:PORT[/PREFIX] "
                        "(e.g. consul://127.0.0.1:8500/flotilla)")
    prefix = parsed.path.strip("/") or "flotilla"
    return f"http://{parsed.hostname}:{parsed.port}", prefix


class ConsulHttp:
    """Consul's HTTP API, plainly: (status, parsed JSON, headers) per call;
    404 and 409 are answers, other failures TemporaryError (UserError for 403)."""

    def __init__(self, base: str, token: str = "", timeout: float = 10.0) -> None:
        self.base = base
        self._token = token
        self._timeout = timeout

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None
             ) -> tuple[int, Any, dict[str, str]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if self._token:
            request.add_header("X-Consul-Token", self._token)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self._timeout) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None, dict(answer.headers)
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            if error.code == 404:
                return 404, None, dict(error.headers)
            if error.code == 409:
                return 409, parsed, dict(error.headers)
            if error.code == 403:
                raise UserError(f"Consul at {self.base} refused the token: {parsed}") from None
            raise TemporaryError(f"Consul at {self.base} answered {error.code}: {parsed}") \
                from None
        except (urllib.error.URLError, OSError, socket.timeout) as error:
            reason = getattr(error, "reason", error)
            raise TemporaryError(f"cannot reach Consul at {self.base}: {reason}") from None



class ConsulLog:
    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        base, self.prefix = parse_store_url(url)
        self.http = ConsulHttp(base, token, timeout)
        self._call = self.http.call
        self._head_key = f"{self.prefix}/head"
        #: The head as last seen: (resourceVersion, its ModifyIndex).
        self.head = (0, 0)

    @property
    def base(self) -> str:
        return self.http.base

    def read_head(self) -> tuple[int, int]:
        status, found, _ = self._call("GET", f"/v1/kv/{self._head_key}")
        if status == 404 or not found:
            self.head = (0, 0)
        else:
            self.head = (int(base64.b64decode(found[0]["Value"] or b"MA==")),
                         int(found[0]["ModifyIndex"]))
        return self.head

    def wait_head(self, index: int, wait: float) -> tuple[int, int]:
        """The head once its ModifyIndex passes ``index`` (or ``wait`` seconds)."""
        status, found, headers = self._call(
            "GET", f"/v1/kv/{self._head_key}?index={index}&wait={int(wait)}s",
            timeout=wait + 10)
        consul_index = int(headers.get("X-Consul-Index", "0") or 0)
        if status == 404 or not found:
            return 0, consul_index
        self.head = (int(base64.b64decode(found[0]["Value"] or b"MA==")),
                     int(found[0]["ModifyIndex"]))
        return self.head[0], consul_index

    def append(self, start: int, end: int, entry: dict[str, Any]) -> None:
        """Add ``entry`` (resourceVersions start+1..end) if the head is still
        ``start``; else LogMoved (the head is re-read)."""
        rv, index = self.head
        if rv != start:
            self.read_head()
            raise LogMoved()
        value = base64.b64encode(json.dumps(entry, separators=(",", ":")).encode()).decode()
        status, answer, _ = self._call("PUT", "/v1/txn", [
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
            status, listed, _ = self._call(
                "GET", f"/v1/kv/{self.prefix}/log/{bucket:08d}/?recurse=true")
            if status == 404 or not listed:
                continue
            for item in listed:
                entry = json.loads(base64.b64decode(item["Value"]))
                if entry["end"] > after:
                    found.append(entry)
        found.sort(key=lambda e: int(e["end"]))
        return found

    def _entry_key(self, end: int) -> str:
        return f"{self.prefix}/log/{end // BUCKET:08d}/{end:012d}"
