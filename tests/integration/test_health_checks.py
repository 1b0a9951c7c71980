"""Health checks as a node runs them (issue 12), with a real server, a real
agent (process driver) and real apps:

- an HTTP check that names its own port makes an instance healthy whose app
  answers its health there, while the same app checked on its own port never
  is, and says why;
- a gRPC check asks the app's grpc.health.v1 service for the service it
  names: NOT_SERVING keeps the instance from ever turning healthy, and its
  reason (also in `flotilla get instances`) says so; a SERVING one is healthy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import Client
from tests.harness import AgentProcess, ServerProcess, eventually, free_port, run_cli

APPS = Path(__file__).resolve().parents[1] / "apps"
STARTUP = 60.0


@pytest.fixture
def node(server: ServerProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    agent = AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1")
    try:
        agent.start()
        yield agent
    finally:
        agent.cleanup()


def service(name: str, app: str, **spec: Any) -> tuple[dict[str, Any], str]:
    return ({"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
             "spec": {"command": [sys.executable, str(APPS / app)], "replicas": 1,
                      "resources": {"cpu": 100, "memory": 64}, **spec}}, name)


def status_of(client: Client, name: str) -> dict[str, Any]:
    found = client.list("Instance", "default", {"flotilla.dev/service": name})[0]
    return found[0].get("status", {}) if len(found) == 1 else {}


def reads(client: Client, name: str, reason: str, seen: set[str] | None = None
          ) -> Callable[[], dict[str, Any] | None]:
    """A poll: the instance's status once its reason holds ``reason``; every
    state it was found in goes to ``seen``."""
    def check() -> dict[str, Any] | None:
        status = status_of(client, name)
        if seen is not None and status.get("state"):
            seen.add(status["state"])
        return status if reason in status.get("reason", "") else None
    return check


def holds(check: Callable[[], dict[str, Any] | None], seconds: float, what: str) -> None:
    """``check`` holds throughout the next ``seconds`` (polled): several
    probes at the tests' 250ms interval."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), f"{what} no longer holds"
        time.sleep(0.1)


def listed(server: ServerProcess, name: str) -> tuple[str, str]:
    """The STATE and the whole row of the Service's one instance in `flotilla
    get instances`."""
    shown = run_cli("get", "instances", name, server=server)
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith(f"{name}-")]
    assert len(rows) == 1, shown.stdout
    return rows[0].split()[2], rows[0]


def test_an_http_check_on_its_own_port_is_what_makes_the_instance_healthy(
    server: ServerProcess, node: AgentProcess
) -> None:
    health_port = free_port()
    check = {"path": "/healthz"}
    with server.client() as client:
        client.apply([
            service("apart", "health_port.py", port=8080, env={"HEALTH_PORT": str(health_port)},
                    healthCheck={"http": {**check, "port": health_port}, "interval": "250ms"}),
            service("same", "health_port.py", port=8080,
                    healthCheck={"http": check, "interval": "250ms"}),
        ])
        status = eventually(reads(client, "apart", f"GET /healthz on port {health_port} -> 200"),
                            STARTUP, "apart healthy through its health port")
        assert status["state"] == "healthy"
        seen: set[str] = set()
        status = eventually(reads(client, "same", "GET /healthz -> 503", seen), STARTUP,
                            "same failing its check on the app's port")
        holds(reads(client, "same", "GET /healthz -> 503", seen), 2.0, "same failing")
        assert "healthy" not in seen, seen
    state, row = listed(server, "same")
    assert state != "healthy" and "GET /healthz -> 503" in row, row


def test_a_grpc_check_asks_for_the_service_it_names(
    server: ServerProcess, node: AgentProcess
) -> None:
    app = {"port": 9090, "protocol": "grpc",
           "env": {"SERVING": "echo.Ready", "NOT_SERVING": "echo.Echo"}}
    with server.client() as client:
        client.apply([
            service("picky", "grpc_statuses.py", **app,
                    healthCheck={"grpc": {"service": "echo.Echo"}, "interval": "250ms"}),
            service("ready", "grpc_statuses.py", **app,
                    healthCheck={"grpc": {"service": "echo.Ready"}, "interval": "250ms"}),
        ])
        status = eventually(reads(client, "ready", "grpc health echo.Ready SERVING"), STARTUP,
                            "ready healthy")
        assert status["state"] == "healthy"
        seen: set[str] = set()
        status = eventually(reads(client, "picky", "grpc health echo.Echo NOT_SERVING", seen),
                            STARTUP, "picky's reason naming its NOT_SERVING service")
        holds(reads(client, "picky", "grpc health echo.Echo NOT_SERVING", seen), 2.0,
              "picky failing")
        assert "healthy" not in seen, seen
    state, row = listed(server, "picky")
    assert state != "healthy" and "grpc health echo.Echo NOT_SERVING" in row, row
