"""Manifest validation: pure, table-driven, plus properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.errors import InvalidManifest
from controlplane.manifests import parse_yaml, resolve_kind, to_resource, to_resources
from controlplane.model.types import parse_duration
from controlplane.model.specs import SecretSpec, ServiceSpec


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": spec}


def violations(doc: Any) -> list[str]:
    with pytest.raises(InvalidManifest) as caught:
        to_resource(doc, "t.yaml")
    return [f"{v.path}: {v.message}" if v.path else v.message for v in caught.value.violations]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"image": "x", "replicas": -1}, "spec.replicas: must be >= 0, got -1"),
        ({"image": "x", "replicas": True}, "spec.replicas: must be an integer, got boolean true"),
        ({"image": "x", "replicas": 1.5}, "spec.replicas: must be a whole number, got 1.5"),
        ({"image": "x", "port": 70000}, "spec.port: must be <= 65535, got 70000"),
        ({"image": "x", "port": 15001}, "spec.port: port 15001 is reserved for the sidecar"),
        ({"image": "x", "env": {"1BAD": "v"}}, "spec.env: '1BAD' is not a valid environment"),
        ({"image": "x", "restartPolicy": "sometimes"}, "spec.restartPolicy: must be one of"),
        ({"image": "x", "healthCheck": {"http": {}, "tcp": {}}},
         "spec.healthCheck: a health check needs exactly one of http, tcp, grpc (got http, tcp)"),
        ({"image": "x", "healthCheck": {"tcp": {}}}, "spec.healthCheck: needs a port"),
        ({"image": "x", "update": {"maxSurge": 0}}, "spec.update: a rolling update"),
        ({"image": "x", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
         "spec.autoscaling.maxReplicas: maxReplicas (2) must be >= minReplicas (3)"),
        ({"image": "x", "upstreams": [{"name": "a"}, {"name": "a"}]},
         "spec.upstreams[1].name: 'a' is listed twice"),
        ({"image": "x", "mounts": [{"configMap": "a", "secret": "b", "path": "/x"}]},
         "spec.mounts[0]: a mount needs exactly one of configMap, secret"),
        ({"image": "x", "resources": {"memory": 2}}, "spec.resources.memory: must be >= 4, got 2"),
        ({"image": "x", "placement": {"strategy": "random"}}, "spec.placement.strategy"),
        ({"image": "x", "placement": {"constraints": [{"key": "a", "operator": "exists",
                                                        "value": "b"}]}},
         "spec.placement.constraints[0]: operator 'exists' takes neither"),
        ({"image": "", "port": 80}, "spec.image: must not be empty"),
        ({"command": []}, "spec.command: must have at least 1 item(s), got 0"),
        ({"image": "x", "helthCheck": {}}, "spec.helthCheck: unknown field; did you mean "
                                            "'healthCheck'?"),
        ({"image": "x", "resources": {"cpus": 1}}, "spec.resources.cpus: unknown field; did "
                                                  "you mean 'cpu'?"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_service_rules(spec: dict[str, Any], expected: str) -> None:
    found = violations(service(**spec))
    assert any(v.startswith(expected) for v in found), found


def test_defaults_are_applied_and_stable() -> None:
    resource = to_resource(service(image="x", port=8080))
    spec = resource.typed(ServiceSpec)
    assert spec.replicas == 1
    assert spec.protocol == "http"
    assert (spec.resources.cpu, spec.resources.memory) == (100, 128)
    assert spec.to_dict()["resources"] == {"cpu": 100, "memory": 128}
    again = to_resource(service(**spec.to_dict()))
    assert again.spec == resource.spec


def test_a_service_without_workload_has_no_replicas() -> None:
    assert to_resource(service(port=9090, protocol="grpc")).typed(ServiceSpec).replicas == 0


def test_secret_string_data_is_merged_as_base64() -> None:
    doc = {"apiVersion": "flotilla.dev/v1", "kind": "Secret", "metadata": {"name": "s"},
           "spec": {"stringData": {"b": "hi"}, "data": {"a": "eA=="}}}
    spec = to_resource(doc).typed(SecretSpec)
    assert spec.data == {"a": "eA==", "b": "aGk="}
    assert spec.string_data is None and "stringData" not in spec.to_dict()


def test_envelope_problems() -> None:
    found = violations({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "x"}})
    assert "apiVersion: must be 'flotilla.dev/v1', got 'apps/v1'" in found
    assert any(v.startswith("kind: unknown kind 'Deployment'; use one of Service") for v in found)
    assert violations(["not", "a", "mapping"]) == ["a manifest must be a mapping, got a list"]
    assert any("metadata: required field is missing" in v
               for v in violations({"apiVersion": "flotilla.dev/v1", "kind": "Service"}))
    extra = violations({**service(image="x"), "specs": {}})
    assert "specs: unknown field; did you mean 'spec'?" in extra


def test_parse_yaml_numbers_documents_and_skips_empty_ones() -> None:
    docs = parse_yaml("a: 1\n---\n---\nb: 2\n", "f.yaml")
    assert docs == [({"a": 1}, "f.yaml#1"), ({"b": 2}, "f.yaml#3")]
    assert parse_yaml("a: 1\n", "g.yaml") == [({"a": 1}, "g.yaml")]
    with pytest.raises(InvalidManifest, match="line 3, column 1"):
        parse_yaml("a: 1\nb: [\n", "h.yaml")


def test_duplicates_across_a_batch_are_named() -> None:
    doc = service(image="x")
    with pytest.raises(InvalidManifest, match=r"also defined in a.yaml#1"):
        to_resources([(doc, "a.yaml#1"), (doc, "a.yaml#2")])


@pytest.mark.parametrize(
    ("alias", "kind"),
    [("svc", "Service"), ("services", "Service"), ("TrafficPolicies", "TrafficPolicy"),
     ("tp", "TrafficPolicy"), ("gw", "Gateway"), ("cm", "ConfigMap"), ("secrets", "Secret"),
     ("intentions", "Intention"), ("pods", None)],
)
def test_kind_aliases(alias: str, kind: str | None) -> None:
    assert resolve_kind(alias) == kind


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("1.5m", 90.0), ("2h", 7200.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")


@given(
    name=names,
    replicas=st.integers(min_value=0, max_value=100),
    port=st.integers(min_value=1, max_value=14999),
    protocol=st.sampled_from(["http", "grpc", "tcp"]),
    labels=st.dictionaries(names, names, max_size=3),
)
def test_validation_is_idempotent(
    name: str, replicas: int, port: int, protocol: str, labels: dict[str, str]
) -> None:
    """Validating what validation produced gives the same resource back."""
    doc = {"apiVersion": "flotilla.dev/v1", "kind": "Service",
           "metadata": {"name": name, "labels": labels},
           "spec": {"image": "x:1", "replicas": replicas, "port": port, "protocol": protocol}}
    first = to_resource(doc)
    second = to_resource({**doc, "spec": first.spec.to_dict()})
    assert second == first
    assert first.typed(ServiceSpec).replicas == replicas
