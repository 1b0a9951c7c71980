"""The agent's link to the control plane.

- ``join`` goes to the server's main port with a proof of the join token (the
  token itself never travels) and a CSR for a key made here; the answer, if
  it proves the token too, brings the node's certificate, the trust bundle
  and the agent port.
- Every other call goes over mutual TLS to the agent port with that
  certificate, verifying the server's by the bundle and its name.
- ``refresh`` (once a second) fetches the bundle over that link and renews
  the node's certificate at half-life or when the mesh's roots change; each
  renewal makes a new channel, and the old one closes a little later (a
  stream on it ends, and its caller joins again).
- Every channel pings the server (``KEEPALIVE``), so a control plane that
  vanished without closing the connection ends the calls on it within ~20 s.

Thread-safety: the current channel and its stubs are swapped under a lock;
callers take ``agent`` per call; ``trust`` is the bundle ``refresh`` fetched.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509

from controlplane.api.flotilla.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)
from controlplane.identity.keys import CONTROL_PLANE_NAME, new_key_and_csr
from controlplane.identity.proof import digest_of, prove, proves

log = logging.getLogger(__name__)

#: Seconds an old channel stays open after a renewal (calls on it finish).
RETIRE_AFTER = 10.0
#: HTTP/2 keepalive on every channel to the control plane: the assignments
#: stream can be silent for hours, so a control plane that vanished without
#: closing the connection is noticed within ~20 s (a ping every 10 s, 10 s to
#: answer, also with no call open and no data sent). The server accepts pings
#: at least 5 s apart (``controlplane.server.app.SERVER_OPTIONS``).
KEEPALIVE: tuple[tuple[str, object], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


class Refused(Exception):
    """The control plane refused this agent, or is not the one the token is
    from; the message says which."""


class NotJoined(grpc.RpcError):  # type: ignore[misc]
    """A call before the first join: to callers, the control plane is away."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "not joined yet"


@dataclass(frozen=True)
class _Link:
    channel: grpc.Channel
    agent: agent_pb2_grpc.AgentServiceStub
    identity: identity_pb2_grpc.IdentityServiceStub
    bundle_pem: str
    serial: str
    #: Unix seconds: when the node's certificate was issued, and expires.
    issued: float
    expires: float


class ControlPlaneLink:
    def __init__(self, server: str, join_token: str,
                 options: Sequence[tuple[str, object]] = ()) -> None:
        #: host:port of each control-plane replica (``server`` is comma-separated).
        self.servers = [s.strip() for s in server.split(",") if s.strip()]
        self.server = self.servers[0]
        self._digest = digest_of(join_token) if join_token else ""
        self._options = [*KEEPALIVE, *options]
        self._plain = grpc.insecure_channel(self.server, options=self._options)
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._agent_address = ""
        #: The mesh's trust bundle as last fetched (None while unreachable).
        self.trust: identity_pb2.TrustBundle | None = None

    def join(self, request: agent_pb2.JoinRequest, timeout: float = 10) -> agent_pb2.JoinResponse:
        """Join (or join again) as the node ``request`` describes."""
        if not self._digest:
            raise Refused("no join token: start the agent with --join-token")
        key, csr = new_key_and_csr()
        request.csr_pem, request.timestamp = csr, int(time.time())
        request.proof = prove(self._digest, request)
        reply = self._join_any(request, timeout)
        if not proves(self._digest, reply):
            raise Refused(f"the server at {self.server} does not prove the join token: it is "
                          "not the control plane the token is from")
        host = self.server.rpartition(":")[0]
        self._agent_address = f"{host}:{reply.agent_port}"
        self._connect(key, reply.node_certificate_pem, reply.trust_bundle_pem)
        return reply

    def _join_any(self, request: agent_pb2.JoinRequest, timeout: float
                  ) -> agent_pb2.JoinResponse:
        """Join through the replica that answered last, else the next that
        answers (a replica that is down or stopping is UNAVAILABLE)."""
        start = self.servers.index(self.server)
        for n in range(len(self.servers)):
            server = self.servers[(start + n) % len(self.servers)]
            if server != self.server:
                self._plain.close()
                self.server = server
                self._plain = grpc.insecure_channel(server, options=self._options)
            try:
                reply: agent_pb2.JoinResponse = agent_pb2_grpc.AgentServiceStub(
                    self._plain).Join(request, timeout=timeout)
                return reply
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or n == len(self.servers) - 1:
                    raise
                log.warning("control plane %s: UNAVAILABLE; trying %s", server,
                            self.servers[(start + n + 1) % len(self.servers)])
        raise AssertionError("unreachable")

    @property
    def agent(self) -> agent_pb2_grpc.AgentServiceStub:
        return self._current().agent

    @property
    def serial(self) -> str:
        """The serial of the node's certificate in use ("" before joining)."""
        link = self._link
        return link.serial if link is not None else ""

    def _current(self) -> _Link:
        link = self._link
        if link is None:
            raise NotJoined()
        return link

    def _connect(self, key_pem: str, cert_pem: str, bundle_pem: str) -> None:
        certificate = x509.load_pem_x509_certificate(cert_pem.encode())
        channel = grpc.secure_channel(
            self._agent_address,
            grpc.ssl_channel_credentials(bundle_pem.encode(), key_pem.encode(),
                                         cert_pem.encode()),
            options=[*self._options, ("grpc.ssl_target_name_override", CONTROL_PLANE_NAME)])
        link = _Link(channel, agent_pb2_grpc.AgentServiceStub(channel),
                     identity_pb2_grpc.IdentityServiceStub(channel), bundle_pem,
                     format(certificate.serial_number, "x"),
                     time.time(), certificate.not_valid_after_utc.timestamp())
        with self._lock:
            old, self._link = self._link, link
        if old is not None:
            timer = threading.Timer(RETIRE_AFTER, old.channel.close)
            timer.daemon = True
            timer.start()

    def refresh(self) -> None:
        """Fetch the trust bundle; renew the node's certificate when it is
        past half its life or the roots changed. Errors mean the control
        plane is away: the link keeps what it has."""
        link = self._link
        if link is None:
            return
        try:
            trust: identity_pb2.TrustBundle = link.identity.GetTrustBundle(
                identity_pb2.GetTrustBundleRequest(), timeout=5)
        except grpc.RpcError:
            self.trust = None
            return
        self.trust = trust
        half = link.issued + (link.expires - link.issued) / 2
        if trust.bundle_pem == link.bundle_pem and time.time() < half:
            return
        key, csr = new_key_and_csr()
        try:
            renewed: agent_pb2.NodeCertificate = link.agent.RenewNodeCertificate(
                agent_pb2.RenewNodeCertificateRequest(csr_pem=csr), timeout=10)
        except grpc.RpcError as error:
            log.warning("renewing the node certificate: %s (%s); retrying", error.code().name,
                        error.details())
            return
        self._connect(key, renewed.certificate_pem, renewed.trust_bundle_pem)
        log.info("node certificate renewed: serial %s, until %s", renewed.serial,
                 datetime.datetime.fromtimestamp(renewed.not_after.seconds,
                                                 tz=datetime.timezone.utc).isoformat())

    def close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.channel.close()
        self._plain.close()
