"""The real system parts answer as the rest of the e2e suite expects.

Docker Engine runs locally imported images, and containers joined to one
network namespace (a pod) reach each other on 127.0.0.1. A dev Consul agent
registers a service with a TTL check whose state decides whether
``health.service(..., passing=True)`` lists it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import consul
import docker
import pytest

from sidecar.drivers.docker import bridge_gateway

if TYPE_CHECKING:
    from tests.consul import ConsulAgent
    from tests.e2e.conftest import Containers

pytestmark = pytest.mark.e2e

RUN_SECONDS = 30


def test_docker_engine_reports_version_and_storage_driver(
    docker_client: docker.DockerClient,
) -> None:
    version = docker_client.version()
    info = docker_client.info()

    assert re.fullmatch(r"\d+\.\d+", version["ApiVersion"]), version
    assert info["ServerVersion"] == version["Version"]
    assert isinstance(info["Driver"], str) and info["Driver"], info.get("Driver")


def test_container_logs_what_it_echoes(containers: Containers, busybox_image: str) -> None:
    message = f"hello from flotilla {uuid.uuid4().hex}"

    container = containers.run(busybox_image, ["echo", message])

    assert container.wait(timeout=RUN_SECONDS)["StatusCode"] == 0
    assert container.logs() == f"{message}\n".encode()
    assert container.labels["dev.flotilla.test"] == "1"


def test_pod_containers_share_loopback(containers: Containers, busybox_image: str) -> None:
    body = f"pod {uuid.uuid4().hex}"
    server = containers.run(
        busybox_image,
        ["sh", "-c", f"echo '{body}' > /var/www/index.html"
                     " && exec httpd -f -p 127.0.0.1:8080 -h /var/www"],
    )  # fmt: skip
    # Retries until httpd listens; wget's errors go to stderr, the body to stdout.
    client = containers.run(
        busybox_image,
        ["sh", "-c", "for i in $(seq 100); do"
                     " wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1"],
        network_mode=f"container:{server.id}",
    )  # fmt: skip

    assert client.wait(timeout=RUN_SECONDS)["StatusCode"] == 0, client.logs()
    assert client.logs(stdout=True, stderr=False) == f"{body}\n".encode()
    server.reload()
    assert server.status == "running"


def test_the_bridge_gateway_is_found_and_reached_from_a_container(
    containers: Containers, busybox_image: str, docker_client: docker.DockerClient,
) -> None:
    """What `flotilla dev` and the e2e fixtures advertise on one machine: found
    also on an engine's first start, whose bridge names no IPAM gateway."""
    address = bridge_gateway(docker_client)
    assert address is not None and ipaddress.IPv4Address(address) in ipaddress.IPv4Network(
        next(c["Subnet"] for c in docker_client.networks.get("bridge").attrs["IPAM"]["Config"]
             if "." in c.get("Subnet", ""))), address
    body = f"host {uuid.uuid4().hex}"
    with socket.create_server((address, 0)) as listener:
        port = listener.getsockname()[1]
        caller = containers.run(busybox_image, ["sh", "-c", f"echo '{body}' | nc -w 5 {address} {port}"])

        conn, _ = listener.accept()
        with conn:
            conn.settimeout(RUN_SECONDS)
            received = conn.recv(1024)
    assert caller.wait(timeout=RUN_SECONDS)["StatusCode"] == 0, caller.logs()
    assert received == f"{body}\n".encode()


def instance_ids(
    client: consul.Consul, service: str, *, passing: bool, until: Callable[[set[str]], bool]
) -> set[str]:
    """Ids of *service*'s instances (only passing ones if *passing*), read
    with Consul blocking queries until *until* holds for them or 10 s pass."""
    deadline = time.monotonic() + 10
    index = None
    while True:
        index, entries = client.health.service(service, passing=passing, index=index, wait="2s")
        ids = {entry["Service"]["ID"] for entry in entries}
        if until(ids) or time.monotonic() > deadline:
            return ids


def test_consul_ttl_check_decides_passing(consul_agent: ConsulAgent) -> None:
    client = consul_agent.client
    name, instance = "web", f"web-{uuid.uuid4().hex[:8]}"

    def listed(ids: set[str]) -> bool:
        return instance in ids

    def unlisted(ids: set[str]) -> bool:
        return instance not in ids

    client.agent.service.register(
        name, service_id=instance, address="127.0.0.1", port=8080,
        check=consul.Check.ttl("30s"),
    )  # fmt: skip
    assert instance_ids(client, name, passing=False, until=listed) == {instance}
    # A TTL check starts critical.
    assert instance_ids(client, name, passing=True, until=lambda _: True) == set()

    client.agent.check.ttl_pass(f"service:{instance}")
    assert instance_ids(client, name, passing=True, until=listed) == {instance}

    client.agent.check.ttl_fail(f"service:{instance}")
    assert instance_ids(client, name, passing=True, until=unlisted) == set()
