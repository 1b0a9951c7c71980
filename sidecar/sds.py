"""SDS on the node: each local Envoy gets its instance's certificate and the
mesh's trust bundle over a unix socket, and new ones the moment they rotate.

Secrets, by the names the xDS builder asks for:

- ``default``: the instance's leaf and its key (the Envoy's node id is the
  instance id);
- ``ROOTCA``: every root the mesh trusts.

State of the world over ``StreamSecrets``, by the same protocol state machine
as the control plane's ADS (:class:`controlplane.xds.stream.SotwStream`): a
response whenever a secret's version (a hash of its bytes: the serial, the
bundle) changes; a NACKed secret is logged and not sent again until it
changes. The key never leaves the node: it goes from memory to a local
socket.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from controlplane.xds.snapshot import Item, Snapshot
from controlplane.xds.stream import SotwStream
from sidecar.identity import Certificates, Material

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CERTIFICATE = "default"
ROOTS = "ROOTCA"
_END = object()


def secrets(material: Material) -> Snapshot:
    """Both secrets of one instance, as a snapshot its SDS stream serves from."""
    found = {name: secret(name, material) for name in (CERTIFICATE, ROOTS)}
    return Snapshot({SECRET_TYPE: {name: Item(name, item) for name, item in found.items()
                                   if item is not None}})


def secret(name: str, material: Material) -> secret_pb2.Secret | None:
    if name == CERTIFICATE:
        return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=material.cert_pem),
            private_key=base_pb2.DataSource(inline_string=material.key_pem)))
    if name == ROOTS:
        return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=material.bundle_pem)))
    return None


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, certificates: Certificates, socket: Path) -> None:
        self._certificates = certificates
        self.socket = socket
        self._changed = threading.Condition()
        self._generation = 0
        self._stopping = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=512))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, self._server)

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        if not self._server.add_insecure_port(f"unix:{self.socket}"):
            raise OSError(f"cannot serve SDS on {self.socket}")
        self._server.start()

    def stop(self) -> None:
        self._stopping.set()
        self.changed()
        self._server.stop(1.0).wait()
        self.socket.unlink(missing_ok=True)

    def changed(self) -> None:
        """Certificates changed: every stream looks again."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def StreamSecrets(self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest],
                      context: grpc.ServicerContext) -> Iterator[discovery_pb2.DiscoveryResponse]:
        requests: queue.Queue[object] = queue.Queue()

        def read() -> None:
            try:
                for request in request_iterator:
                    requests.put(request)
            except grpc.RpcError:
                pass
            requests.put(_END)

        threading.Thread(target=read, daemon=True, name="sds-reader").start()
        stream = SotwStream(wildcard_types=())
        instance = ""
        while not self._stopping.is_set() and context.is_active():
            try:
                message = requests.get(timeout=0.2)
            except queue.Empty:
                message = None
            if message is _END:
                return
            if isinstance(message, discovery_pb2.DiscoveryRequest):
                if message.node.id:
                    instance = message.node.id
                nack = stream.on_request(message)
                if nack is not None:
                    log.warning("%s: Envoy rejected its secrets: %s", instance, nack.error)
            with self._changed:
                generation = self._generation
            material = self._certificates.current(instance) if instance else None
            if material is None:
                self._wait_change(generation)
                continue
            yield from stream.next_responses(secrets(material))
            if message is None:
                self._wait_change(generation)

    def _wait_change(self, generation: int) -> None:
        with self._changed:
            if self._generation == generation:
                self._changed.wait(0.5)
