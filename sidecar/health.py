"""Health probes the agent runs against an instance's published address.

``probe(check, address, port)`` returns ``(ok, detail)``; it never raises for
a failing app. ``check`` is a Service spec's ``healthCheck`` mapping.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.model.durations import parse_duration


def probe(check: Mapping[str, Any], address: str, port: int) -> tuple[bool, str]:
    timeout = parse_duration(str(check.get("timeout", "2s")))
    try:
        if "http" in check:
            return _http(check["http"], address, port, timeout)
        if "tcp" in check:
            target = check["tcp"].get("port") or port
            with socket.create_connection((address, target), timeout=timeout):
                return True, f"tcp {address}:{target} accepts connections"
        if "grpc" in check:
            return _grpc(check["grpc"], address, port, timeout)
    except (OSError, http.client.HTTPException) as error:
        return False, f"{type(error).__name__}: {error}"
    return True, "no probe configured"


def _http(spec: Mapping[str, Any], address: str, port: int, timeout: float) -> tuple[bool, str]:
    target, path = spec.get("port") or port, spec.get("path", "/")
    conn = http.client.HTTPConnection(address, target, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "flotilla-health"})
        status = conn.getresponse().status
    finally:
        conn.close()
    ok = 200 <= status < 400
    return ok, f"GET {path} -> {status}"


def _grpc(spec: Mapping[str, Any], address: str, port: int, timeout: float) -> tuple[bool, str]:
    target = f"{address}:{spec.get('port') or port}"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=spec.get("service", "")),
                               timeout=timeout)
        except grpc.RpcError as error:
            return False, f"grpc health {target}: {error.code().name}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"grpc health {name}"
