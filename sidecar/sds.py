"""SDS on the node: each local Envoy gets its instance's certificate and the
mesh's trust bundle over a unix socket, and new ones the moment they rotate.

Secrets, by the names the xDS builder asks for:

- ``default``: the instance's leaf and its key (the Envoy's node id is the
  instance id);
- ``ROOTCA``: every root the mesh trusts.

State of the world over ``StreamSecrets``: a response whenever the secret's
version (its serial or bundle) changes; ACKs and NACKs are read and dropped
(a NACKed secret is logged). The key never leaves the node: it goes from
memory to a local socket.
"""

from __future__ import annotations

import hashlib
import itertools
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
from google.protobuf import any_pb2

from sidecar.identity import Certificates, Material

log = logging.getLogger(__name__)

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CERTIFICATE = "default"
ROOTS = "ROOTCA"
_END = object()
_nonces = itertools.count(1)


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
        instance, sent = "", ""
        names: list[str] = []
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
                if message.resource_names:
                    names = list(message.resource_names)
                if message.HasField("error_detail"):
                    log.warning("%s: Envoy rejected its secrets: %s", instance,
                                message.error_detail.message)
            with self._changed:
                generation = self._generation
            material = self._certificates.current(instance) if instance else None
            if material is None or not names:
                self._wait_change(generation)
                continue
            version = hashlib.blake2b(
                f"{material.serial}\n{material.bundle_pem}".encode(), digest_size=8).hexdigest()
            if version != sent:
                found = [s for s in (secret(n, material) for n in names) if s is not None]
                packed = []
                for item in found:
                    wrapped = any_pb2.Any()
                    wrapped.Pack(item)
                    packed.append(wrapped)
                sent = version
                yield discovery_pb2.DiscoveryResponse(
                    version_info=version, resources=packed, type_url=SECRET_TYPE,
                    nonce=str(next(_nonces)))
            if message is None:
                self._wait_change(generation)

    def _wait_change(self, generation: int) -> None:
        with self._changed:
            if self._generation == generation:
                self._changed.wait(0.5)
