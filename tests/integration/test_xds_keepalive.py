"""The keepalive Envoy's bootstrap and the server agree on: a real Envoy
sidecar's ADS stream (and its SDS stream to the agent) stays connected for two
minutes without a reconnect, the agent never joins again meanwhile, and a
control plane that stops answering is noticed by the Envoy within ~30 s.

Slow (~2.5 minutes): deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import envoy
from tests.harness import AgentProcess, ServerProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"
#: How long the stream must stay up: several of gRPC's ping-strike windows
#: (the old bootstrap's 5 s pings were answered with GOAWAY after ~20 s).
HOLD = 120.0
ADS = f"cluster.{envoy.XDS_CLUSTER}"
SDS = f"cluster.{envoy.SDS_CLUSTER}"
STATS = ("control_plane.connected_state", f"{ADS}.upstream_cx_total",
         f"{ADS}.upstream_rq_total", f"{ADS}.http2.keepalive_timeout",
         f"{SDS}.upstream_cx_total", f"{SDS}.upstream_rq_total")


def stats(admin: envoy.Admin) -> dict[str, int]:
    """The counters and gauges in STATS, read from Envoy's admin /stats."""
    pattern = "^(" + "|".join(name.replace(".", "\\.") for name in STATS) + ")$"
    status, body = admin.get(f"/stats?filter={pattern}")
    assert status == 200, body
    found = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(":")
        found[name.strip()] = int(value.strip())
    return found


@pytest.fixture
def sidecar(server: ServerProcess, tmp_path: Path) -> Iterator[tuple[AgentProcess, str]]:
    """An agent (process driver, sidecars on) running one instance of `web`
    with its Envoy; yields the agent and the instance id."""
    agent = AgentProcess(server, "n1", "127.0.0.2", tmp_path / "n1").start()
    try:
        with server.client() as client:
            client.apply([({
                "apiVersion": "flotilla.dev/v1", "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"command": [sys.executable, str(WEB)], "port": 8080, "replicas": 1,
                         "healthCheck": {"http": {"path": "/healthz"}, "interval": "1s"}},
            }, "web")])
            healthy = eventually(
                lambda: [i for i in client.list("Instance", "default")[0]
                         if i.get("status", {}).get("state") == "healthy"],
                90, "a healthy web instance")
        yield agent, healthy[0]["metadata"]["name"]
    finally:
        agent.cleanup()


def test_the_ads_stream_stays_connected_for_two_minutes(
        server: ServerProcess, sidecar: tuple[AgentProcess, str]) -> None:
    agent, instance = sidecar
    state = json.loads((agent.data_dir / "instances" / instance / "state.json").read_text())
    admin = envoy.Admin("127.0.0.1", int(state["admin_port"]), timeout=10.0)
    with server.client() as client:
        def proxy_since() -> int:
            mine = [p for p in client.proxies() if p.id == instance]
            return mine[0].connected_since.ToNanoseconds() if mine else 0

        connected = eventually(proxy_since, 30, "the sidecar's proxy status")
        before = eventually(lambda: (s := stats(admin)).get(STATS[0]) == 1 and s, 30,
                            "Envoy connected to the control plane")
        joins = agent.log().count("joined ")
        samples = 0
        end = time.monotonic() + HOLD
        while time.monotonic() < end:  # watch it throughout, not only at the ends
            now = stats(admin)
            assert now["control_plane.connected_state"] == 1, now
            assert now[f"{ADS}.upstream_cx_total"] == before[f"{ADS}.upstream_cx_total"], now
            samples += 1
            time.sleep(5.0)
        after = stats(admin)
        # No new connection, no new ADS or SDS stream, no ping gone unanswered:
        assert after == before, f"before {HOLD:.0f}s: {before}\nafter: {after}"
        assert samples >= 20
        assert proxy_since() == connected  # the server saw one stream all along
        assert agent.log().count("joined ") == joins, agent.log()[-3000:]

    # Now the control plane stops answering (its process frozen, its sockets
    # open): Envoy's pings go unanswered and it gives the connection up.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        eventually(lambda: stats(admin)[f"{ADS}.http2.keepalive_timeout"] >= 1, 60,
                   "Envoy to notice the frozen control plane")
        noticed = time.monotonic() - started
        print(f"Envoy gave up on the frozen control plane after {noticed:.1f}s")
        assert noticed < 35, f"noticed after {noticed:.1f}s"
    finally:
        server.proc.send_signal(signal.SIGCONT)
