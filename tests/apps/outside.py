"""A service outside the mesh, as someone else runs it: HTTP, or HTTPS with
$TLS_CERT and $TLS_KEY (PEM files).

Any ``GET`` answers 200 with ``{"name": $NAME, "tls": ..., "sni": ...}``:
whether the connection was TLS and the server name the client sent (SNI),
so tests see what the mesh sent on the way. Listens on $HOST:$PORT; exits 0
on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        tls = isinstance(self.connection, ssl.SSLSocket)
        body = json.dumps({"name": os.environ.get("NAME", ""), "tls": tls,
                           "sni": getattr(self.connection, "sni", "") if tls else ""}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _remember_sni(sock: Any, server_name: str | None, context: ssl.SSLContext) -> None:
    sock.sni = server_name or ""


def main() -> None:
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])),
                                 Handler)
    if os.environ.get("TLS_CERT"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
        context.sni_callback = _remember_sni
        server.socket = context.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
