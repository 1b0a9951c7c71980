"""`flotilla apply --wait` on a first apply, against a real server and a real
agent (process driver, real Envoy sidecars): it returns only once the
instances the change makes serve with their proxies connected and ACKed, and
the proxies of their clients have their endpoints; and it is bounded: a
Service no node fits gives up after --wait-timeout, saying why, non-zero."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, dump_endpoints, run_cli, running_cluster

WEB = Path(__file__).resolve().parents[1] / "apps" / "web.py"


def service(name: str, replicas: int, port: int, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"command": [sys.executable, str(WEB)], "port": port, "replicas": replicas,
                     "healthCheck": {"http": {"path": "/healthz"}, "interval": "500ms"},
                     "resources": {"cpu": 100, "memory": 64}, **spec}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("apply-wait")
    with running_cluster(tmp, ("n1", "127.0.0.2")) as (server, _):
        yield server, tmp


def proxies(server: ServerProcess) -> list[dict[str, Any]]:
    listed = run_cli("proxy-status", "-o", "json", server=server)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return found


def test_a_first_apply_waits_for_the_proxies_it_creates(
        cluster: tuple[ServerProcess, Path]) -> None:
    server, tmp = cluster
    manifest = tmp / "web.yaml"
    # `caller` calls `web`: its proxy must have web's endpoints when --wait returns.
    manifest.write_text("\n---\n".join(json.dumps(doc) for doc in (
        service("web", 2, 8080), service("caller", 1, 8081, upstreams=[{"name": "web"}]))))
    started = time.monotonic()
    applied = run_cli("apply", "-f", str(manifest), "--wait", "--wait-timeout", "50",
                      server=server)
    took = time.monotonic() - started
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Service default/web: 2/2 instances ready, their 2 proxies ACKed" in applied.stdout
    assert "Service default/caller: 1/1 instances ready, their 1 proxy ACKed" in applied.stdout
    assert "3 proxies ACKed the change" in applied.stdout, applied.stdout
    assert "waiting (" in applied.stderr  # progress while it waited
    print(f"apply --wait returned after {took:.1f}s:\n{applied.stdout}{applied.stderr}")

    # Right after it returned: both web proxies are there, connected, ACKed.
    web = [p for p in proxies(server) if p.get("service") == "web"]
    assert len(web) == 2, web
    for proxy in web:
        assert not proxy.get("lastNackError") and not proxy.get("pending"), proxy
        assert int(proxy.get("syncedVersion", 0)) >= int(proxy.get("viewVersion", 0)), proxy
    # ... and the caller's Envoy balances over both web instances already.
    with server.client() as client:
        caller = client.list("Instance", "default", {"flotilla.dev/service": "caller"})[0][0]
        instances = client.list("Instance", "default", {"flotilla.dev/service": "web"})[0]
        endpoints = dump_endpoints(client.proxy_config(caller), "web.default")
    assert endpoints == {(i["status"]["address"], int(i["status"]["port"]))
                         for i in instances}, endpoints

    # Applied again, nothing changes: it returns at once.
    again = run_cli("apply", "-f", str(manifest), "--wait", "--wait-timeout", "30",
                    server=server)
    assert again.returncode == 0, again.stderr
    assert "Service default/web: 2/2 instances ready" in again.stdout


def test_a_service_no_node_fits_gives_up_at_the_timeout(
        cluster: tuple[ServerProcess, Path]) -> None:
    server, tmp = cluster
    manifest = tmp / "huge.json"
    manifest.write_text(json.dumps(service("huge", 2, 8090,
                                           resources={"cpu": 200_000, "memory": 64})))
    started = time.monotonic()
    applied = run_cli("apply", "-f", str(manifest), "--wait", "--wait-timeout", "5",
                      server=server)
    took = time.monotonic() - started
    print(f"apply --wait gave up after {took:.1f}s:\n{applied.stdout}{applied.stderr}")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert 5 <= took < 30, took
    assert "Service default/huge created" in applied.stdout
    assert "Service default/huge: 0/2 instances ready within 5." in applied.stderr, \
        applied.stderr
    assert "see `flotilla get instances` and `flotilla proxy-status`" in applied.stderr
    assert applied.stderr.count(": pending: 0/1 nodes") >= 2, applied.stderr
    assert "Traceback" not in applied.stderr
