"""Proxyless gRPC under every load-balancing algorithm a TrafficPolicy names:
a real grpcio client (GRPC_XDS_BOOTSTRAP from `flotilla bootstrap
--proxyless`, target ``xds:///echo``) against a real server ACKs the cluster
(grpcio has no least_request and no random policy, and NACKed the cluster
that asked for one: "LB policy is not supported"), its calls reach every
backend, and `flotilla proxy-status` says what the client does instead.

The backends are gRPC echo servers started here and registered through the
API (no sidecars; the mesh runs without mTLS so the client calls them in
plaintext).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, end_process, eventually, free_port, run_cli
from tests.mesh_scenarios import APPS, serving

SERVICE = "echo"
BACKENDS = 3
CALLS = 30
#: Calls the echo servers, prints who answered, then stays connected (its
#: xDS stream open, so proxy-status lists it) until its stdin closes.
CLIENT = (
    "import sys, grpc\n"
    f"channel = grpc.insecure_channel('xds:///{SERVICE}')\n"
    "echo = channel.unary_unary('/flotilla.examples.Echo/Echo')\n"
    f"print(' '.join(echo(b'', timeout=20).decode() for _ in range({CALLS})), flush=True)\n"
    "sys.stdin.read()\n"
)


@dataclass
class Mesh:
    server: ServerProcess
    backends: set[str]
    tmp: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("proxyless-lb")
    with ExitStack() as stack:
        server = ServerProcess(tmp / "server", extra_args=("--no-mtls",)).start()
        stack.callback(server.stop)
        names = set()
        client = stack.enter_context(server.client())
        client.apply([({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                        "metadata": {"name": SERVICE},
                        "spec": {"port": 9090, "protocol": "grpc",
                                 "registration": {"cidrs": ["127.0.0.0/8"]}}}, "lb")])
        for n in range(BACKENDS):
            port, name = free_port(), f"echo-outside-{n}"
            env = {**os.environ, "PYTHONPATH": str(APPS), "HOST": "127.0.0.1",
                   "PORT": str(port), "FLOTILLA_INSTANCE_ID": name}
            with (tmp / f"{name}.log").open("ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", "flotilla_examples.grpc_echo"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(end_process, proc)
            stack.enter_context(client.register(SERVICE, "127.0.0.1", port))
            names.add(name)
        eventually(lambda: serving(client, SERVICE, BACKENDS), 30, "three registered backends")
        yield Mesh(server, names, tmp)


def proxy_status(mesh: Mesh) -> list[dict[str, Any]]:
    listed = run_cli("proxy-status", "-o", "json", server=mesh.server)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return found


@pytest.mark.parametrize(("balancer", "note"), [
    ({"algorithm": "least-request"},
     "echo.default: least-request: gRPC clients without a least_request policy (grpcio, "
     "gRPC C++) use round-robin"),
    ({"algorithm": "random"},
     "echo.default: random: proxyless gRPC has no random policy; round-robin used"),
    ({"algorithm": "round-robin"}, None),
    ({"algorithm": "ring-hash", "hashOn": {"header": "x-user"}}, None),
], ids=["least-request", "random", "round-robin", "ring-hash"])
def test_a_proxyless_client_acks_and_balances_under_the_policy(
        mesh: Mesh, balancer: dict[str, Any], note: str | None) -> None:
    algorithm = balancer["algorithm"]
    policy = mesh.tmp / f"{algorithm}.yaml"
    policy.write_text(json.dumps({
        "apiVersion": "flotilla.dev/v1", "kind": "TrafficPolicy",
        "metadata": {"name": SERVICE},
        "spec": {"destination": SERVICE, "loadBalancer": balancer}}))
    applied = run_cli("apply", "-f", str(policy), "--wait", "--wait-timeout", "30",
                      server=mesh.server)
    assert applied.returncode == 0, applied.stderr
    name = f"lb-{algorithm}"
    bootstrap = mesh.tmp / f"{name}.json"
    written = run_cli("bootstrap", "--proxyless", "--name", name, "-o", str(bootstrap),
                      server=mesh.server)
    assert written.returncode == 0, written.stderr
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)}
    client = subprocess.Popen([sys.executable, "-c", CLIENT], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        answers = client.stdout.readline().split()  # bounded: each call has a deadline
        assert len(answers) == CALLS, client.stderr.read() if client.stderr else ""
        # Round-robin (or ring-hash's random per-call hash) reaches every backend.
        assert set(answers) == mesh.backends, answers

        def mine() -> dict[str, Any] | None:
            found = [p for p in proxy_status(mesh) if p.get("service") == name]
            return found[0] if found else None

        status = eventually(mine, 30, f"{name} in proxy-status")
        assert status["kind"] == "proxyless"
        assert not status.get("lastNackError"), status  # the cluster was ACKed
        assert "clusters" in status.get("ackedVersions", {}), status
        assert status.get("notes", []) == ([note] if note else []), status
        table = run_cli("proxy-status", server=mesh.server)
        assert table.returncode == 0, table.stderr
        assert "NACKED" not in table.stdout
        if note:
            assert f"({'proxyless'} default/{name}): {note}" in table.stdout, table.stdout
    finally:
        if client.stdin is not None:
            client.stdin.close()
        end_process(client)
