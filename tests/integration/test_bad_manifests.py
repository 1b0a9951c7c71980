"""Bad manifests are rejected with the field path and the fix, through the CLI
(exit 1) and through the API (INVALID_ARGUMENT with BadRequest details), and
nothing is stored: each bad document travels with a valid one, which must not
be applied either."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import errors
from controlplane.client import Client
from controlplane.model import KINDS
from tests.harness import ServerProcess, run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def svc(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"image": "example/web:dev", "port": 8080, **spec}}


def doc(kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": kind,
            "metadata": {"name": name, **meta}, "spec": spec}


ROUTE = [{"service": "backend"}]

# (id, bad document, field path expected, words of the message expected)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative-replicas", svc(replicas=-1), "spec.replicas", "must be >= 0, got -1"),
    ("nul-in-a-string", svc(env={"MODE": "a\x00b"}), "spec.env.MODE",
     "contains a NUL character"),
    ("annotation-key", {**svc(), "metadata": {"name": "web", "annotations": {"no way": "x"}}},
     "metadata.annotations", "annotation key 'no way' is not valid"),
    ("annotations-too-big",
     {**svc(), "metadata": {"name": "web", "annotations": {"blob": "x" * 300_000}}},
     "metadata.annotations", "more than 262,144; keep large data in a ConfigMap"),
    ("duration-too-long", svc(healthCheck={"http": {}, "timeout": "1000h"}),
     "spec.healthCheck.timeout", "'1000h' is longer than 30 days (720h)"),
    ("a-million-replicas", svc(replicas=1_000_000), "spec.replicas",
     "must be <= 100000, got 1000000"),
    ("more-replicas-than-the-server-allows", svc(replicas=10_001), "spec.replicas",
     "10,001 replicas is more than this server allows (10,000); ask for fewer, or start "
     "`flotilla server` with a higher --max-replicas"),
    ("unknown-field", svc(replica=3), "spec.replica", "did you mean 'replicas'"),
    ("wrong-type", svc(port="8080"), "spec.port", "must be an integer, got string '8080'"),
    ("bad-name", svc(name="My_App"), "metadata.name", "e.g. 'my-app'"),
    ("duplicate-ports",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 80, "routes": ROUTE},
                                           {"name": "b", "port": 80, "routes": ROUTE}]}),
     "spec.listeners[1].port", "already used by listeners[0]"),
    ("dangling-upstream", svc(upstreams=[{"name": "nowhere"}]), "spec.upstreams[0].name",
     "Service default/nowhere does not exist"),
    ("dangling-gateway-route",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 80,
                                            "routes": [{"service": "ghost"}]}]}),
     "spec.listeners[0].routes[0].service", "Service default/ghost does not exist"),
    ("dangling-mount", svc(mounts=[{"configMap": "missing", "path": "/etc/x"}]),
     "spec.mounts[0].configMap", "ConfigMap default/missing does not exist"),
    ("wrong-api-version", {**svc(), "apiVersion": "v1"}, "apiVersion",
     "must be 'flotilla.dev/v1'"),
    ("unknown-kind", {**svc(), "kind": "Servise"}, "kind", "did you mean 'Service'"),
    ("bad-protocol", svc(protocol="udp"), "spec.protocol", "'http', 'grpc' or 'tcp'"),
    ("bad-intention-action",
     doc("Intention", "x", {"source": "frontend", "destination": "backend", "action": "permit"}),
     "spec.action", "'allow' or 'deny', got 'permit'"),
    ("weights-not-100",
     doc("TrafficPolicy", "tp", {"destination": "frontend", "subsets": [
         {"name": "v1", "labels": {"version": "v1"}}], "split": [{"subset": "v1", "weight": 60}]}),
     "spec.split", "weights must add up to 100, got 60"),
    ("undefined-subset",
     doc("TrafficPolicy", "tp", {"destination": "frontend",
                                 "split": [{"subset": "canary", "weight": 100}]}),
     "spec", "subset 'canary' is used but not defined"),
    ("second-policy-same-destination",
     doc("TrafficPolicy", "another", {"destination": "backend"}),
     "spec.destination", "already has TrafficPolicy 'backend'"),
    ("relative-health-path", svc(healthCheck={"http": {"path": "healthz"}}),
     "spec.healthCheck.http.path", "start it with '/'"),
    ("bad-duration", doc("TrafficPolicy", "tp", {"destination": "frontend",
                                                 "requestTimeout": "5 sec"}),
     "spec.requestTimeout", "like '250ms', '5s' or '1m'"),
    ("bad-label", svc(name="web") | {"metadata": {"name": "web", "labels": {"tier": "-x-"}}},
     "metadata.labels", "label value '-x-' is not valid"),
    ("missing-required", doc("Intention", "x", {"source": "frontend", "action": "allow"}),
     "spec.destination", "required field is missing"),
    # Fields the schema knows but Flotilla does not give an effect yet.
    ("fault-not-supported-yet",
     doc("TrafficPolicy", "tp", {"destination": "frontend",
                                 "faults": {"abort": {"percent": 50, "httpStatus": 503}}}),
     "spec.faults", "fault injection is not supported yet"),
    ("rate-limit-not-supported-yet",
     doc("TrafficPolicy", "tp", {"destination": "frontend", "rateLimit": {"requests": 2}}),
     "spec.rateLimit", "rate limits are not supported yet"),
    ("split-not-supported-yet",
     doc("TrafficPolicy", "tp", {"destination": "frontend", "subsets": [
         {"name": "v1", "labels": {"version": "v1"}}], "split": [{"subset": "v1", "weight": 100}]}),
     "spec.split", "weighted splits are not supported yet"),
    ("autoscaling-not-supported-yet", svc(autoscaling={"maxReplicas": 4}), "spec.autoscaling",
     "autoscaling is not supported yet"),
    ("https-not-supported-yet",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 443, "protocol": "https",
                                            "tls": {"secret": "frontend-session"},
                                            "routes": ROUTE}]}),
     "spec.listeners[0].protocol", "https listeners are not supported yet"),
    ("replicas-without-workload", doc("Service", "ghost", {"replicas": 2}), "spec.replicas",
     "needs a workload"),
    ("bad-constraint",
     svc(placement={"constraints": [{"key": "zone", "operator": "in", "value": "b"}]}),
     "spec.placement.constraints[0]", "takes a non-empty 'values' list"),
    ("secret-not-base64", doc("Secret", "s", {"data": {"key": "not base64!"}}), "spec",
     "is not valid base64"),
    ("https-without-tls",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 443, "protocol": "https",
                                            "routes": ROUTE}]}),
     "spec.listeners[0]", "needs tls.secret"),
    ("l7-on-tcp-destination",
     doc("Intention", "to-db", {"source": "frontend", "destination": "db", "action": "allow",
                                "http": [{"pathPrefix": "/"}]}),
     "spec.http", "speaks tcp"),
    ("secret-type-tls-not-supported-yet",
     doc("Secret", "site-cert", {"type": "tls", "stringData": {"tls.crt": "c", "tls.key": "k"}}),
     "spec.type", "Secrets of type tls are not supported yet"),
    # Placement names count instances of a Service or Gateway: they must exist.
    ("dangling-gateway-affinity",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 80, "routes": ROUTE}],
                             "placement": {"affinity": ["ghost"]}}),
     "spec.placement.affinity[0]", "no Service or Gateway default/ghost exists"),
    ("dangling-gateway-preferred-anti-affinity",
     doc("Gateway", "edge", {"listeners": [{"name": "a", "port": 80, "routes": ROUTE}],
                             "placement": {"preferredAntiAffinity": ["edge", "ghost"]}}),
     "spec.placement.preferredAntiAffinity[1]", "no Service or Gateway default/ghost exists"),
    ("dangling-preferred-affinity", svc(placement={"preferredAffinity": ["ghost"]}),
     "spec.placement.preferredAffinity[0]", "no Service or Gateway default/ghost exists"),
    # What a tcp destination's proxied bytes never get (db speaks tcp).
    ("tcp-request-timeout", doc("TrafficPolicy", "db", {"destination": "db",
                                                        "requestTimeout": "2s"}),
     "spec.requestTimeout", "speaks tcp, and requestTimeout does not apply"),
    ("tcp-idle-timeout", doc("TrafficPolicy", "db", {"destination": "db", "idleTimeout": "30s"}),
     "spec.idleTimeout", "idleTimeout does not apply"),
    ("tcp-retries", doc("TrafficPolicy", "db", {"destination": "db", "retries": {"attempts": 2}}),
     "spec.retries", "only HTTP requests are retried"),
    ("tcp-hash-on-header",
     doc("TrafficPolicy", "db", {"destination": "db", "loadBalancer": {
         "algorithm": "ring-hash", "hashOn": {"header": "x-user"}}}),
     "spec.loadBalancer.hashOn.header", "hashOn: {sourceIP: true}"),
    ("tcp-max-requests",
     doc("TrafficPolicy", "db", {"destination": "db", "circuitBreaker": {"maxRequests": 10}}),
     "spec.circuitBreaker.maxRequests", "cap connections with maxConnections instead"),
    ("tcp-max-retries",
     doc("TrafficPolicy", "db", {"destination": "db", "circuitBreaker": {"maxRetries": 1}}),
     "spec.circuitBreaker.maxRetries", "maxRetries does not apply"),
    # backend's policy (deploy/examples/backend.yaml) sets requestTimeout and retries.
    ("service-turns-tcp-under-its-policy",
     doc("Service", "backend", {"image": "flotilla/example-grpc:dev", "port": 9090,
                                "protocol": "tcp"}),
     "spec.protocol", "TrafficPolicy default/backend sets requestTimeout, retries"),
]

# A valid document that travels with every bad one and must not be applied.
INNOCENT = doc("ConfigMap", "innocent", {"data": {"a": "b"}})
DB = doc("Service", "db", {"image": "example/db:dev", "port": 5432, "protocol": "tcp"})


def snapshot(client: Client) -> list[tuple[Any, ...]]:
    """What users applied: every object's identity, spec, labels and generation
    (the reconciler keeps writing Instances and statuses meanwhile)."""
    return [
        (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"], d["metadata"]["uid"],
         d["metadata"]["generation"], d["metadata"].get("labels"), d["spec"])
        for d in client.list("", "")[0] if d["kind"] in KINDS
    ]


@pytest.fixture(scope="module")
def seeded(module_server: ServerProcess, module_client: Client) -> ServerProcess:
    applied = run_cli("apply", "-f", str(EXAMPLES), server=module_server)
    assert applied.returncode == 0, applied.stderr
    module_client.apply([(DB, "db")])
    return module_server


@pytest.fixture
def client(seeded: ServerProcess, module_client: Client) -> Client:
    return module_client


def test_at_least_twelve_distinct_cases() -> None:
    assert len({case[0] for case in CASES}) >= 12


@pytest.mark.parametrize(("bad", "path", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rejected_through_the_api(
    seeded: ServerProcess, client: Client, bad: dict[str, Any], path: str, words: str
) -> None:
    before = snapshot(client)
    with pytest.raises(errors.InvalidManifest) as caught:
        client.apply([(INNOCENT, "ok.yaml#1"), (bad, "bad.yaml#2")])
    found = [(v.path, v.message) for v in caught.value.violations]
    assert any(p == path and words in m for p, m in found), found
    assert all("ok.yaml" not in v.source for v in caught.value.violations)
    assert snapshot(client) == before


@pytest.mark.parametrize(("bad", "path", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rejected_through_the_cli(
    seeded: ServerProcess, client: Client, tmp_path: Path, bad: dict[str, Any], path: str,
    words: str,
) -> None:
    before = snapshot(client)
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(yaml.safe_dump_all([INNOCENT, bad]))
    result = run_cli("apply", "-f", str(manifest), server=seeded)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert "nothing was applied" in result.stderr
    line = next((ln for ln in result.stderr.splitlines() if f" {path}: " in ln), None)
    assert line is not None and words in line, result.stderr
    assert "mixed.yaml#2" in line
    assert snapshot(client) == before


def test_yaml_syntax_error_names_the_line(seeded: ServerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("apiVersion: flotilla.dev/v1\nkind: Service\nmetadata: {name: x\n")
    result = run_cli("apply", "-f", str(manifest), server=seeded)
    assert result.returncode == 1
    assert "broken.yaml" in result.stderr and "line " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "words"), [
    (b"metadata: {name: x}\nkind: Service\nkind: ConfigMap\n", "key 'kind' is given twice"),
    (b"kind: ConfigMap\nspec: {data: {k: \xff}}\n", "is not UTF-8 text"),
    (b"kind: ConfigMap\nspec: {data: {k: !!binary aGk=}}\n", "binary is not supported"),
    (b"a: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "levels deep"),
], ids=["duplicate-key", "not-utf8", "binary", "deep"])
def test_files_the_loader_refuses_are_errors_not_crashes(
        seeded: ServerProcess, tmp_path: Path, text: bytes, words: str) -> None:
    manifest = tmp_path / "odd.yaml"
    manifest.write_bytes(text)
    result = run_cli("apply", "-f", str(manifest), server=seeded)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "odd.yaml" in result.stderr and words in result.stderr, result.stderr


def test_same_object_twice_in_one_apply(seeded: ServerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "twice.yaml"
    manifest.write_text(yaml.safe_dump_all([INNOCENT, INNOCENT]))
    result = run_cli("apply", "-f", str(manifest), server=seeded)
    assert result.returncode == 1
    assert "also defined in" in result.stderr and "twice.yaml#1" in result.stderr


def test_every_problem_is_reported_at_once(client: Client) -> None:
    bad = svc(replicas=-1, port=0, protocol="udp")
    with pytest.raises(errors.InvalidManifest) as caught:
        client.apply([(bad, "all.yaml")])
    paths = sorted(v.path for v in caught.value.violations)
    assert paths == ["spec.port", "spec.protocol", "spec.replicas"]
    as_json = json.dumps([str(v) for v in caught.value.violations])
    assert "must be >= 1, got 0" in as_json


def test_scaling_past_the_servers_bound_is_refused(client: Client) -> None:
    before = snapshot(client)
    with pytest.raises(errors.InvalidManifest) as caught:
        client.scale("db", 10_001)
    [violation] = caught.value.violations
    assert violation.path == "spec.replicas" and "--max-replicas" in violation.message
    assert snapshot(client) == before


def test_more_problems_than_the_trailers_hold_are_cut_with_a_count(client: Client) -> None:
    """gRPC drops a status whose trailers pass 16 KiB: a thousand bad documents
    get their first problems and how many more, not RESOURCE_EXHAUSTED."""
    before = snapshot(client)
    docs = [(svc(f"s{i}", replica=3), f"many.yaml#{i}") for i in range(1, 1001)]
    with pytest.raises(errors.InvalidManifest) as caught:
        client.apply(docs)
    shown = caught.value.violations
    assert 10 <= len(shown) < 1000 and caught.value.more == 1000 - len(shown)
    assert all(v.path == "spec.replica" and "did you mean 'replicas'" in v.message
               for v in shown)
    message = str(caught.value)
    assert message.startswith(
        f"invalid manifest, nothing was applied (1000 problems, the first {len(shown)} shown)")
    assert message.endswith(f"... and {1000 - len(shown)} more: fix these and apply again "
                            "to see them")
    assert snapshot(client) == before


def test_a_huge_unknown_field_is_quoted_clipped(client: Client) -> None:
    with pytest.raises(errors.InvalidManifest) as caught:
        client.apply([(svc(**{"x" * 100_000: 1}), "huge.yaml")])
    [violation] = caught.value.violations
    assert violation.message.startswith("unknown field") and len(violation.path) < 400
