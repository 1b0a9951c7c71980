"""An instance's life on a node, as operators see it (issue 12), with a real
server, a real agent (process driver) and real Envoy sidecars:

- an instance that exited keeps its last output for `flotilla logs`, across
  an agent restart (which does not run it again), until it is deleted;
- a sidecar Envoy the agent starts again counts in RESTARTS, and the reason
  it gives clears once the new Envoy serves; an agent restart leaves the
  Envoys serving and the count where it was.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import Client
from sidecar import envoy
from sidecar.drivers.process import start_ticks_of
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"
STARTUP = 60.0


@pytest.fixture
def node(server: ServerProcess, tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """The node's agent, as a one-item list: a test that restarts the agent
    puts the new process there, and the fixture cleans up whichever runs."""
    agents = [AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1")]
    try:
        agents[0].start()
        yield agents
    finally:
        agents[0].cleanup()


def service(name: str, **spec: Any) -> tuple[dict[str, Any], str]:
    return ({"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
             "spec": {"replicas": 1, "resources": {"cpu": 100, "memory": 64}, **spec}}, name)


def the_instance(client: Client, service_name: str) -> dict[str, Any] | None:
    found = client.list("Instance", "default", {"flotilla.dev/service": service_name})[0]
    return found[0] if len(found) == 1 else None


def in_state(client: Client, service_name: str, state: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        found = the_instance(client, service_name)
        return found if found and found.get("status", {}).get("state") == state else None
    return check


def restart_agent(agents: list[AgentProcess]) -> AgentProcess:
    """SIGTERM the agent (its workloads keep running), start it again, and
    wait until it joined."""
    joins = agents[0].log().count("as node n1")
    agents[0].kill(signal.SIGTERM)
    agents[0] = agents[0].again()
    eventually(lambda: agents[0].log().count("as node n1") > joins, 30, "the agent to rejoin")
    return agents[0]


def stays(check: Callable[[], bool], seconds: float, what: str) -> None:
    """``check`` holds throughout the next ``seconds`` (polled)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), f"{what} no longer holds"
        time.sleep(0.1)


def test_an_exited_instance_keeps_its_last_output_until_it_is_deleted(
        server: ServerProcess, node: list[AgentProcess], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    job = f"open({str(runs)!r}, 'a').write('ran\\n'); print('the job says goodbye', flush=True)"
    with server.client() as client:
        client.apply([service("job", command=[sys.executable, "-c", job],
                              restartPolicy="never")])
        status = eventually(in_state(client, "job", "exited"), STARTUP, "the job to exit")["status"]
        assert status["exitCode"] == 0 and status["restarts"] == 0

        shown = run_cli("logs", "job", server=server)
        assert shown.returncode == 0, shown.stderr
        assert "the job says goodbye" in shown.stdout

        # A restarted agent still has it, and does not run the job again.
        agent = restart_agent(node)

        def logs_from_the_new_agent() -> str | None:
            again = run_cli("logs", "job", "--tail", "1", server=server)
            return again.stdout if again.returncode == 0 and "goodbye" in again.stdout else None

        assert eventually(logs_from_the_new_agent, 30, "the job's output from the new agent"
                          ).strip() == "the job says goodbye"
        stays(lambda: runs.read_text() == "ran\n" and in_state(client, "job", "exited")()
              is not None, 2.0, "the job ran once and rests")

        # Deleted: its output goes with it.
        client.delete([("Service", "default", "job")])
        eventually(lambda: the_instance(client, "job") is None, 30, "the instance to go")
        history = agent.data_dir / "history"
        eventually(lambda: not list(history.iterdir()), 30, "the agent to forget the job")
        gone = run_cli("logs", "job", server=server)
        assert gone.returncode == 1 and "no instances of Service default/job" in gone.stderr


def serving(agent: AgentProcess, instance: str) -> bool:
    """Whether the instance's Envoy is LIVE (its admin /ready: it has its
    listeners and clusters; the inbound listener takes mTLS only)."""
    state = json.loads((agent.data_dir / "instances" / instance / "state.json").read_text())
    return envoy.Admin("127.0.0.1", int(state["admin_port"]), timeout=1.0).ready()


def test_a_restarted_envoy_counts_and_its_reason_clears_across_agent_restarts(
        server: ServerProcess, node: list[AgentProcess]) -> None:
    with server.client() as client:
        # No health check: nothing but the sidecar's own recovery clears the reason.
        client.apply([service("web", command=[sys.executable, str(WEB)], port=8080)])
        web = eventually(in_state(client, "web", "running"), STARTUP, "a running instance")
        name = web["metadata"]["name"]
        assert serving(node[0], name)

        def recovered(count: int) -> Callable[[], dict[str, Any] | None]:
            """The Envoy started again ``count`` times in all, serving, no reason left."""
            def check() -> dict[str, Any] | None:
                found = the_instance(client, "web")
                status = found.get("status", {}) if found else {}
                return status if status.get("sidecarRestarts") == count and \
                    status.get("reason") == "" and status.get("state") == "running" else None
            return check

        first = node[0].envoy_pids()[name]
        os.kill(first, signal.SIGKILL)
        status = eventually(recovered(1), 30, "the Envoy back, counted, its reason cleared")
        assert status["restarts"] == 0, "the app itself was not restarted"
        assert "its Envoy exited; starting it again (sidecar restart 1)" in node[0].log()
        assert serving(node[0], name)
        listed = run_cli("get", "instances", server=server)
        (row,) = [line for line in listed.stdout.splitlines() if line.startswith(name)]
        assert "1 (1 sidecar)" in row, listed.stdout

        # The data plane outlives the agent: the Envoy serves while it is away
        # and after it is back, with the count where it was.
        second = node[0].envoy_pids()[name]
        ticks = start_ticks_of(second)
        assert second != first and ticks is not None
        node[0].kill(signal.SIGTERM)
        assert serving(node[0], name), "the Envoy stopped with the agent"
        agent = restart_agent(node)
        assert start_ticks_of(second) == ticks and agent.envoy_pids()[name] == second

        # Killed while this agent runs: counted on top of the earlier one.
        os.kill(second, signal.SIGKILL)
        status = eventually(recovered(2), 30, "the Envoy back again, counted, reason cleared")
        assert status["restarts"] == 0
        assert serving(agent, name)
