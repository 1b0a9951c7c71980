"""An HTTP relay for mesh tests: a mesh service calling its upstreams.

``GET /<upstream>/<path>`` calls ``http://<where>/<path>``, where ``<where>``
is ``$FLOTILLA_UPSTREAM_<UPSTREAM>`` (the sidecar's outbound listener the
agent announces), and answers 200 with ``{"status": ..., "body": ...}`` of
what came back, or 502 with ``{"error": ...}`` when the call failed.
``GET /healthz`` answers 200. Listens on $HOST:$PORT; exits 0 on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Relay(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/healthz":
            self._reply(200, {"ok": True})
            return
        upstream, _, rest = self.path.lstrip("/").partition("/")
        where = os.environ.get("FLOTILLA_UPSTREAM_" + upstream.upper().replace("-", "_"), "")
        if not where:
            self._reply(404, {"error": f"no upstream {upstream!r}"})
            return
        host, _, port = where.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            connection.request("GET", "/" + rest)
            answer = connection.getresponse()
            body = answer.read().decode(errors="replace")
            self._reply(200, {"status": answer.status, "body": body})
        except OSError as error:
            self._reply(502, {"error": f"{type(error).__name__}: {error}"})
        finally:
            connection.close()

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])),
                                 Relay)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
