"""An HTTP echo server: ``python3 -m flotilla_examples.http_echo``.

- ``GET /healthz``: 200 ``ok``; 500 ``unhealthy`` while ``HEALTH_FAIL_FILE``
  exists.
- any other ``GET`` (and ``POST``): 200 with a JSON body naming the instance,
  service, namespace, method, path and request headers, so callers can see
  which instance answered and what the mesh added on the way.

Listens on ``$HOST:$PORT`` (every address without HOST) (default 8080); exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flotilla_examples import Identity, healthy, listen_host, listen_port, say, stop_requested

DEFAULT_PORT = 8080


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "flotilla-http-echo/1"
    # Keep-alive, so a sidecar's connection pool reuses connections.
    protocol_version = "HTTP/1.1"
    identity = Identity("", "", "")

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
        body = {
            "instance": self.identity.instance,
            "service": self.identity.service,
            "namespace": self.identity.namespace,
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
        }
        self._reply(200, json.dumps(body).encode(), "application/json")

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
