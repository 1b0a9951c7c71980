"""An HTTP echo server: ``python3 -m flotilla_examples.http_echo``.

- ``GET /healthz``: 200 ``ok``; 500 ``unhealthy`` while ``HEALTH_FAIL_FILE``
  exists.
- any other ``GET`` (and ``POST``): 200 with a JSON body naming the instance,
  service, namespace, method, path and request headers, so callers can see
  which instance answered and what the mesh added on the way.

With ``GRPC_UPSTREAM=NAME:PORT`` (say ``backend:9090``) every echo first calls
that gRPC echo service through the mesh and adds ``"upstream": {"target":
..., "answeredBy": INSTANCE}`` to its answer (502 when the call fails). The
name resolves as the mesh sets it up: ``FLOTILLA_UPSTREAM_<NAME>`` when the
agent set one (process driver), else the name itself (a docker pod's hosts
file maps it to its sidecar).

Listens on ``$HOST:$PORT`` (every address without HOST) (default 8080); exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from flotilla_examples import Identity, healthy, listen_host, listen_port, say, stop_requested

DEFAULT_PORT = 8080


def upstream_target(value: str) -> str:
    """``name:port`` -> where to dial it: the agent's FLOTILLA_UPSTREAM_<NAME>
    (``host:port``, or a host alone) when set, else ``name:port``."""
    name, _, port = value.rpartition(":")
    local = os.environ.get("FLOTILLA_UPSTREAM_" + name.upper().replace("-", "_"), "")
    if not local:
        return value
    return local if ":" in local else f"{local}:{port}"


class Upstream:
    """One long-lived channel to the gRPC echo service this frontend calls."""

    def __init__(self, value: str) -> None:
        self.name = value
        self.target = upstream_target(value)
        self._channel = grpc.insecure_channel(self.target)
        self._echo = self._channel.unary_unary("/flotilla.examples.Echo/Echo")

    def call(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        # Pass the trace context and the caller's x-* headers on: one request
        # is one trace end to end, and policies keyed on a header (ring hash)
        # see it at every hop.
        metadata = [(k.lower(), v) for k, v in headers.items()
                    if k.lower() in ("traceparent", "tracestate") or k.lower().startswith("x-")]
        try:
            answer = self._echo(b"", timeout=5, metadata=metadata)
        except grpc.RpcError as error:
            return 502, {"target": self.name, "error": f"{error.code().name}: {error.details()}"}
        return 200, {"target": self.name, "answeredBy": answer.decode()}


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "flotilla-http-echo/1"
    # Keep-alive, so a sidecar's connection pool reuses connections.
    protocol_version = "HTTP/1.1"
    identity = Identity("", "", "")
    upstream: Upstream | None = None

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            ok = healthy()
            self._reply(200 if ok else 500, b"ok" if ok else b"unhealthy", "text/plain")
            return
        self._echo()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._echo()

    def _echo(self) -> None:
        status = 200
        body: dict[str, Any] = {
            "instance": self.identity.instance,
            "service": self.identity.service,
            "namespace": self.identity.namespace,
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
        }
        if self.upstream is not None:
            status, body["upstream"] = self.upstream.call(dict(self.headers.items()))
        self._reply(status, json.dumps(body).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> int:
    stop = stop_requested()
    port = listen_port(DEFAULT_PORT)
    EchoHandler.identity = Identity.from_env()
    if os.environ.get("GRPC_UPSTREAM"):
        EchoHandler.upstream = Upstream(os.environ["GRPC_UPSTREAM"])
    server = ThreadingHTTPServer((listen_host(), port), EchoHandler)
    serving = threading.Thread(target=server.serve_forever, name="http-echo", daemon=True)
    serving.start()
    say(f"http_echo: instance {EchoHandler.identity.instance or '-'} listening on 0.0.0.0:{port}")
    stop.wait()
    server.shutdown()
    server.server_close()
    say("http_echo: stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
