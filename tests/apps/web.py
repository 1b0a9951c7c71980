"""A minimal HTTP app for driver and scheduling tests.

Listens on $HOST:$PORT. GET /healthz answers 200, or 500 while the file named
by $HEALTH_FAIL_FILE exists; GET /shown answers what the instance got from
ConfigMaps and Secrets, as JSON: ``instance``, ``env`` (each variable $SHOW_ENV
names, comma-separated; null when unset) and ``files`` (every file under
$FLOTILLA_MOUNT_ROOT by the path the manifest mounts it at, ``/etc/app/KEY``,
with its ``content``, octal ``mode`` and owner ``uid``); any other GET answers
the instance id. Exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


def shown() -> dict[str, Any]:
    root = os.environ.get("FLOTILLA_MOUNT_ROOT", "")
    files: dict[str, dict[str, Any]] = {}
    for directory, _, names in os.walk(root) if root else ():
        for name in names:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8", errors="replace") as file:
                content = file.read()
            info = os.stat(path)
            files["/" + os.path.relpath(path, root)] = {
                "content": content, "mode": oct(stat.S_IMODE(info.st_mode)), "uid": info.st_uid}
    names = [name for name in os.environ.get("SHOW_ENV", "").split(",") if name]
    return {"instance": os.environ.get("FLOTILLA_INSTANCE_ID", "?"),
            "env": {name: os.environ.get(name) for name in names}, "files": files}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        failing = os.environ.get("HEALTH_FAIL_FILE", "")
        status = 500 if self.path == "/healthz" and failing and os.path.exists(failing) else 200
        body = (os.environ.get("FLOTILLA_INSTANCE_ID", "?") + "\n").encode()
        if self.path == "/shown":
            body = json.dumps(shown()).encode()
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
