"""A gRPC app with the standard health service (grpc.health.v1) alone, for
health checks that name a service.

Listens on $HOST:$PORT. ``Check`` answers SERVING for the server (``""``) and
for each service $SERVING names, NOT_SERVING for each one $NOT_SERVING names
(both comma-separated), NOT_FOUND for any other. Exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def names(variable: str) -> list[str]:
    return [name for name in os.environ.get(variable, "").split(",") if name]


def main() -> None:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in names("SERVING"):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    for name in names("NOT_SERVING"):
        servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ['PORT']}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"grpc_statuses: cannot listen on {address}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"grpc_statuses: listening on {address}", flush=True)
    stop.wait()
    server.stop(1.0).wait()


if __name__ == "__main__":
    main()
