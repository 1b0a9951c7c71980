"""An HTTP app whose health is answered on a port of its own, for health
checks that name their own port.

Listens on $HOST:$PORT, where every GET answers 503 (its health is not
served there); with $HEALTH_PORT set, also on $HOST:$HEALTH_PORT, where every
GET answers 200. Exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answering(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    app = ThreadingHTTPServer((host, int(os.environ["PORT"])), answering(503))
    if os.environ.get("HEALTH_PORT"):
        health = ThreadingHTTPServer((host, int(os.environ["HEALTH_PORT"])), answering(200))
        threading.Thread(target=health.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {host}:{os.environ['PORT']}, health on {os.environ.get('HEALTH_PORT')}",
          flush=True)
    app.serve_forever()


if __name__ == "__main__":
    main()
