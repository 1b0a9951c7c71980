"""External services: what others registered in Consul, followed for the mesh.

- :func:`catalog_endpoints` (pure) turns Consul's health entries of one
  service into endpoints (:class:`~controlplane.model.external.CatalogEndpoint`):
  every instance whose checks all pass and that is not Flotilla's own (meta
  ``flotilla-managed``), at its service address (its node's when that is
  empty) and port, TLS when its meta says ``flotilla-tls: "true"`` (server
  name in ``flotilla-sni``). An instance Envoy could not use as an endpoint
  (an address that is not an IP, no port, a bad mark) is left out, with the
  reason;
- :class:`ExternalWatcher` follows the store's Services and, for each Consul
  name their ``spec.external`` follows, runs a follower thread doing blocking
  queries on ``/v1/health/service/<name>?passing``. Whenever a name's
  endpoints change it calls ``publish(name, endpoints)``, and
  ``publish(name, None)`` once no Service follows the name any more. The
  server hands them to the xDS feeder.

When Consul cannot be reached a follower keeps the endpoints it last
published (the sidecars go on calling what was last known, as they do when
the control plane is away), logs once and retries with backoff. A Consul
that restarted answers with a smaller index: the follower starts over from
it (and after a failure, it asks without blocking first). Only reads: the
registry stays the only writer to Consul.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from controlplane.catalog.consul import REQUEST_TIMEOUT, ConsulCatalog, parse_url
from controlplane.catalog.registrations import MANAGED, PASSING
from controlplane.errors import FlotillaError, PermissionDenied
from controlplane.model import WatchEvent
from controlplane.model.external import (
    SNI_META,
    TLS_META,
    CatalogEndpoint,
    external_name,
)
from controlplane.model.types import is_server_name
from controlplane.store import Store
from controlplane.store.follower import StoreFollower

log = logging.getLogger(__name__)

#: Seconds a blocking query waits in Consul before it answers unchanged.
WAIT = 15.0
#: Seconds between two queries of one name at least (Consul asks clients to
#: rate-limit blocking queries whose index moves fast).
MIN_INTERVAL = 0.05

Endpoints = tuple[CatalogEndpoint, ...]
#: Consul service name, its endpoints now (None: no longer followed).
Publish = Callable[[str, Endpoints | None], None]


class HealthSource(Protocol):
    """What a follower needs of Consul (``ConsulCatalog``): one per thread.
    Failures raise ``TemporaryError`` or ``PermissionDenied``."""

    def passing(self, name: str, index: int = 0, wait: float = 0.0
                ) -> tuple[int, list[Mapping[str, Any]]]: ...


def catalog_endpoints(entries: Iterable[Mapping[str, Any]]) -> tuple[Endpoints, tuple[str, ...]]:
    """The endpoints among ``/v1/health/service/<name>`` entries, sorted, and
    why each unusable instance was left out."""
    found: set[CatalogEndpoint] = set()
    problems: list[str] = []
    for entry in entries:
        service: Mapping[str, Any] = entry.get("Service") or {}
        node: Mapping[str, Any] = entry.get("Node") or {}
        meta: Mapping[str, Any] = service.get("Meta") or {}
        if meta.get(MANAGED) == "true":
            continue  # Flotilla's own instance: the mesh knows it already
        if any(check.get("Status") != PASSING for check in entry.get("Checks") or ()):
            continue
        instance = str(service.get("ID") or service.get("Service") or "")
        node_name = str(node.get("Node") or "")
        where = f"instance {instance} on node {node_name}"
        address = str(service.get("Address") or node.get("Address") or "")
        port = service.get("Port")
        tls = str(meta.get(TLS_META, "false")).lower()
        sni = str(meta.get(SNI_META) or "")
        if not _is_ip(address):
            problems.append(f"{where} has address {address!r}: register it with an IP "
                            "address (sidecars do not resolve names of external instances)")
        elif not isinstance(port, int) or not 0 < port < 65536:
            problems.append(f"{where} has no port: register it with its port")
        elif tls not in ("true", "false"):
            problems.append(f"{where} has meta {TLS_META} {meta.get(TLS_META)!r}: "
                            'use "true" or "false"')
        elif sni and not is_server_name(sni):
            problems.append(f"{where} has meta {SNI_META} {sni!r}: use a DNS name")
        else:
            found.add(CatalogEndpoint(address, port, instance, node_name, tls == "true",
                                      sni if tls == "true" else ""))
    return tuple(sorted(found)), tuple(problems)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class ExternalWatcher:
    """Follows in Consul every name the store's external Services follow.
    ``connect()`` makes one Consul client per follower thread; its timeout
    must exceed ``wait``. ``publish`` is called from those threads."""

    def __init__(self, store: Store, connect: Callable[[], HealthSource],
                 publish: Publish, *, wait: float = WAIT, max_backoff: float = 4.0) -> None:
        self._store = store
        self._connect = connect
        self._publish = publish
        self._wait = wait
        self._max_backoff = max_backoff
        self._followers: dict[str, _Follower] = {}
        self._store_follower = StoreFollower(store, self, name="catalog-external")

    @classmethod
    def from_url(cls, store: Store, url: str, token: str, publish: Publish
                 ) -> ExternalWatcher:
        """Following in the Consul at ``url`` (``consul://HOST:PORT``)."""
        address = parse_url(url)
        return cls(store, lambda: ConsulCatalog(address, token, timeout=WAIT + REQUEST_TIMEOUT),
                   publish)

    def start(self) -> None:
        self._store_follower.start()

    def stop(self) -> None:
        """Stops following; followers in a blocking query end when it answers."""
        self._store_follower.stop()
        for follower in self._followers.values():
            follower.stop()

    @property
    def followed(self) -> set[str]:
        """The Consul names followed now."""
        return set(self._followers)

    # --- the store follower's consumer ------------------------------------------

    def resync(self, head: int) -> None:
        self._follow({name for s in self._store.list("Service")
                      if (name := external_name(s)) is not None})

    def changed(self, events: Sequence[WatchEvent], head: int) -> None:
        if any(event.resource.kind == "Service" for event in events):
            self.resync(head)

    def _follow(self, names: set[str]) -> None:
        for name in sorted(names - set(self._followers)):
            log.info("following external service %s in Consul", name)
            follower = _Follower(name, self._connect(), self._publish, self._wait,
                                 self._max_backoff)
            self._followers[name] = follower
            follower.start()
        for name in sorted(set(self._followers) - names):
            log.info("no Service follows %s any more: no longer following it", name)
            self._followers.pop(name).stop()
            self._publish(name, None)


class _Follower:
    """One Consul service name, followed by one thread with blocking queries."""

    def __init__(self, name: str, source: HealthSource, publish: Publish, wait: float,
                 max_backoff: float) -> None:
        self.name = name
        self._source = source
        self._publish = publish
        self._wait = wait
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"catalog-external:{name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        index = 0
        published: Endpoints | None = None
        problems: tuple[str, ...] = ()
        failing = ""
        backoff = 0.0
        while not self._stop.is_set():
            try:
                found, entries = self._source.passing(self.name, index, self._wait)
            except FlotillaError as error:
                backoff = min(max(backoff * 2, 0.5), self._max_backoff)
                if str(error) != failing:
                    level = logging.ERROR if isinstance(error, PermissionDenied) else logging.WARNING
                    log.log(level, "%s; external service %s keeps its last endpoints, retrying "
                            "every %gs at most", error, self.name, self._max_backoff)
                    failing = str(error)
                # Consul may come back restarted, its index behind ours: a
                # blocking query on ours would wait it out. Ask afresh.
                index = 0
                self._stop.wait(backoff)
                continue
            except Exception:  # a bug: keep following
                log.exception("following external service %s failed", self.name)
                self._stop.wait(1.0)
                continue
            if failing:
                log.info("Consul answers again; following external service %s", self.name)
                failing, backoff = "", 0.0
            # Consul's index only grows, unless Consul restarted: then its own
            # (smaller) index is the one to wait on. Never 0: that would not block.
            index = max(found, 1)
            endpoints, now_wrong = catalog_endpoints(entries)
            for problem in now_wrong:
                if problem not in problems:
                    log.warning("external service %s: %s; it is left out", self.name, problem)
            problems = now_wrong
            if endpoints != published and not self._stop.is_set():
                log.info("external service %s: %d passing instance(s) in Consul", self.name,
                         len(endpoints))
                self._publish(self.name, endpoints)
                published = endpoints
            self._stop.wait(MIN_INTERVAL)
