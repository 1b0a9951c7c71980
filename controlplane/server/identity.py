"""IdentityService: the trust bundle agents serve their Envoys, and root
rotation; a thread moves a rotation on as proxies catch up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from controlplane.api.flotilla.v1 import agent_pb2, identity_pb2, identity_pb2_grpc
from controlplane.errors import UserError
from controlplane.controllers.reconciler import always_leader
from controlplane.identity.issuer import Issuer
from controlplane.server.agents import leaf_response
from controlplane.server.status import abort

log = logging.getLogger(__name__)


def bundle_of(issuer: Issuer) -> identity_pb2.TrustBundle:
    return identity_pb2.TrustBundle(
        bundle_pem=issuer.bundle(), active_root=issuer.ca.active.serial,
        roots=[r.serial for r in issuer.ca.roots], rotation=issuer.rotation.get("phase", ""),
        mtls=issuer.mtls)


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """Its thread follows the CA as stored (another replica may rotate it)
    and, on the leader, moves a rotation on."""

    def __init__(self, issuer: Issuer, is_leader: Callable[[], bool] = always_leader) -> None:
        self._issuer = issuer
        self._is_leader = is_leader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._advance, name="root-rotation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _advance(self) -> None:
        phase = self._issuer.rotation.get("phase", "")
        while not self._stop.wait(0.5):
            try:
                self._issuer.reload()
                if not self._is_leader():
                    continue
                now = self._issuer.advance()
            except Exception:  # keep watching; the next pass retries
                log.exception("advancing the root rotation")
                continue
            if now != phase:
                log.info("root rotation: %s", now or "done")
                phase = now

    def GetTrustBundle(self, request: identity_pb2.GetTrustBundleRequest,
                       context: grpc.ServicerContext) -> identity_pb2.TrustBundle:
        return bundle_of(self._issuer)

    def SignClientCertificate(self, request: identity_pb2.SignClientCertificateRequest,
                              context: grpc.ServicerContext) -> agent_pb2.SignCertificateResponse:
        try:
            leaf = self._issuer.sign_for_client(request.namespace or "default", request.name,
                                                request.csr_pem)
        except UserError as error:
            abort(context, error)
        return leaf_response(leaf, self._issuer.bundle())

    def RotateRoot(self, request: identity_pb2.RotateRootRequest,
                   context: grpc.ServicerContext) -> identity_pb2.TrustBundle:
        try:
            self._issuer.rotate()
        except UserError as error:
            abort(context, error)
        log.info("root rotation: trusting (new root %s)", self._issuer.rotation["new"])
        return bundle_of(self._issuer)
