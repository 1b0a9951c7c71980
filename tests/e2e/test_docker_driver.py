"""The docker driver against a real Docker Engine and the images `make images` builds.

Each instance is a pause + app pod: the app answers on the node's advertised
address through the port the pause publishes, both containers carry the
ownership labels, a second driver for the same node adopts the pod (and one for
another node does not see it), and the app container's state is the
instance's state.

Every test runs its pods under a node name of its own and removes every
container labelled with it afterwards. The images are built once per session
by ``deploy/images/build.sh`` (a no-op when they are up to date) and kept, as
``make images`` keeps them.
"""

from __future__ import annotations

import http.client
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import grpc
import pytest
from docker.models.containers import Container
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.drivers.base import DriverError, Running, Workload, WorkloadState
from sidecar.drivers.docker import DockerDriver
from tests.e2e.conftest import TEST_LABELS, missing

# A first build runs debootstrap (about a minute); later ones take a second.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "images" / "build.sh"
PAUSE_IMAGE = "flotilla/pause:dev"
HTTP_IMAGE = "flotilla/example-http:dev"
GRPC_IMAGE = "flotilla/example-grpc:dev"
#: The advertised address pods publish on: the host reaches it.
ADDRESS = "127.0.0.1"
READY_SECONDS = 20.0
MIB = 1024 * 1024
FAIL_FILE = "/tmp/unhealthy"

T = TypeVar("T")
#: Straight to the published port, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- helpers ------------------------------------------------------------------


def eventually(check: Callable[[], T | None], what: str, timeout: float = READY_SECONDS) -> T:
    """Polls *check* until it returns something truthy; fails after *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s", pytrace=False)
        time.sleep(0.05)


def http_get(running: Running, path: str) -> tuple[int, bytes] | None:
    """Status and body from the instance's published port; None until it answers."""
    url = f"http://{running.address}:{running.port}{path}"
    try:
        with DIRECT.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return None


def wait_for_status(running: Running, path: str, status: int) -> bytes:
    def check() -> bytes | None:
        answer = http_get(running, path)
        return answer[1] or b"-" if answer and answer[0] == status else None

    return eventually(check, f"GET {path} on {running.address}:{running.port} -> {status}")


def wait_for_state(driver: DockerDriver, instance_id: str, state: WorkloadState) -> Running:
    def check() -> Running | None:
        running = driver.inspect(instance_id)
        return running if running and running.state is state else None

    return eventually(check, f"instance {instance_id} {state.value}")


def node_containers(client: docker.DockerClient, node: str) -> list[Container]:
    found: list[Container] = client.containers.list(
        all=True, filters={"label": f"dev.flotilla.node={node}"}
    )
    return found


def remove_node_containers(client: docker.DockerClient, node: str) -> None:
    # Joined containers first: the pause holds their namespace.
    for container in sorted(
        node_containers(client, node), key=lambda c: c.labels.get("dev.flotilla.role") == "pause"
    ):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http_workload(instance_id: str, **overrides: Any) -> Workload:
    workload = Workload(
        instance_id=instance_id, namespace="shop", service="web", revision=7,
        image=HTTP_IMAGE, port=8080, env={"HEALTH_FAIL_FILE": FAIL_FILE},
        cpu_millis=250, memory_mib=64,
    )  # fmt: skip
    return replace(workload, **overrides)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def flotilla_images(docker_client: docker.DockerClient) -> None:
    """Runs deploy/images/build.sh once; it rebuilds only what changed."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        missing(f"{BUILD_SCRIPT.relative_to(ROOT)} failed (exit {result.returncode}):\n{tail}")


@dataclass
class Node:
    """A node name of the test's own, and a driver for it."""

    name: str
    driver: DockerDriver


@pytest.fixture
def node(docker_client: docker.DockerClient, flotilla_images: None) -> Iterator[Node]:
    name = new_id("e2e-node")
    yield Node(name, DockerDriver(docker_client, name, ADDRESS))
    remove_node_containers(docker_client, name)


@dataclass
class Pod:
    """One instance of the example HTTP app, shared by read-only tests."""

    node: str
    driver: DockerDriver
    workload: Workload
    running: Running
    app: Container
    pause: Container


@pytest.fixture(scope="module")
def web(docker_client: docker.DockerClient, flotilla_images: None) -> Iterator[Pod]:
    node = new_id("e2e-web")
    driver = DockerDriver(docker_client, node, ADDRESS)
    workload = http_workload(new_id("web"))
    try:
        running = driver.start(workload)
        pod = Pod(
            node, driver, workload, running,
            app=docker_client.containers.get(f"flotilla-{workload.instance_id}-app"),
            pause=docker_client.containers.get(f"flotilla-{workload.instance_id}-pause"),
        )  # fmt: skip
        wait_for_status(running, "/healthz", 200)
        yield pod
    finally:
        remove_node_containers(docker_client, node)


@pytest.fixture(scope="module")
def entrypoint_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """busybox with ENTRYPOINT ["/bin/echo", "entry"] and CMD ["default-cmd"]."""
    container = docker_client.containers.create(busybox_image, labels=TEST_LABELS)
    tag = uuid.uuid4().hex[:12]
    try:
        container.commit(
            repository="flotilla-test/entrypoint", tag=tag,
            changes=['ENTRYPOINT ["/bin/echo", "entry"]', 'CMD ["default-cmd"]'],
        )  # fmt: skip
    finally:
        container.remove(force=True)
    yield f"flotilla-test/entrypoint:{tag}"
    docker_client.images.remove(f"flotilla-test/entrypoint:{tag}", force=True)


# --- a running pod --------------------------------------------------------------


def test_app_answers_on_the_published_address(web: Pod) -> None:
    running = web.running

    assert running.state is WorkloadState.RUNNING
    assert (running.address, running.exit_code) == (ADDRESS, None)
    assert isinstance(running.port, int) and running.port > 0
    assert running.handle == web.app.id
    assert abs(running.started_at - time.time()) < 300
    assert wait_for_status(running, "/healthz", 200) == b"ok"
    echoed = json.loads(wait_for_status(running, "/hello?x=1", 200))
    assert echoed["instance"] == web.workload.instance_id
    assert (echoed["service"], echoed["namespace"], echoed["path"]) == ("web", "shop", "/hello?x=1")


def test_pause_publishes_the_app_port_on_the_advertised_address(web: Pod) -> None:
    web.pause.reload()

    bindings = web.pause.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert [(b["HostIp"], int(b["HostPort"])) for b in bindings] == [(ADDRESS, web.running.port)]
    assert web.app.attrs["HostConfig"]["PortBindings"] in (None, {})


def test_health_fails_while_the_fail_file_exists(web: Pod) -> None:
    try:
        assert web.app.exec_run(["touch", FAIL_FILE]).exit_code == 0
        assert wait_for_status(web.running, "/healthz", 500) == b"unhealthy"
    finally:
        web.app.exec_run(["rm", "-f", FAIL_FILE])
    assert wait_for_status(web.running, "/healthz", 200) == b"ok"


def test_containers_are_named_and_labelled_for_ownership(web: Pod) -> None:
    instance = web.workload.instance_id
    common = {
        "dev.flotilla.node": web.node,
        "dev.flotilla.instance": instance,
        "dev.flotilla.service": "web",
        "dev.flotilla.namespace": "shop",
        "dev.flotilla.revision": "7",
    }

    assert web.app.name == f"flotilla-{instance}-app"
    assert web.pause.name == f"flotilla-{instance}-pause"
    assert web.app.labels.items() >= {**common, "dev.flotilla.role": "app"}.items()
    assert web.pause.labels.items() >= {**common, "dev.flotilla.role": "pause"}.items()
    assert web.pause.image.tags == [PAUSE_IMAGE]


def test_app_and_pause_share_one_network_namespace(web: Pod) -> None:
    assert web.app.attrs["HostConfig"]["NetworkMode"] == f"container:{web.pause.id}"

    # From inside the pause, the app listens on the pod's own loopback.
    result = web.pause.exec_run(["wget", "-qO-", "http://127.0.0.1:8080/healthz"])

    assert (result.exit_code, result.output) == (0, b"ok")


def test_cpu_and_memory_limits_are_set_on_the_app(web: Pod) -> None:
    host = web.app.attrs["HostConfig"]

    assert host["NanoCpus"] == 250 * 1_000_000
    assert host["Memory"] == 64 * MIB
    assert host["MemorySwap"] == 64 * MIB
    assert host["Init"] is True


def test_app_environment_names_the_instance(web: Pod) -> None:
    env = dict(item.split("=", 1) for item in web.app.attrs["Config"]["Env"])

    assert env.items() >= {
        "FLOTILLA_INSTANCE_ID": web.workload.instance_id,
        "FLOTILLA_SERVICE": "web",
        "FLOTILLA_NAMESPACE": "shop",
        "PORT": "8080",
        "HEALTH_FAIL_FILE": FAIL_FILE,
    }.items()


def test_a_new_driver_for_the_same_node_adopts_the_pod(
    web: Pod, docker_client: docker.DockerClient
) -> None:
    restarted = DockerDriver(docker_client, web.node, ADDRESS)
    other = DockerDriver(docker_client, new_id("e2e-other"), ADDRESS)

    assert restarted.list() == [web.running]
    assert restarted.inspect(web.workload.instance_id) == web.running
    assert other.list() == []
    assert other.inspect(web.workload.instance_id) is None
    other.stop(web.workload.instance_id)  # not its pod: nothing happens
    assert web.driver.inspect(web.workload.instance_id) == web.running


def test_logs_hold_the_app_output(web: Pod) -> None:
    wait_for_status(web.running, "/logged", 200)
    instance = web.workload.instance_id

    logs = b"".join(web.driver.logs(instance))
    last = b"".join(web.driver.logs(instance, tail=1))

    assert f"http_echo: instance {instance} listening on 0.0.0.0:8080".encode() in logs
    assert b"GET /logged" in logs
    assert last.count(b"\n") == 1 and logs.endswith(last)


# --- lifecycle ------------------------------------------------------------------


def test_followed_logs_stream_new_lines_until_the_instance_stops(node: Node) -> None:
    running = node.driver.start(http_workload(new_id("follow")))
    wait_for_status(running, "/healthz", 200)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def follow() -> None:
        for chunk in node.driver.logs(running.instance_id, tail=0, follow=True):
            lines.put(chunk)
        lines.put(None)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    seen = b""
    deadline = time.monotonic() + READY_SECONDS
    while b"GET /followed" not in seen and time.monotonic() < deadline:
        wait_for_status(running, "/followed", 200)
        try:
            seen += lines.get(timeout=0.5) or b""
        except queue.Empty:
            pass
    node.driver.stop(running.instance_id, timeout=5)
    reader.join(timeout=READY_SECONDS)

    assert b"GET /followed" in seen
    assert not reader.is_alive(), "the followed log stream did not end when the instance stopped"


def test_killed_app_is_reported_exited_with_its_code(
    node: Node, docker_client: docker.DockerClient
) -> None:
    running = node.driver.start(http_workload(new_id("kill")))

    docker_client.containers.get(f"flotilla-{running.instance_id}-app").kill()
    exited = wait_for_state(node.driver, running.instance_id, WorkloadState.EXITED)

    assert exited.exit_code == 137  # 128 + SIGKILL
    assert node.driver.list() == [exited]


def test_instance_without_its_pause_is_exited(
    node: Node, docker_client: docker.DockerClient
) -> None:
    running = node.driver.start(http_workload(new_id("nopause")))

    docker_client.containers.get(f"flotilla-{running.instance_id}-pause").kill()
    exited = wait_for_state(node.driver, running.instance_id, WorkloadState.EXITED)

    # The app still runs, unreachable: no exit code, and stop clears it all.
    assert (exited.exit_code, exited.port) == (None, None)
    node.driver.stop(running.instance_id, timeout=5)
    assert node_containers(docker_client, node.name) == []


def test_stop_removes_both_containers_promptly_and_is_idempotent(
    node: Node, docker_client: docker.DockerClient
) -> None:
    running = node.driver.start(http_workload(new_id("stop")))
    assert len(node_containers(docker_client, node.name)) == 2

    # At once, while the app may still be starting up: the app runs under an
    # init, so SIGTERM ends it and the pause before the 10 s kill timeout.
    started = time.monotonic()
    node.driver.stop(running.instance_id)
    elapsed = time.monotonic() - started

    assert elapsed < 5, f"stop took {elapsed:.1f} s"
    assert node_containers(docker_client, node.name) == []
    assert node.driver.inspect(running.instance_id) is None
    node.driver.stop(running.instance_id)
    node.driver.stop(new_id("never-started"))


def test_starting_a_running_instance_again_fails_and_leaves_it_alone(node: Node) -> None:
    workload = http_workload(new_id("twice"))
    running = node.driver.start(workload)

    with pytest.raises(DriverError, match="already exists; stop the instance first"):
        node.driver.start(workload)

    assert node.driver.inspect(workload.instance_id) == running
    assert wait_for_status(running, "/healthz", 200) == b"ok"


@pytest.mark.parametrize(
    ("command", "args", "printed"),
    [
        (None, (), b"entry default-cmd\n"),
        (None, ("a", "b"), b"entry a b\n"),
        (("/bin/echo", "cmd"), (), b"cmd\n"),
        (("/bin/echo", "cmd"), ("c",), b"cmd c\n"),
    ],
    ids=["image-defaults", "args-replace-cmd", "command-drops-cmd", "command-and-args"],
)
def test_command_and_args_override_like_kubernetes(
    node: Node,
    entrypoint_image: str,
    command: tuple[str, ...] | None,
    args: tuple[str, ...],
    printed: bytes,
) -> None:
    workload = Workload(
        instance_id=new_id("cmd"), namespace="shop", service="job", revision=1,
        image=entrypoint_image, command=command, args=args, port=None,
    )  # fmt: skip

    started = node.driver.start(workload)
    exited = wait_for_state(node.driver, workload.instance_id, WorkloadState.EXITED)

    assert started.port is None
    assert exited.exit_code == 0
    assert b"".join(node.driver.logs(workload.instance_id)) == printed


def test_grpc_example_serves_health_and_echo(node: Node) -> None:
    workload = Workload(
        instance_id=new_id("grpc"), namespace="shop", service="echo", revision=1,
        image=GRPC_IMAGE, port=9090, protocol="grpc",
    )  # fmt: skip
    running = node.driver.start(workload)

    target = f"{running.address}:{running.port}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        eventually(serving, "grpc health SERVING")
        echo = channel.unary_unary("/flotilla.examples.Echo/Echo")(b"hi", timeout=5)

    assert echo == workload.instance_id.encode()


# --- errors -----------------------------------------------------------------------


def test_missing_image_is_a_driver_error_with_the_hint(
    node: Node, docker_client: docker.DockerClient
) -> None:
    image = f"flotilla-test/missing:{uuid.uuid4().hex[:12]}"

    with pytest.raises(DriverError, match=f"image {image} not found locally; build it with `make images`"):
        node.driver.start(http_workload(new_id("noimage"), image=image))

    no_pause = DockerDriver(docker_client, node.name, ADDRESS, pause_image=image)
    with pytest.raises(DriverError, match=f"image {image} not found locally"):
        no_pause.start(http_workload(new_id("nopause")))
    assert node_containers(docker_client, node.name) == []


def test_unreachable_engine_is_a_driver_error(tmp_path: Path) -> None:
    # An explicit API version: "auto" would ask the (absent) engine already.
    client = docker.DockerClient(
        base_url=f"unix://{tmp_path}/docker.sock", version="1.41", timeout=5
    )
    driver = DockerDriver(client, "nowhere", ADDRESS)

    with pytest.raises(DriverError, match=r"Docker Engine at unix://.*/docker.sock is unreachable"):
        driver.list()
    with pytest.raises(DriverError, match="is unreachable"):
        driver.start(http_workload("i-1"))
