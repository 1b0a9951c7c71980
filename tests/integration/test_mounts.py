"""ConfigMaps and Secrets reach the app (process driver): a real server, a real
agent with Envoy sidecars, a gateway in front. Files under
$FLOTILLA_MOUNT_ROOT + the mount path with their modes, env from envFrom under
spec.env and the agent's own variables; a changed ConfigMap rolls the
instances with no failed request, and no Secret value shows anywhere."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.client import Client
from tests.harness import AgentProcess, ServerProcess, eventually, free_port, run_cli, running_cluster
from tests.mesh_scenarios import Load, Mesh

APP = Path(__file__).resolve().parents[1] / "apps" / "web.py"
NODE_ADDRESS = "127.0.0.2"
SECRET_VALUE = "s3cret-9f2c"


def settings(greeting: str) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            # PORT and FLOTILLA_SERVICE are the agent's: they must not win.
            "spec": {"data": {"GREETING": greeting, "MODE": "configmap", "PORT": "1",
                              "FLOTILLA_SERVICE": "spoofed"}}}


def manifests(gateway_port: int) -> list[dict[str, Any]]:
    return [
        settings("hello"),
        {"apiVersion": "flotilla.dev/v1", "kind": "Secret", "metadata": {"name": "credentials"},
         "spec": {"stringData": {"API_TOKEN": SECRET_VALUE}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "shown"},
         "spec": {
             "command": [sys.executable, str(APP)], "port": 8080, "replicas": 2,
             "resources": {"cpu": 100, "memory": 64},
             "env": {"MODE": "env", "SHOW_ENV": "GREETING,MODE,API_TOKEN,PORT,FLOTILLA_SERVICE"},
             "envFrom": [{"configMap": "settings"}, {"secret": "credentials"}],
             "mounts": [{"configMap": "settings", "path": "/etc/settings"},
                        {"secret": "credentials", "path": "/run/secrets/app"}],
             "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms"}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Gateway", "metadata": {"name": "edge"},
         "spec": {"listeners": [{"name": "web", "port": gateway_port,
                                 "routes": [{"pathPrefix": "/", "service": "shown"}]}]}},
    ]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[ServerProcess, AgentProcess]]:
    with running_cluster(tmp_path, ("n1", NODE_ADDRESS)) as (server, (agent,)):
        yield server, agent


def apply(server: ServerProcess, path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump_all(docs))
    done = run_cli("apply", "-f", str(path), server=server)
    assert done.returncode == 0, done.stderr


def serving(client: Client, count: int) -> set[str] | None:
    found = client.list("Instance", "default", {"flotilla.dev/service": "shown"})[0]
    good = {i["metadata"]["name"] for i in found
            if i.get("status", {}).get("state") == "healthy" and not i["spec"].get("draining")}
    return good if len(good) == count == len(found) else None


def replaced(client: Client, old: set[str]) -> set[str] | None:
    now = serving(client, 2)
    return now if now and now.isdisjoint(old) else None


def greeting(body: dict[str, Any]) -> str:
    return str(body["env"]["GREETING"])


def shown(mesh: Mesh) -> dict[str, Any] | None:
    try:
        return mesh.call("/shown")
    except (OSError, ValueError):
        return None


def test_config_map_and_secret_reach_the_app_and_a_change_rolls_it(
        node: tuple[ServerProcess, AgentProcess], tmp_path: Path) -> None:
    server, agent = node
    port = free_port(NODE_ADDRESS)
    mesh = Mesh(server, [agent], f"{NODE_ADDRESS}:{port}")
    apply(server, tmp_path / "shown.yaml", manifests(port))
    with server.client() as client:
        first = eventually(lambda: serving(client, 2), 60, "2 healthy instances")
        body = eventually(lambda: shown(mesh), 30, "an answer through the gateway")

        env = body["env"]
        assert (env["GREETING"], env["API_TOKEN"]) == ("hello", SECRET_VALUE)
        assert env["MODE"] == "env"  # spec.env wins over envFrom
        assert env["FLOTILLA_SERVICE"] == "shown" and env["PORT"] not in ("1", None)
        files = body["files"]
        assert files["/etc/settings/GREETING"] == {
            "content": "hello", "mode": "0o444", "uid": os.getuid()}
        assert files["/run/secrets/app/API_TOKEN"] == {
            "content": SECRET_VALUE, "mode": "0o400", "uid": os.getuid()}
        assert set(files) == {f"/etc/settings/{k}" for k in settings("")["spec"]["data"]} | {
            "/run/secrets/app/API_TOKEN"}
        generation = client.get("Service", "shown", "default")["metadata"]["generation"]

        with Load(mesh, rate=40, path="/shown", seen=greeting) as load:
            eventually(lambda: load.backends["hello"] >= 20, 30, "steady answers")
            apply(server, tmp_path / "settings.yaml", [settings("hello again")])
            rolled = eventually(lambda: replaced(client, first), 90,
                                "2 new healthy instances, the old ones gone")
            eventually(lambda: load.backends["hello again"] >= 20, 30, "the new greeting")
        assert load.failures == [], load.failures[:5]
        assert mesh.call("/shown")["files"]["/etc/settings/GREETING"]["content"] == "hello again"
        # The Service itself did not change: its instances did.
        assert client.get("Service", "shown", "default")["metadata"]["generation"] == generation

    # The Secret's value went to the app, and nowhere else an operator looks.
    for args in (("get", "instances", "-o", "yaml"), ("get", "secret", "credentials", "-o",
                                                      "yaml"),
                 ("describe", "service", "shown"), ("get", "all", "-o", "json")):
        done = run_cli(*args, server=server)
        assert done.returncode == 0, done.stderr
        assert SECRET_VALUE not in done.stdout, args
    assert SECRET_VALUE not in server.log()
    assert SECRET_VALUE not in agent.log()
    # Stopped instances leave no files behind.
    left = {p.parent.name for p in (agent.data_dir / "instances").glob("*/mounts")}
    assert left <= rolled


def test_a_node_gets_assignments_larger_than_grpcs_default_message_limit(
        node: tuple[ServerProcess, AgentProcess], tmp_path: Path) -> None:
    server, agent = node
    big = "x" * 1_000_000  # five instances' worth is past gRPC's default 4 MiB
    apply(server, tmp_path / "big.yaml", [
        {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap", "metadata": {"name": "big"},
         "spec": {"data": {"blob": big}}},
        {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "big"},
         "spec": {"command": [sys.executable, "-c", "import time; time.sleep(600)"],
                  "replicas": 5, "resources": {"cpu": 100, "memory": 32},
                  "mounts": [{"configMap": "big", "path": "/etc/big"}]}}])

    def written() -> list[Path] | None:
        files = list((agent.data_dir / "instances").glob("big-*/mounts/etc/big/blob"))
        return files if len(files) == 5 else None

    for path in eventually(written, 60, "five instances with their file"):
        assert path.stat().st_size == len(big)
    assert "RESOURCE_EXHAUSTED" not in agent.log()


def test_env_from_data_that_cannot_be_variables_is_refused_at_apply(
        server: ServerProcess, tmp_path: Path) -> None:
    files = {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap", "metadata": {"name": "files"},
             "spec": {"data": {"app.conf": "a = 1\n"}}}
    service = {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"command": ["true"], "replicas": 0,
                        "envFrom": [{"configMap": "files"}]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([files, service]))
    refused = run_cli("apply", "-f", str(path), server=server)
    assert refused.returncode == 1
    assert "spec.envFrom[0].configMap" in refused.stderr
    assert "'app.conf'" in refused.stderr and "spec.mounts" in refused.stderr
    assert "created" not in refused.stdout  # nothing half-applied

    # Mounted, the same ConfigMap is fine; taken as env, its keys must stay names.
    service["spec"] = {"command": ["true"], "replicas": 0,
                       "mounts": [{"configMap": "files", "path": "/etc/app"}]}
    env = {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap", "metadata": {"name": "env"},
           "spec": {"data": {"LEVEL": "debug"}}}
    user = {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "user"},
            "spec": {"command": ["true"], "replicas": 0, "envFrom": [{"configMap": "env"}]}}
    apply(server, path, [files, service, env, user])
    env["spec"] = {"data": {"LEVEL": "debug", "log.format": "json"}}
    path.write_text(yaml.safe_dump(env))
    refused = run_cli("apply", "-f", str(path), server=server)
    assert refused.returncode == 1
    assert "spec.data" in refused.stderr and "Service default/user takes its keys" in \
        refused.stderr
