"""Builds an agent with the drivers this machine offers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from sidecar import envoy
from sidecar.agent import Agent, AgentConfig
from sidecar.drivers.base import Driver
from sidecar.drivers.process import ProcessDriver

log = logging.getLogger(__name__)


def docker_driver(name: str, address: str, data_dir: Path | None = None) -> Driver | None:
    """The docker driver when a Docker engine answers, else None."""
    try:
        import docker

        from sidecar.drivers.docker import DockerDriver

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "no engine here"
        log.info("no Docker engine (%s); the process driver only", error)
        return None
    driver: Driver = DockerDriver(client, name, address, data_dir=data_dir)
    return driver


def local_address(drivers: Sequence[str]) -> str:
    """Where a one-machine node should advertise its instances: the docker
    bridge's gateway when Docker may run them (the host and every container
    reach it; a port published on 127.0.0.1 is unreachable from other pods),
    else loopback."""
    if drivers and "docker" not in drivers:
        return "127.0.0.1"
    try:
        import docker

        from sidecar.drivers.docker import bridge_gateway

        found = bridge_gateway(docker.from_env(timeout=10))
        if found is not None:
            return found
        log.info("the docker bridge has no IPv4 address; advertising 127.0.0.1")
    except Exception as error:  # noqa: BLE001 - no engine or no bridge: loopback
        log.info("no docker bridge (%s); advertising 127.0.0.1", error)
    return "127.0.0.1"


def build_agent(*, server: str, name: str, address: str, labels: Mapping[str, str],
                cpu: int | None, memory: int | None, drivers: Sequence[str],
                data_dir: Path, sidecars: bool = True, join_token: str = "") -> Agent:
    data_dir.mkdir(parents=True, exist_ok=True)
    offered: dict[str, Driver] = {}
    if not drivers or "process" in drivers:
        offered["process"] = ProcessDriver(name, address, data_dir)
    if not drivers or "docker" in drivers:
        found = docker_driver(name, address, data_dir)
        if found is not None:
            offered["docker"] = found
        elif drivers:
            raise SystemExit("--driver docker: no Docker engine answers on this machine")
    binary: str | None = None
    if sidecars:
        try:
            path = envoy.find_envoy()
            log.info("sidecars: Envoy %s at %s", envoy.check_version(path), path)
        except envoy.EnvoyError as error:
            raise SystemExit(f"{error} (or run the agent with --no-sidecars)") from None
        binary = str(path)
    config = AgentConfig(server=server, name=name, address=address, data_dir=data_dir,
                         labels=dict(labels), cpu_millis=cpu or 0, memory_mib=memory or 0,
                         envoy=binary, join_token=join_token)
    return Agent(config, offered)
