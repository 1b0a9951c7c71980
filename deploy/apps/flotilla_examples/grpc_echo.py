"""A gRPC echo server: ``python3 -m flotilla_examples.grpc_echo``.

- ``/flotilla.examples.Echo/Echo`` (unary, raw bytes in and out): returns the
  instance id, UTF-8 encoded, whatever the request holds.
- ``grpc.health.v1.Health`` (``Check`` and ``Watch``), the standard health
  service: ``SERVING`` for the server (``""``) and for
  ``flotilla.examples.Echo``; ``NOT_SERVING`` while ``HEALTH_FAIL_FILE``
  exists or while the server drains after SIGTERM; ``NOT_FOUND`` (``Check``)
  or ``SERVICE_UNKNOWN`` (``Watch``) for other names.

Debian's python3-grpcio carries no ``grpc_health`` module, so the health
service is served through generic handlers, with its two one-field messages
encoded here by hand; any standard health client (grpc_health_probe, Envoy,
Kubernetes) reads them.

Listens on ``$HOST:$PORT`` (every address without HOST) (default 9090); on SIGTERM stops taking new
calls, lets running ones finish for up to ``GRACE_SECONDS`` and exits 0.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from flotilla_examples import Identity, healthy, listen_host, listen_port, say, stop_requested

DEFAULT_PORT = 9090
GRACE_SECONDS = 5.0
ECHO_SERVICE = "flotilla.examples.Echo"
HEALTH_SERVICE = "grpc.health.v1.Health"
#: How often ``Watch`` re-reads the health state, in seconds.
WATCH_INTERVAL = 1.0

# grpc.health.v1.HealthCheckResponse.ServingStatus
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def encode_status(status: int) -> bytes:
    """A HealthCheckResponse: field 1 (``status``), varint; values are < 128."""
    return bytes((0x08, status))


def decode_service(request: bytes) -> str:
    """The ``service`` (field 1, string) of a HealthCheckRequest; others skipped."""
    service, pos = "", 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = request[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(request):
        key = varint()
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            varint()
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length = varint()
            if field == 1:
                service = request[pos:pos + length].decode()
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    return service


class EchoServer:
    """The servicers, as plain methods over the server's state."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        #: Set when the server starts draining; health turns NOT_SERVING.
        self.draining = threading.Event()

    def status(self, service: str) -> int:
        if service not in ("", ECHO_SERVICE):
            return SERVICE_UNKNOWN
        return SERVING if healthy() and not self.draining.is_set() else NOT_SERVING

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.identity.instance.encode()

    def check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        service = decode_service(request)
        status = self.status(service)
        if status == SERVICE_UNKNOWN:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        return encode_status(status)

    def watch(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        service = decode_service(request)
        last = None
        while context.is_active():
            status = self.status(service)
            if status != last:
                last = status
                yield encode_status(status)
            if self.draining.wait(WATCH_INTERVAL) and last == self.status(service):
                return

    def handlers(self) -> list[Any]:
        return [
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(self.echo)}
            ),
            grpc.method_handlers_generic_handler(
                HEALTH_SERVICE,
                {
                    "Check": grpc.unary_unary_rpc_method_handler(self.check),
                    "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
                },
            ),
        ]


def main() -> int:
    stop = stop_requested()
    port = listen_port(DEFAULT_PORT)
    echo = EchoServer(Identity.from_env())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=echo.handlers())
    if server.add_insecure_port(f"{listen_host()}:{port}") == 0:
        print(f"grpc_echo: cannot listen on {listen_host()}:{port}", file=sys.stderr, flush=True)
        return 1
    server.start()
    say(f"grpc_echo: instance {echo.identity.instance or '-'} listening on {listen_host()}:{port}")
    stop.wait()
    echo.draining.set()
    server.stop(GRACE_SECONDS).wait()
    say("grpc_echo: stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
