"""Typed specs: every kind's spec decodes into its model, the system kinds'
too, stored JSON of older versions included; an instance's workload is its
Service's template, field for field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.controllers.replicas import template_of
from controlplane.convert import workload_to_pb
from controlplane.manifests import to_resource
from controlplane.model import KINDS, SYSTEM_KINDS, Resource
from controlplane.model.specs import (
    SPEC_TYPES,
    CertificateSpec,
    InstanceSpec,
    NodeSpec,
    SecretSpec,
    ServiceSpec,
    Workload,
)
from sidecar.health import CheckTiming


def _service(**spec: object) -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": "Service",
                        "metadata": {"name": "web"}, "spec": spec})


def test_every_kind_has_a_spec_type() -> None:
    assert set(SPEC_TYPES) == set(KINDS) | set(SYSTEM_KINDS)


def test_typed_narrows_and_refuses_another_kind() -> None:
    service = _service(image="web:1", port=8080)
    spec = service.typed(ServiceSpec)
    assert (spec.image, spec.port, spec.replicas, spec.resources.memory) == ("web:1", 8080, 1, 128)
    assert service.typed(ServiceSpec) is spec  # decoded once per Resource
    with pytest.raises(TypeError, match="Service default/web has a ServiceSpec, not a SecretSpec"):
        service.typed(SecretSpec)


def test_the_json_form_is_what_is_stored() -> None:
    service = _service(image="web:1", port=8080, healthCheck={"http": {"path": "/ok"}})
    assert service.typed(ServiceSpec) is service.spec
    assert Resource(kind="Service", name="web", spec=service.spec.to_dict()) == service
    assert service.spec.to_dict()["healthCheck"] == {"http": {"path": "/ok"}, "interval": "5s",
                                           "timeout": "2s", "initialDelay": "0s",
                                           "failureThreshold": 3}


def test_a_workload_is_the_services_template_field_for_field() -> None:
    service = _service(image="web:1", port=8080, env={"A": "1"}, replicas=3,
                       upstreams=[{"name": "db"}], mounts=[{"configMap": "cfg", "path": "/etc/x"}])
    workload = service.typed(ServiceSpec).workload()
    assert workload.to_dict() == template_of(service.spec.to_dict())
    assert Workload.model_validate(template_of(service.spec.to_dict())) == workload
    assert workload.gateway is None and workload.host_ports is None


def test_stored_instances_of_older_versions_decode_with_defaults() -> None:
    old = Resource(kind="Instance", name="gw-1", spec={
        "service": "gw", "node": "n1", "driver": "process", "gateway": True, "revision": 2,
        "template": "abc", "drainingSince": 12.5, "draining": True, "droppedField": 1,
        "workload": {"gateway": True, "hostPorts": [8080], "driver": "process",
                     "resources": {"cpu": 100, "memory": 64}}})
    spec = old.typed(InstanceSpec)
    assert (spec.gateway, spec.node, spec.draining_since, spec.registered) == (
        True, "n1", 12.5, False)
    assert spec.workload.host_ports == [8080] and spec.workload.resources.memory == 64
    assert spec.workload.restart_policy == "always"  # the schema's default, stated once
    assert spec.to_dict()["drainingSince"] == 12.5 and "droppedField" not in spec.to_dict()


def test_nodes_and_certificates_decode() -> None:
    node = Resource(kind="Node", name="n1", namespace="cluster", spec={
        "address": "127.0.0.2", "capacity": {"cpu": 2000, "memory": 4096},
        "drivers": ["process"], "logsEndpoint": "127.0.0.2:7400", "revokedAt": "2026-01-01"})
    spec = node.typed(NodeSpec)
    assert (spec.capacity.cpu, spec.logs_endpoint, spec.drain, spec.revoked_at) == (
        2000, "127.0.0.2:7400", False, "2026-01-01")
    cert = Resource(kind="Certificate", name="c", spec={
        "identity": "spiffe://t/ns/default/svc/web", "serial": "ab", "node": "n1",
        "root": "cd", "notAfter": "2026-12-31T00:00:00Z"})
    assert cert.typed(CertificateSpec).not_after == "2026-12-31T00:00:00Z"
    assert cert.typed(CertificateSpec).instance is None


def test_an_unknown_kind_has_no_spec_model() -> None:
    with pytest.raises(KeyError):
        Resource(kind="Gizmo", name="g")


def test_the_agent_is_sent_a_typed_workload_with_the_schemas_defaults() -> None:
    service = _service(command=["app"], port=8080,
                       healthCheck={"grpc": {"service": "echo.Echo"}, "interval": "250ms"},
                       upstreams=[{"name": "db"}, {"name": "ledger", "namespace": "shop",
                                                   "port": 7000}])
    sent = workload_to_pb(service.typed(ServiceSpec).workload(), "team-a")
    assert (sent.image, list(sent.command), sent.port, sent.protocol) == ("", ["app"], 8080,
                                                                         "http")
    assert (sent.cpu_millis, sent.memory_mib, sent.restart_policy) == (100, 128, "always")
    assert [(u.namespace, u.name, u.port) for u in sent.upstreams] == [
        ("team-a", "db", 0), ("shop", "ledger", 7000)]
    check = sent.health_check
    assert check.WhichOneof("probe") == "grpc" and check.grpc.service == "echo.Echo"
    assert CheckTiming.of(check) == CheckTiming(interval=0.25, timeout=2.0, initial_delay=0.0,
                                                failure_threshold=3)
    assert not workload_to_pb(_service(image="web:1").typed(ServiceSpec).workload(),
                              "default").HasField("health_check")


def test_no_reader_outside_the_manifests_indexes_a_spec_by_key() -> None:
    """Specs are read by attribute; only the manifest layer handles their JSON."""
    root = Path(__file__).resolve().parents[2]
    keyed = re.compile(r"spec\.get\(|spec\[")
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for package in ("controlplane", "sidecar")
             for path in sorted((root / package).rglob("*.py"))
             if "manifests" not in path.parts and "api" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if keyed.search(line)]
    assert found == []
