"""Fixtures for the real system parts the e2e suite runs against.

- ``docker_client``: the Docker Engine from the environment (``DOCKER_HOST`` or
  the local socket).
- ``containers``: runs containers for one test, each labelled
  ``dev.flotilla.test=1``, and removes them afterwards.
- ``busybox_image``: a tiny image imported from ``/bin/busybox``
  (busybox-static) and its applet links; removed at session end.
- ``consul_binary``, ``consul_agent``: a throwaway ``consul agent -dev`` per
  test on loopback ports of its own (``tests.consul.ConsulAgent``; its
  ``restart()`` brings it back empty on the same ports).

A part that is missing skips its tests on a developer machine and fails them
under CI (env ``CI`` set), where the suite must prove the real thing works.
`make system` installs the parts and `make services-start` starts Docker.

Contract: everything is bound to loopback, and everything a fixture starts or
creates is stopped or removed by its finalizer.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

from tests.consul import ConsulAgent, find_consul, flotilla_cache

TEST_LABEL = "dev.flotilla.test"
TEST_LABELS = {TEST_LABEL: "1"}


def missing(reason: str) -> NoReturn:
    """Fails under CI, where the real part must be present; skips elsewhere."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so the e2e suite must run)", pytrace=False)
    pytest.skip(reason)


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
    path = find_consul()
    if path is None:
        missing(f"no consul on PATH or at {flotilla_cache() / 'bin' / 'consul'}; run "
                "`make consul` (or `make system` as root)")
    return path


@pytest.fixture
def consul_agent(consul_binary: Path, tmp_path: Path) -> Iterator[ConsulAgent]:
    """A started dev agent (tests/consul.py); ``restart()`` empties it."""
    agent = ConsulAgent(tmp_path / "consul", consul_binary)
    try:
        yield agent.start()
    finally:
        agent.stop()
