"""Assembles and runs ``flotilla server``: the store, the servicers, grpc
health and reflection; stops gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from types import FrameType
from typing import IO

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.flotilla.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
    proxies_pb2,
    proxies_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
)
from controlplane.errors import UserError
from controlplane.model.external import external_name
from controlplane.model.limits import DEFAULT_MAX_REPLICAS, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from controlplane.catalog.consul import ConsulCatalog
from controlplane.catalog.external import ExternalWatcher
from controlplane.catalog.registrations import catalog_node
from controlplane.catalog.registry import Registry
from controlplane.controllers.nodes import NodeRegistry
from controlplane.controllers.reconciler import Reconciler
from controlplane.controllers.registered import RegisteredInstances
from controlplane.identity.issuer import Issuer
from controlplane.identity.tokens import JoinTokens
from controlplane.server.agents import AgentServicer
from controlplane.server.wellformed import WellFormed
from controlplane.server.cluster import InstanceServicer, NodeServicer
from controlplane.server.identity import IdentityServicer
from controlplane.server.resources import ResourceServicer
from controlplane.server.xds import AggregatedDiscoveryServicer, ProxyServicer
from controlplane.server.leader import ConsulLeader, Solo
from controlplane.store import Store
from controlplane.store.consul import ConsulLog
from controlplane.store.sealing import Sealer, load_or_create_key
from controlplane.xds.cache import XdsCache
from controlplane.xds.feed import ViewFeeder

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7300"
#: HTTP/2 keepalive, agreed with every client that pings: Envoy's ADS cluster
#: (``sidecar.envoy.ADS_KEEPALIVE``) and the agent's link
#: (``sidecar.link.KEEPALIVE``) ping every 10 s, on streams that may carry no
#: data for hours. gRPC's defaults (pings at least 5 minutes apart, none
#: without calls, 2 strikes) answer them with GOAWAY ``too_many_pings`` after
#: ~20 s and every Envoy reconnects; so pings down to 5 s apart are accepted,
#: with or without calls. The server pings too (every 20 s, 10 s to answer)
#: and so drops the stream of a proxy whose host vanished within ~30 s.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
)
#: The grpc health service that is SERVING on the replica that leads only.
LEADER_SERVICE = "flotilla.v1.Leader"

#: Fully qualified names of Flotilla's gRPC services.
SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (resources_pb2, "ResourceService"),
        (nodes_pb2, "NodeService"),
        (instances_pb2, "InstanceService"),
        (proxies_pb2, "ProxyService"),
        (agent_pb2, "AgentService"),
        (identity_pb2, "IdentityService"),
    )
)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    listen: str = DEFAULT_LISTEN
    #: Where agents talk mutual TLS with their node certificates; "" for the
    #: listen host on the next port (any free port when listen's is 0).
    agent_listen: str = ""
    #: fsync every commit (survives power loss, not just process death).
    durable: bool = False
    #: Every xDS stream holds a worker for its life: room for a few hundred.
    max_workers: int = 1024
    #: Seconds in-flight RPCs get to finish on shutdown.
    grace: float = 5.0
    #: Seconds without a report before a node is marked down and its
    #: instances are rescheduled.
    node_grace: float = 10.0
    #: The SPIFFE trust domain of the mesh's identities.
    trust_domain: str = "flotilla.local"
    #: Seconds a leaf certificate is valid (rotated at half-life).
    cert_ttl: float = 24 * 3600.0
    #: Mutual TLS on every hop between sidecars (certificates from the mesh CA).
    mtls: bool = True
    #: What a call no intention decides gets (enforced with mTLS).
    default_intention: str = "allow"
    #: The service catalog serving instances are published to
    #: (``consul://HOST:PORT``); "" for the embedded catalog only.
    catalog: str = ""
    #: The ACL token for ``catalog`` ("" for none).
    catalog_token: str = ""
    #: Where the store is replicated for several replicas
    #: (``consul://HOST:PORT/PREFIX``, Consul KV); "" for this replica alone.
    store: str = ""
    #: The ACL token for ``store`` ("" for none).
    store_token: str = ""
    #: The most replicas one Service or Gateway may ask for.
    max_replicas: int = DEFAULT_MAX_REPLICAS


class ControlPlane:
    """One control-plane replica. ``start()`` binds; ``stop()`` drains and closes."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_file = _lock_data_dir(config.data_dir)
        key = load_or_create_key(config.data_dir / "secrets.key")
        replicated = ConsulLog(config.store, config.store_token) if config.store else None
        self.store = Store(
            config.data_dir / "flotilla.db", sealer=Sealer(key), durable=config.durable,
            log=replicated,
        )
        self.leader: Solo | ConsulLeader = (
            ConsulLeader(replicated.client, replicated.prefix, config.listen,
                         on_change=self._leadership) if replicated is not None else Solo())
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers),
                                   options=SERVER_OPTIONS, interceptors=[WellFormed()])
        self._health = health.HealthServicer()
        self._resources = ResourceServicer(self.store, catalog=bool(config.catalog),
                                           max_replicas=config.max_replicas)
        resources_pb2_grpc.add_ResourceServiceServicer_to_server(self._resources, self._server)
        self.nodes = NodeRegistry(self.store, grace=config.node_grace,
                                  shared=replicated is not None)
        self.xds = XdsCache()
        self.reconciler = Reconciler(self.store, proxies_synced=self.xds.all_synced,
                                     is_leader=self.leader.is_leader)
        # The catalog has one writer: the leader's registry.
        catalog = (ConsulCatalog.from_url(config.catalog, config.catalog_token,
                                          node=catalog_node(config.trust_domain),
                                          node_address=_catalog_address(config.listen))
                   if config.catalog else None)
        self.registry = (Registry(self.store, catalog, gate=self.leader.is_leader)
                         if catalog is not None else None)
        self._leadership_lock = threading.Lock()
        self.issuer = Issuer(self.store, config.trust_domain,
                             datetime.timedelta(seconds=config.cert_ttl), mtls=config.mtls)
        self._identity = IdentityServicer(self.issuer, self.leader.is_leader)
        identity_pb2_grpc.add_IdentityServiceServicer_to_server(self._identity, self._server)
        self.tokens = JoinTokens(self.store, config.data_dir)
        self._agents = AgentServicer(self.store, self.nodes, self.issuer, self.tokens)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self._agents, self._server)
        nodes_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(self.store, self.nodes), self._server)
        self.registered = RegisteredInstances(self.store, is_leader=self.leader.is_leader,
                                              shared=replicated is not None)
        instances_pb2_grpc.add_InstanceServiceServicer_to_server(
            InstanceServicer(self.store, self.registered), self._server)
        self._feeder = ViewFeeder(self.store, self.xds,
                                  config.trust_domain if config.mtls else "",
                                  config.default_intention)
        # Every replica serves xDS, so every replica follows external services.
        self.external = (ExternalWatcher.from_url(self.store, config.catalog,
                                                  config.catalog_token,
                                                  self._feeder.catalog_changed)
                         if config.catalog else None)
        self._ads = AggregatedDiscoveryServicer(self.xds)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self._ads, self._server)
        settings = proxies_pb2.MeshSettings(trust_domain=config.trust_domain, mtls=config.mtls,
                                            default_intention=config.default_intention)
        proxies_pb2_grpc.add_ProxyServiceServicer_to_server(ProxyServicer(self.xds, settings),
                                                            self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self.agent_port = 0
        self._stop_requested = threading.Event()
        self._stopped = False

    def start(self) -> str:
        """Bind and serve; returns the address actually listened on."""
        host, _, port = self.config.listen.rpartition(":")
        self.port = self._server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise UserError(f"cannot listen on {self.config.listen}: the address is in use "
                            "or not local; pick another with --listen")
        agent_listen = self.config.agent_listen or \
            f"{host}:{int(port) + 1 if port.isdigit() and int(port) else 0}"
        self.agent_port = self._server.add_secure_port(agent_listen, self._agent_credentials())
        if self.agent_port == 0:
            raise UserError(f"cannot listen on {agent_listen} for agents: the address is in "
                            "use or not local; pick another with --agent-listen")
        self._agents.agent_port = self.agent_port
        self._feeder.start()
        if self.external is not None:
            self.external.start()
        else:
            _warn_external_without_catalog(self.store)
        self._server.start()
        self.nodes.start(self.leader.is_leader)
        self.reconciler.start()
        self.registered.start()
        if self.registry is not None:
            self.registry.start()
        self._identity.start()
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._health.set(LEADER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if isinstance(self.leader, ConsulLeader):
            self.leader.identity = f"{host}:{self.port}"
        self.leader.start()
        if isinstance(self.leader, Solo):
            self._leadership(True)
        return f"{host}:{self.port}"

    def _leadership(self, leader: bool) -> None:
        """This replica became (or stopped being) the leader: the health
        service ``flotilla.v1.Leader`` says which replica leads (every
        leader-only loop is gated on ``is_leader`` itself)."""
        with self._leadership_lock:
            self._health.set(LEADER_SERVICE, health_pb2.HealthCheckResponse.SERVING if leader
                             else health_pb2.HealthCheckResponse.NOT_SERVING)

    def _agent_credentials(self) -> grpc.ServerCredentials:
        """The agent port's TLS: the control plane's own leaf, and client
        certificates required and verified against the trust bundle; both
        follow renewals and root rotations (looked at on each handshake)."""
        served: list[tuple[str, str]] = []

        def configuration() -> grpc.ServerCertificateConfiguration:
            key, leaf = self.issuer.server_certificate()
            bundle = self.issuer.bundle()
            served[:] = [(leaf.serial, bundle)]
            return grpc.ssl_server_certificate_configuration(
                [(key.encode(), leaf.cert_pem.encode())], bundle.encode())

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            _, leaf = self.issuer.server_certificate()
            if served == [(leaf.serial, self.issuer.bundle())]:
                return None
            return configuration()

        return grpc.dynamic_ssl_server_credentials(configuration(), fetch,
                                                   require_client_authentication=True)

    def request_stop(self) -> None:
        """Ask ``wait()`` to return; safe from a signal handler."""
        self._stop_requested.set()

    def wait(self) -> None:
        self._stop_requested.wait()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        self._health.enter_graceful_shutdown()
        done = self._server.stop(self.config.grace)
        self._resources.shutdown()
        self._agents.shutdown()
        self._ads.shutdown()
        self._identity.stop()
        self.nodes.stop()
        self.reconciler.stop()
        self.registered.stop()
        if self.registry is not None:
            self.registry.stop()
        self.leader.stop()
        self._leadership(False)
        if self.external is not None:
            self.external.stop()
        self._feeder.stop()
        done.wait()
        self.store.close()
        self._lock_file.close()


def _catalog_address(listen: str) -> str:
    """The address of Flotilla's nodes in the catalog: the API's listen host
    (loopback when it listens on every address)."""
    host = listen.rpartition(":")[0].strip("[]")
    return host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"


def _warn_external_without_catalog(store: Store) -> None:
    """External Services stored before the server lost its --catalog have no
    endpoints now: say so once."""
    stranded = [str(s.key) for s in store.list("Service") if external_name(s) is not None]
    if stranded:
        log.warning("%s follow Consul, and this server has no --catalog: they have no "
                    "endpoints until it runs with --catalog consul://HOST:PORT",
                    ", ".join(stranded))


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Exclusive lock on the data dir: one server per store."""
    handle = open(data_dir / "LOCK", "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(
            f"data dir {data_dir} is in use by another Flotilla server (pid {owner}); "
            "stop it or choose another --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run(config: ServerConfig, announce: bool = True,
        alongside: Callable[[str], Callable[[], None]] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully. ``alongside`` is
    started with the listening address once the server is up and returns the
    function that stops it (``flotilla dev`` runs its agent this way)."""
    plane = ControlPlane(config)
    address = plane.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        plane.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if announce:
        print(f"flotilla server listening on {address} (agents on port {plane.agent_port}, "
              f"data dir {config.data_dir}); agents join with the token in "
              f"{plane.tokens.path}", flush=True)
    stop_alongside = alongside(address) if alongside is not None else None
    plane.wait()
    if stop_alongside is not None:
        stop_alongside()
    plane.stop()
