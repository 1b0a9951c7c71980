"""How sidecars start: the pinned Envoy or a clear refusal, and the app only
once its Envoy holds its config."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import AgentProcess, ServerProcess, eventually

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"
#: Calls its upstream once, at start: fails unless the sidecar already
#: listens for it and knows its endpoints.
CALLER = (
    "import os, sys, urllib.request\n"
    "url = 'http://' + os.environ['FLOTILLA_UPSTREAM_BACKEND'] + '/'\n"
    "with urllib.request.urlopen(url, timeout=5) as reply:\n"
    "    print('upstream answered', reply.status, reply.read().decode().strip())\n"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


def test_an_agent_with_the_wrong_envoy_refuses_to_start(server: ServerProcess,
                                                        tmp_path: Path) -> None:
    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\necho 'envoy  version: abc/1.29.0/Clean/RELEASE/BoringSSL'\n")
    fake.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "controlplane", "--server", server.address, "agent", "--name",
         "n1", "--address", "127.0.0.2", "--driver", "process", "--data-dir",
         str(tmp_path / "agent"), "--join-token-file", str(server.data_dir / "join-token")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "FLOTILLA_ENVOY": str(fake)},
    )
    assert done.returncode != 0
    assert "is 1.29.0, but Flotilla needs Envoy 1.40.x" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_app_starts_only_once_its_envoy_has_its_config(server: ServerProcess,
                                                            tmp_path: Path) -> None:
    agent = AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1").start()
    try:
        with server.client() as client:
            client.apply([({
                "apiVersion": "flotilla.dev/v1", "kind": "Service",
                "metadata": {"name": "backend"},
                "spec": {"command": [sys.executable, str(WEB)], "port": 8080, "replicas": 2,
                         "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms"}},
            }, "backend")])
            eventually(lambda: sum(i.get("status", {}).get("state") == "healthy"
                                   for i in client.list("Instance", "default")[0]) == 2,
                       60, "two healthy backends")
            client.apply([({
                "apiVersion": "flotilla.dev/v1", "kind": "Service",
                "metadata": {"name": "caller"},
                "spec": {"command": [sys.executable, "-c", CALLER], "replicas": 1,
                         "restartPolicy": "never", "upstreams": [{"name": "backend"}]},
            }, "caller")])

            def finished() -> dict[str, object] | None:
                found = client.list("Instance", "default", {"flotilla.dev/service": "caller"})
                status = found[0][0].get("status", {}) if found[0] else {}
                return status if status.get("state") in ("exited", "failed") else None

            # Exit code 0: its first call, at start, went through its sidecar.
            status = eventually(finished, 60, "the caller to finish")
            assert status["state"] == "exited" and status.get("exitCode", 0) == 0, status
    finally:
        agent.cleanup()
