"""Finding the docker bridge's address, also where the engine's answer lacks it."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.drivers import docker as docker_driver


class FakeNetworks:
    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs

    def get(self, name: str) -> FakeNetworks:
        assert name == "bridge"
        return self


class FakeClient:
    def __init__(self, attrs: dict[str, Any]) -> None:
        self.networks = FakeNetworks(attrs)


FIRST_START = {"IPAM": {"Config": [{"Subnet": "172.18.0.0/16"}]},
               "Options": {"com.docker.network.bridge.name": "flotilla-test0"}}
RESTARTED = {"IPAM": {"Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]},
             "Options": {}}
IPV6_ONLY = {"IPAM": {"Config": [{"Subnet": "fd00::/64", "Gateway": "fd00::1"}]}}


@pytest.mark.parametrize(("interface", "attrs", "expected"), [
    ("172.30.0.1", FIRST_START, "172.30.0.1"),
    (None, FIRST_START, "172.18.0.1"),
    (None, RESTARTED, "172.18.0.1"),
    (None, IPV6_ONLY, None),
], ids=["interface-first", "first-start-subnet", "ipam-gateway", "no-ipv4"])
def test_bridge_gateway(monkeypatch: pytest.MonkeyPatch, interface: str | None,
                        attrs: dict[str, Any], expected: str | None) -> None:
    asked: list[str] = []

    def address(name: str) -> str | None:
        asked.append(name)
        return interface

    monkeypatch.setattr(docker_driver, "interface_address", address)
    assert docker_driver.bridge_gateway(FakeClient(attrs)) == expected  # type: ignore[arg-type]
    assert asked == [attrs.get("Options", {}).get(docker_driver.BRIDGE_NAME_OPTION, "docker0")]


def test_interface_address_of_loopback_and_of_no_interface() -> None:
    assert docker_driver.interface_address("lo") == "127.0.0.1"
    assert docker_driver.interface_address("no-such-if0") is None
