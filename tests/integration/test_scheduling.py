"""Scheduling and running workloads with the process driver: three real agents
on 127.0.0.2-4, a real server, real processes, real health checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.client import Client
from sidecar.drivers.process import start_ticks_of
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

APPS = Path(__file__).resolve().parents[1] / "apps"
GRACE = 3.0
NODES = [("n2", "127.0.0.2", ("zone=a", "rack=r1")), ("n3", "127.0.0.3", ("zone=b", "rack=r1")),
         ("n4", "127.0.0.4", ("zone=c", "rack=r2"))]
RACKS = {"n2": "r1", "n3": "r1", "n4": "r2"}


def web(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
        "spec": {
            "command": [sys.executable, str(APPS / "web.py")], "port": 8080,
            "replicas": replicas, "resources": {"cpu": 100, "memory": 64},
            "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms",
                            "failureThreshold": 2},
            **spec,
        },
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, list[AgentProcess]]]:
    server = ServerProcess(tmp_path / "server", extra_args=("--node-grace", str(GRACE))).start()
    agents: list[AgentProcess] = []
    try:
        agents += [AgentProcess(server, name, address, tmp_path / name, labels=labels).start()
                   for name, address, labels in NODES]
        with server.client() as client:
            eventually(lambda: len(ready_nodes(client)) == 3, 30, "three ready nodes")
        yield server, agents
    finally:
        for agent in agents:
            agent.cleanup()
        server.stop()


def ready_nodes(client: Client) -> list[str]:
    nodes, _ = client.list("Node", "")
    return [n["metadata"]["name"] for n in nodes if n.get("status", {}).get("state") == "ready"]


def instances(client: Client, service: str) -> list[dict[str, Any]]:
    return client.list("Instance", "default", {"flotilla.dev/service": service})[0]


def healthy(client: Client, service: str, count: int) -> list[dict[str, Any]] | None:
    found = instances(client, service)
    good = [i for i in found if i.get("status", {}).get("state") == "healthy"]
    return good if len(good) == count and len(found) == count else None


def test_six_replicas_land_two_per_node(cluster: tuple[ServerProcess, list[AgentProcess]]
                                        ) -> None:
    server, _ = cluster
    with server.client() as client:
        client.apply([(web("web", 6), "web")])
        placed = eventually(lambda: healthy(client, "web", 6), 30, "6 healthy instances")
        assert Counter(i["spec"]["node"] for i in placed) == {"n2": 2, "n3": 2, "n4": 2}
        listed = run_cli("get", "instances", "web", server=server)
        assert listed.returncode == 0 and listed.stdout.count("healthy") == 6
        nodes = run_cli("get", "nodes", server=server)
        assert nodes.stdout.count("ready") == 3 and "127.0.0.3" in nodes.stdout


def test_constraint_puts_everything_on_the_matching_node(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, _ = cluster
    with server.client() as client:
        spec = web("zoned", 3, placement={"constraints": [{"key": "zone", "value": "b"}]})
        client.apply([(spec, "zoned")])
        placed = eventually(lambda: healthy(client, "zoned", 3), 30, "3 healthy instances")
        assert {i["spec"]["node"] for i in placed} == {"n3"}


def test_spread_by_a_label_balances_its_values_under_binpack(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, _ = cluster
    with server.client() as client:
        spec = web("racked", 4, placement={"strategy": "binpack", "spreadBy": ["rack"]})
        client.apply([(spec, "racked")])
        placed = eventually(lambda: healthy(client, "racked", 4), 30, "4 healthy instances")
        assert Counter(RACKS[i["spec"]["node"]] for i in placed) == {"r1": 2, "r2": 2}
        # binpack fills within rack r1: both of its replicas share one node
        assert len({i["spec"]["node"] for i in placed}) == 2


def test_too_large_is_unschedulable_with_an_explanation(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, _ = cluster
    with server.client() as client:
        client.apply([(web("huge", 1, resources={"cpu": 100, "memory": 100_000}), "huge")])

        def explained() -> str | None:
            found = instances(client, "huge")
            reason = found[0].get("status", {}).get("reason", "") if found else ""
            return reason if "nodes fit" in reason else None

        reason = eventually(explained, 15, "an unschedulable explanation")
        assert reason.startswith("0/3 nodes fit: 3 insufficient memory (need 100000 MiB")
        name = instances(client, "huge")[0]["metadata"]["name"]
        described = run_cli("describe", "instance", name, server=server)
        assert "0/3 nodes fit" in described.stdout
        service = eventually(lambda: "0/3 nodes fit" in (
            out := run_cli("describe", "service", "huge", server=server).stdout) and out, 10,
            "the Service's status to explain")
        assert "unschedulable:" in service and "available: 0" in service


def test_killed_instance_is_replaced_and_never_exceeds_replicas(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        client.apply([(web("web", 3), "web")])
        placed = eventually(lambda: healthy(client, "web", 3), 30, "3 healthy instances")
        victim = placed[0]
        agent = next(a for a in agents if a.name == victim["spec"]["node"])
        pid = agent.workload_pids()[victim["metadata"]["name"]]
        os.killpg(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def recovered() -> bool:
            found = instances(client, "web")
            assert len(found) <= 3, f"{len(found)} instances for 3 replicas"
            states = [i.get("status", {}) for i in found]
            return len(found) == 3 and all(s.get("state") == "healthy" for s in states) and (
                any(s.get("restarts", 0) >= 1 for s in states))

        eventually(recovered, 15, "the killed instance to be healthy again")
        assert time.monotonic() - killed_at < 5.0 + 1.0  # within 5 s, with polling slack


def test_failing_health_check_restarts_the_instance(
    cluster: tuple[ServerProcess, list[AgentProcess]], tmp_path: Path
) -> None:
    server, _ = cluster
    flag = tmp_path / "unhealthy"
    with server.client() as client:
        client.apply([(web("flaky", 1, env={"HEALTH_FAIL_FILE": str(flag)}), "flaky")])
        eventually(lambda: healthy(client, "flaky", 1), 30, "a healthy instance")
        flag.write_text("fail")

        def restarted() -> dict[str, Any] | None:
            found = instances(client, "flaky")
            status = found[0].get("status", {}) if found else {}
            return status if status.get("restarts", 0) >= 1 else None

        status = eventually(restarted, 15, "a restart after failing health checks")
        assert status["restarts"] >= 1
        flag.unlink()
        eventually(lambda: healthy(client, "flaky", 1), 30, "healthy again")


def test_crashing_command_shows_crashloop_with_growing_backoff(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, _ = cluster
    crash = {"command": ["/bin/sh", "-c", "echo boom; exit 3"], "healthCheck": None}
    spec = web("crash", 1)
    spec["spec"].update(crash)
    del spec["spec"]["healthCheck"]
    with server.client() as client:
        client.apply([(spec, "crash")])
        delays: list[float] = []

        def backoffs() -> bool:
            found = instances(client, "crash")
            status = found[0].get("status", {}) if found else {}
            reason = status.get("reason", "")
            if status.get("state") == "crashloop" and "restarting in" in reason:
                delay = float(reason.split("restarting in ")[1].split("s")[0])
                if not delays or delay != delays[-1]:
                    delays.append(delay)
            return len(delays) >= 3

        eventually(backoffs, 30, "three crash-loop back-offs", interval=0.05)
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        status = instances(client, "crash")[0]["status"]
        assert status["exitCode"] == 3
        # Not a tight loop: a handful of restarts in several seconds.
        assert status["restarts"] <= 6


def deploy(client: Client, name: str, replicas: int, **spec: Any) -> set[str]:
    """Apply a web Service and wait until every replica is healthy; their names."""
    client.apply([(web(name, replicas, **spec), name)])
    ready = eventually(lambda: healthy(client, name, replicas), 30,
                       f"{replicas} healthy {name} instances")
    return {i["metadata"]["name"] for i in ready}


def unchanged(client: Client, agents: list[AgentProcess], names: set[str],
              running: dict[str, int]) -> list[dict[str, Any]]:
    """The same instances are healthy, run by the very same processes."""
    after = eventually(lambda: healthy(client, "web", len(names)), 15, "healthy instances")
    assert {i["metadata"]["name"] for i in after} == names
    assert pids(agents) == running, "a workload was restarted or duplicated"
    return after


def pids(agents: list[AgentProcess]) -> dict[str, int]:
    found: dict[str, int] = {}
    for agent in agents:
        found |= agent.workload_pids()
    return found


def test_dead_node_instances_move_to_the_others(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        client.apply([(web("web", 3), "web")])
        eventually(lambda: healthy(client, "web", 3), 30, "3 healthy instances")
        dead = agents[0]
        dead.cleanup()  # SIGTERM the agent, SIGKILL its workloads
        dead.kill()
        died_at = time.monotonic()
        moved = eventually(
            lambda: (found := healthy(client, "web", 3)) and all(
                i["spec"]["node"] != dead.name for i in found) and found,
            GRACE + 15, "3 healthy instances on the surviving nodes")
        assert time.monotonic() - died_at < GRACE + 5 + 1
        assert {i["spec"]["node"] for i in moved} <= {"n3", "n4"}
        nodes = {n["metadata"]["name"]: n["status"]["state"] for n in client.list("Node")[0]}
        assert nodes[dead.name] == "down"


def test_a_restarted_agent_adopts_its_workloads(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        before = deploy(client, "web", 3)
        running = pids(agents)
        agents[0].kill()  # SIGKILL: the workloads keep running without it
        agents[0] = agents[0].again()
        time.sleep(3 * 1.0)  # a few report intervals for the new agent to settle
        after = unchanged(client, agents, before, running)
        assert all(i["status"]["restarts"] == 0 for i in after)


def test_server_restart_leaves_workloads_running(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        before = deploy(client, "web", 3)
    running = pids(agents)
    server.kill()
    time.sleep(2.0)  # the agents notice and keep their workloads running
    assert pids(agents) == running
    server.start()  # same data dir, same port
    with server.client() as client:
        eventually(lambda: len(ready_nodes(client)) == 3, 30, "the agents to rejoin")
        time.sleep(2.0)
        unchanged(client, agents, before, running)


def test_logs_come_from_the_agents(cluster: tuple[ServerProcess, list[AgentProcess]]) -> None:
    server, _ = cluster
    with server.client() as client:
        client.apply([(web("web", 2), "web")])
        placed = eventually(lambda: healthy(client, "web", 2), 30, "2 healthy instances")
    both = run_cli("logs", "web", server=server)
    assert both.returncode == 0, both.stderr
    for instance in placed:
        assert f"[{instance['metadata']['name']}] serving on" in both.stdout
    one = run_cli("logs", "web", placed[0]["metadata"]["name"], "--tail", "1", server=server)
    assert one.returncode == 0 and one.stdout.startswith("serving on ('127.0.0.")
    follow = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "--server", server.address, "logs", "web",
         placed[0]["metadata"]["name"], "-f"], stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None and "serving on" in follow.stdout.readline()
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.wait(timeout=10)
    missing = run_cli("logs", "nothing-here", server=server)
    assert missing.returncode == 1 and "no instances of Service default/nothing-here" in (
        missing.stderr)


def test_changing_the_template_rolls_instances_without_losing_capacity(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, _ = cluster
    with server.client() as client:
        before = deploy(client, "web", 3)
        client.apply([(web("web", 3, env={"VERSION": "2"}), "web v2")])
        fewest = 3

        def rolled() -> bool:
            nonlocal fewest
            found = instances(client, "web")
            fewest = min(fewest, sum(i.get("status", {}).get("state") == "healthy"
                                     for i in found))
            names = {i["metadata"]["name"] for i in found}
            return len(found) == 3 and not names & before and all(
                i.get("status", {}).get("state") == "healthy" for i in found)

        eventually(rolled, 60, "every instance replaced by a healthy new one", interval=0.05)
        assert fewest >= 3, f"only {fewest} healthy instances during the rollout"


def test_a_node_back_from_the_dead_stops_its_stale_instances(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        deploy(client, "web", 3)
        lost = agents[0]
        stale = lost.workload_pids()
        assert stale, "the first node ran nothing"
        lost.kill()  # the agent dies; its workloads keep running, unseen
        eventually(lambda: (found := healthy(client, "web", 3)) and all(
            i["spec"]["node"] != lost.name for i in found), GRACE + 15,
            "the instances to move off the silent node")
        agents[0] = lost.again()
        eventually(lambda: not agents[0].workload_pids(), 20, "the stale instances to stop")
        for pid in stale.values():
            assert start_ticks_of(pid) is None, f"stale workload {pid} still runs"
        assert len(instances(client, "web")) == 3


def test_drain_moves_everything_off_and_places_nothing_new(
    cluster: tuple[ServerProcess, list[AgentProcess]]
) -> None:
    server, agents = cluster
    with server.client() as client:
        deploy(client, "web", 3)
        drained = run_cli("drain", "n2", server=server)
        assert drained.returncode == 0, drained.stderr
        eventually(lambda: (found := healthy(client, "web", 3)) and all(
            i["spec"]["node"] != "n2" for i in found), 30, "the instances to leave n2")
        client.scale("web", 6)
        placed = eventually(lambda: healthy(client, "web", 6), 30, "6 healthy instances")
        assert "n2" not in {i["spec"]["node"] for i in placed}
        assert "draining" in run_cli("get", "nodes", server=server).stdout
        eventually(lambda: not agents[0].workload_pids(), 20, "n2 to run nothing")


@pytest.mark.parametrize(
    ("policy", "code", "state"),
    [("never", 3, "failed"), ("on-failure", 0, "exited")],
    ids=["never-failed", "on-failure-completed"],
)
def test_restart_policy_lets_finished_instances_rest(
    cluster: tuple[ServerProcess, list[AgentProcess]], policy: str, code: int, state: str
) -> None:
    server, _ = cluster
    spec = web("job", 1, command=["/bin/sh", "-c", f"sleep 0.3; exit {code}"],
               restartPolicy=policy)
    del spec["spec"]["healthCheck"]
    with server.client() as client:
        client.apply([(spec, "job")])

        def finished() -> dict[str, Any] | None:
            found = instances(client, "job")
            status = found[0].get("status", {}) if found else {}
            return status if status.get("state") == state else None

        status = eventually(finished, 20, f"the instance to be {state}")
        assert status["exitCode"] == code and status["restarts"] == 0
        time.sleep(1.5)  # it stays put: no restart, no replacement
        (again,) = instances(client, "job")
        assert again["status"]["state"] == state and again["status"]["restarts"] == 0


def test_tcp_health_check(cluster: tuple[ServerProcess, list[AgentProcess]]) -> None:
    server, _ = cluster
    with server.client() as client:
        deploy(client, "plain", 2, healthCheck={"tcp": {}, "interval": "250ms"})
        reasons = {i["status"]["reason"] for i in instances(client, "plain")}
        assert all(r.startswith("tcp 127.0.0.") and "accepts connections" in r for r in reasons)
