"""A minimal HTTP app for driver and scheduling tests.

Listens on $HOST:$PORT. GET /healthz answers 200, or 500 while the file named
by $HEALTH_FAIL_FILE exists; GET / answers the instance id. Exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        failing = os.environ.get("HEALTH_FAIL_FILE", "")
        status = 500 if self.path == "/healthz" and failing and os.path.exists(failing) else 200
        body = (os.environ.get("FLOTILLA_INSTANCE_ID", "?") + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = HTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
