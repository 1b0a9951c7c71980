"""ConfigMaps and Secrets in docker pods: the files inside the app container
at the mount path (read-only, 0444 / 0400, owned by the image's user) and the
env vars set, through the driver itself and through a real server and agent
(where a changed ConfigMap starts a new container that sees the new value).

Each test's nodes have names of their own; teardown removes every container
labelled with them.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from sidecar.drivers.base import MountedFiles, Workload, WorkloadState
from sidecar.drivers.docker import DockerDriver, container_name
from tests.e2e.conftest import TEST_LABELS
from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    ADDRESS,
    HTTP_IMAGE,
    flotilla_images,
    remove_node_containers,
)
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SECRET_VALUE = "s3cret-7d1e"
#: Run in the app container: what it sees of its mounts and env, as JSON.
SHOW = (
    "import json, os, stat, sys\n"
    "files = {}\n"
    "for top in sys.argv[1:]:\n"
    "    for name in sorted(os.listdir(top)):\n"
    "        path = os.path.join(top, name)\n"
    "        info = os.stat(path)\n"
    "        files[path] = [open(path).read(), oct(stat.S_IMODE(info.st_mode)), info.st_uid]\n"
    "try:\n"
    "    open(os.path.join(sys.argv[1], 'new'), 'w')\n"
    "    read_only = False\n"
    "except OSError:\n"
    "    read_only = True\n"
    "print(json.dumps({'files': files, 'env': dict(os.environ), 'readOnly': read_only}))\n"
)
#: The same for busybox (no python): "mode uid gid path content" per file, then
#: whether the directory is writable.
SHOW_SH = ('for f in "$1"/*; do echo "$(stat -c "%a %u %g" "$f") $f $(cat "$f")"; done; '
           'touch "$1/new" 2>/dev/null && echo writable || echo read-only')


def show(docker_client: docker.DockerClient, instance: str, *paths: str) -> dict[str, Any]:
    app = docker_client.containers.get(container_name(instance, "app"))
    code, output = app.exec_run(["python3", "-c", SHOW, *paths])
    assert code == 0, output.decode(errors="replace")
    seen: dict[str, Any] = json.loads(output)
    return seen


MOUNTS = [MountedFiles("/etc/settings", {"GREETING": b"hello", "app.conf": b"a = 1\n"}, 0o444),
          MountedFiles("/run/secrets/app", {"API_TOKEN": SECRET_VALUE.encode()}, 0o400)]


@pytest.fixture
def driver(docker_client: docker.DockerClient, flotilla_images: None,  # noqa: F811
           tmp_path: Path) -> Iterator[DockerDriver]:
    node = f"e2e-mounts-{uuid.uuid4().hex[:8]}"
    try:
        yield DockerDriver(docker_client, node, ADDRESS, data_dir=tmp_path / "agent")
    finally:
        remove_node_containers(docker_client, node)


def workload(image: str = HTTP_IMAGE, **fields: Any) -> Workload:
    return Workload(instance_id=f"m-{uuid.uuid4().hex[:10]}", namespace="default",
                    service="shown", revision=1, image=image,
                    env={"GREETING": "from-env-from", "PORT": "1", "FLOTILLA_SERVICE": "spoofed",
                         "API_TOKEN": SECRET_VALUE},
                    cpu_millis=250, memory_mib=64, mounts=MOUNTS, **fields)


def test_the_files_are_in_the_app_container_read_only_with_their_modes(
        driver: DockerDriver, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    wanted = workload(port=8080)
    running = driver.start(wanted)
    assert running.state is WorkloadState.RUNNING
    seen = show(docker_client, wanted.instance_id, "/etc/settings", "/run/secrets/app")

    assert seen["files"] == {
        "/etc/settings/GREETING": ["hello", "0o444", 0],
        "/etc/settings/app.conf": ["a = 1\n", "0o444", 0],
        "/run/secrets/app/API_TOKEN": [SECRET_VALUE, "0o400", 0],
    }
    assert seen["readOnly"]
    env = seen["env"]
    assert (env["GREETING"], env["API_TOKEN"], env["FLOTILLA_MOUNT_ROOT"]) == (
        "from-env-from", SECRET_VALUE, "")
    assert (env["PORT"], env["FLOTILLA_SERVICE"]) == ("8080", "shown")  # the driver's win
    # Bound read-only into the app container alone.
    app = docker_client.containers.get(container_name(wanted.instance_id, "app"))
    assert sorted((m["Destination"], m["RW"]) for m in app.attrs["Mounts"]) == [
        ("/etc/settings", False), ("/run/secrets/app", False)]
    pause = docker_client.containers.get(container_name(wanted.instance_id, "pause"))
    assert pause.attrs["Mounts"] == []

    mounts = tmp_path / "agent" / "mounts"
    assert (mounts / wanted.instance_id).is_dir()
    driver.stop(wanted.instance_id, timeout=2)
    assert not (mounts / wanted.instance_id).exists()


@pytest.fixture
def user_image(docker_client: docker.DockerClient, busybox_image: str,
               request: pytest.FixtureRequest) -> Iterator[str]:
    """busybox running as USER ``request.param``, with an /etc/passwd and
    /etc/group that name ``app`` (uid 1234, gid 1235)."""
    files = {"passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:1235::/home/app:/bin/sh\n",
             "group": b"root:x:0:\napp:x:1235:\n"}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    container = docker_client.containers.create(busybox_image, labels=TEST_LABELS)
    tag = uuid.uuid4().hex[:12]
    try:
        docker_client.api.put_archive(container.id, "/etc", archive.getvalue())
        container.commit(repository="flotilla-test/user", tag=tag,
                         changes=[f"USER {request.param}"])
    finally:
        container.remove(force=True)
    yield f"flotilla-test/user:{tag}"
    docker_client.images.remove(f"flotilla-test/user:{tag}", force=True)


@pytest.mark.parametrize("user_image", ["app", "1234", "1234:1235", "app:app"], indirect=True,
                         ids=["name", "uid", "uid-gid", "name-group"])
def test_the_files_belong_to_the_user_the_image_runs_as(
        driver: DockerDriver, docker_client: docker.DockerClient, user_image: str) -> None:
    wanted = workload(user_image, command=["sleep", "3600"])
    driver.start(wanted)
    app = docker_client.containers.get(container_name(wanted.instance_id, "app"))
    code, output = app.exec_run(["sh", "-c", SHOW_SH, "sh", "/run/secrets/app"])
    assert code == 0, output
    assert output.decode().splitlines() == [
        f"400 1234 1235 /run/secrets/app/API_TOKEN {SECRET_VALUE}", "read-only"]
    code, output = app.exec_run(["sh", "-c", SHOW_SH, "sh", "/etc/settings"])
    assert output.decode().splitlines() == [
        "444 1234 1235 /etc/settings/GREETING hello",
        "444 1234 1235 /etc/settings/app.conf a = 1",
        "read-only"]
    assert app.exec_run(["id", "-u"]).output.decode().strip() == "1234"


# --- through a real server and agent ----------------------------------------------------


def settings(greeting: str) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "spec": {"data": {"GREETING": greeting, "MODE": "configmap"}}}


MANIFESTS = [
    settings("hello"),
    {"apiVersion": "flotilla.dev/v1", "kind": "Secret", "metadata": {"name": "credentials"},
     "spec": {"stringData": {"API_TOKEN": SECRET_VALUE}}},
    {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "shown"},
     "spec": {"image": HTTP_IMAGE, "port": 8080, "replicas": 1,
              "resources": {"cpu": 100, "memory": 64}, "env": {"MODE": "env"},
              "envFrom": [{"configMap": "settings"}, {"secret": "credentials"}],
              "mounts": [{"configMap": "settings", "path": "/etc/settings"},
                         {"secret": "credentials", "path": "/run/secrets/app"}],
              "healthCheck": {"http": {"path": "/healthz"}, "interval": "250ms"}}},
]


@pytest.fixture
def agent(tmp_path: Path, docker_client: docker.DockerClient,
          flotilla_images: None) -> Iterator[tuple[ServerProcess, AgentProcess]]:  # noqa: F811
    node = f"e2e-mounts-{uuid.uuid4().hex[:8]}"
    server = ServerProcess(tmp_path / "server").start()
    agent: AgentProcess | None = None
    try:
        agent = AgentProcess(server, node, "127.0.0.2", tmp_path / node,
                             drivers=("docker",)).start()
        with server.client() as client:
            eventually(lambda: client.list("Node", "")[0], 30, "the node to join")
        yield server, agent
    finally:
        if agent is not None:
            agent.kill(signal.SIGTERM)  # the agent leaves its containers running...
        remove_node_containers(docker_client, node)  # ...so they go here
        server.stop()


def healthy_instance(server: ServerProcess, other_than: str = "") -> str | None:
    """The Service's one instance, once it is the only one and healthy."""
    with server.client() as client:
        found = client.list("Instance", "default", {"flotilla.dev/service": "shown"})[0]
    good = [i["metadata"]["name"] for i in found if i.get("status", {}).get("state") == "healthy"]
    return good[0] if len(good) == len(found) == 1 and good[0] != other_than else None


def test_a_service_gets_its_files_and_env_in_docker_and_a_change_rolls_it(
        agent: tuple[ServerProcess, AgentProcess], docker_client: docker.DockerClient,
        tmp_path: Path) -> None:
    server, node = agent
    path = tmp_path / "shown.yaml"
    path.write_text(yaml.safe_dump_all(MANIFESTS))
    applied = run_cli("apply", "-f", str(path), server=server)
    assert applied.returncode == 0, applied.stderr
    first = eventually(lambda: healthy_instance(server), 90, "a healthy instance")

    seen = show(docker_client, first, "/etc/settings", "/run/secrets/app")
    assert seen["files"] == {
        "/etc/settings/GREETING": ["hello", "0o444", 0],
        "/etc/settings/MODE": ["configmap", "0o444", 0],
        "/run/secrets/app/API_TOKEN": [SECRET_VALUE, "0o400", 0],
    }
    env = seen["env"]
    assert (env["GREETING"], env["MODE"], env["API_TOKEN"]) == ("hello", "env", SECRET_VALUE)
    assert (env["PORT"], env["FLOTILLA_SERVICE"]) == ("8080", "shown")

    path.write_text(yaml.safe_dump(settings("hello again")))
    applied = run_cli("apply", "-f", str(path), server=server)
    assert applied.returncode == 0, applied.stderr
    second = eventually(lambda: healthy_instance(server, other_than=first), 90,
                        "a new healthy instance, the old one gone")
    seen = show(docker_client, second, "/etc/settings")
    assert seen["files"]["/etc/settings/GREETING"] == ["hello again", "0o444", 0]
    assert seen["env"]["GREETING"] == "hello again"
    eventually(lambda: not (node.data_dir / "mounts" / first).exists(), 30,
               "the old instance's files removed")
    assert SECRET_VALUE not in server.log() and SECRET_VALUE not in node.log()
