"""Fixtures for the real system parts the e2e suite runs against.

- ``docker_client``: the Docker Engine from the environment (``DOCKER_HOST`` or
  the local socket).
- ``containers``: runs containers for one test, each labelled
  ``dev.flotilla.test=1``, and removes them afterwards.
- ``busybox_image``: a tiny image imported from ``/bin/busybox``
  (busybox-static) and its applet links; removed at session end.
- ``consul_binary``, ``consul_dev``, ``consul_agent``: a throwaway
  ``consul agent -dev`` per test on loopback ports of its own; ``consul_dev``
  can restart it on the same ports.

A part that is missing skips its tests on a developer machine and fails them
under CI (env ``CI`` set), where the suite must prove the real thing works.
`make system` installs the parts and `make services-start` starts Docker.

Contract: everything is bound to loopback, and everything a fixture starts or
creates is stopped or removed by its finalizer.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import consul
import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

TEST_LABEL = "dev.flotilla.test"
TEST_LABELS = {TEST_LABEL: "1"}
CONSUL_READY_SECONDS = 30.0


def missing(reason: str) -> NoReturn:
    """Fails under CI, where the real part must be present; skips elsewhere."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so the e2e suite must run)", pytrace=False)
    pytest.skip(reason)


def flotilla_cache() -> Path:
    return Path(os.environ.get("FLOTILLA_CACHE", Path.home() / ".cache" / "flotilla"))


# --- Docker -----------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        missing(
            f"Docker Engine does not answer ({exc}); as root run "
            "`make system services-start`"
        )
    yield client
    client.close()


class Containers:
    """Runs detached containers for one test and removes them all at the end.

    Every container carries the label ``dev.flotilla.test=1``.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._started: list[Container] = []

    def run(self, image: str, command: list[str], **kwargs: Any) -> Container:
        labels = {**kwargs.pop("labels", {}), **TEST_LABELS}
        container: Container = self._client.containers.run(
            image, command, detach=True, labels=labels, **kwargs
        )
        self._started.append(container)
        return container

    def remove_all(self) -> None:
        # Joined containers first: the namespace holder goes last.
        for container in reversed(self._started):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        self._started.clear()


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[Containers]:
    started = Containers(docker_client)
    yield started
    started.remove_all()


def is_static_elf(path: Path) -> bool:
    """True when the 64-bit little-endian ELF at *path* has no PT_INTERP."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != pt_interp
        for i in range(phnum)
    )


def busybox_rootfs(busybox: Path, root: Path) -> None:
    """Lays out /bin/busybox plus one symlink per applet, like ``--install -s``."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for directory in ("etc", "tmp", "var/www"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)


def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@pytest.fixture(scope="session")
def busybox_image(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The tag of a busybox image made by ``docker import``; removed at the end."""
    busybox = Path("/bin/busybox")
    if not busybox.exists() or not is_static_elf(busybox):
        missing("a static /bin/busybox is needed for test images; install busybox-static")
    root = tmp_path_factory.mktemp("busybox-rootfs")
    busybox_rootfs(busybox, root)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(root, arcname=".", filter=as_root)
    repository, tag = "flotilla-test/busybox", uuid.uuid4().hex[:12]
    docker_client.api.import_image_from_data(
        archive.getvalue(),
        repository=repository,
        tag=tag,
        changes=[f"LABEL {TEST_LABEL}=1", 'CMD ["/bin/sh"]'],
    )
    image = f"{repository}:{tag}"
    yield image
    docker_client.images.remove(image, force=True)


# --- Consul -----------------------------------------------------------------


@pytest.fixture(scope="session")
def consul_binary() -> Path:
    found = shutil.which("consul")
    path = Path(found) if found else flotilla_cache() / "bin" / "consul"
    if not os.access(path, os.X_OK):
        missing(f"no consul on PATH or at {path}; run `make consul` (or `make system` as root)")
    return path


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel hands out on 127.0.0.1, distinct from one another."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class ConsulAgent:
    """One running dev agent. ``pid`` changes when ``DevConsul`` restarts it."""

    http_addr: str
    client: consul.Consul
    pid: int


class DevConsul:
    """A ``consul agent -dev`` on loopback ports of its own.

    The ports are chosen once, so ``restart()`` brings the agent back at the
    same address (with the empty state of a fresh dev agent).
    """

    def __init__(self, binary: Path, workdir: Path) -> None:
        self._binary = binary
        self._workdir = workdir
        self._log = workdir / "consul.log"
        self._node = f"flotilla-test-{uuid.uuid4().hex[:8]}"
        self._http, self._server, self._serf_lan, self._serf_wan = free_loopback_ports(4)
        self.http_addr = f"127.0.0.1:{self._http}"
        self._process: subprocess.Popen[bytes] | None = None
        self._agent: ConsulAgent | None = None

    @property
    def agent(self) -> ConsulAgent:
        if self._agent is None:
            raise RuntimeError("the dev Consul agent is not running; call start()")
        return self._agent

    def start(self) -> ConsulAgent:
        if self._process is not None:
            raise RuntimeError(f"dev Consul already runs as pid {self._process.pid}")
        command = [
            str(self._binary), "agent", "-dev", "-node", self._node,
            "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", str(self._http), "-server-port", str(self._server),
            "-serf-lan-port", str(self._serf_lan), "-serf-wan-port", str(self._serf_wan),
            "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
        ]  # fmt: skip
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command, cwd=self._workdir, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_for_leader(time.monotonic() + CONSUL_READY_SECONDS)
        self._agent = ConsulAgent(
            http_addr=self.http_addr,
            client=consul.Consul(host="127.0.0.1", port=self._http),
            pid=self._process.pid,
        )
        return self._agent

    def stop(self) -> None:
        """Terminates the agent by its pid and waits for it (kills after 15 s)."""
        process, self._process, self._agent = self._process, None, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> ConsulAgent:
        self.stop()
        return self.start()

    def _wait_for_leader(self, deadline: float) -> None:
        url = f"http://{self.http_addr}/v1/status/leader"
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                self._fail(f"exited with status {self._process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if json.load(response):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"elected no leader within {CONSUL_READY_SECONDS:.0f} s")
            time.sleep(0.05)

    def _fail(self, what: str) -> NoReturn:
        tail = self._log.read_text(errors="replace").splitlines()[-20:]
        pytest.fail(f"dev Consul at {self.http_addr} {what}; log:\n" + "\n".join(tail))


@pytest.fixture
def consul_dev(consul_binary: Path, tmp_path: Path) -> Iterator[DevConsul]:
    """A started dev agent; tests that restart Consul use this one."""
    dev = DevConsul(consul_binary, tmp_path)
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


@pytest.fixture
def consul_agent(consul_dev: DevConsul) -> ConsulAgent:
    return consul_dev.agent
