"""A real `flotilla server` is discoverable with stock gRPC tooling: the
reflection service lists every Flotilla service and grpc health, serves
descriptors that resolve down to method signatures, and the standard health
service answers SERVING for the server and for each Flotilla service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.harness import ServerProcess

FLOTILLA_SERVICES = [
    "flotilla.v1.ResourceService",
    "flotilla.v1.NodeService",
    "flotilla.v1.InstanceService",
    "flotilla.v1.ProxyService",
]
HEALTH_SERVICE = "grpc.health.v1.Health"
RPC_TIMEOUT = 10.0


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as chan:
        yield chan


def reflect(
    channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Send ``requests`` on one ServerReflectionInfo stream; one response each."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=RPC_TIMEOUT))


def test_list_services_names_every_service(channel: grpc.Channel) -> None:
    (response,) = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    assert not response.HasField("error_response"), response.error_response
    names = {service.name for service in response.list_services_response.service}
    assert set(FLOTILLA_SERVICES) | {HEALTH_SERVICE} <= names


def test_file_containing_symbol_describes_apply(channel: grpc.Channel) -> None:
    (response,) = reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="flotilla.v1.ResourceService"
        ),
    )

    assert not response.HasField("error_response"), response.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(blob)
        for blob in response.file_descriptor_response.file_descriptor_proto
    ]
    services = {
        f"{f.package}.{service.name}": service for f in files for service in f.service
    }
    resource_service = services["flotilla.v1.ResourceService"]
    methods = {method.name: method for method in resource_service.method}
    assert {"Apply", "Get", "List", "Delete", "Watch"} <= set(methods)
    assert methods["Apply"].input_type == ".flotilla.v1.ApplyRequest"
    assert methods["Apply"].output_type == ".flotilla.v1.ApplyResponse"
    assert methods["Watch"].server_streaming


def test_unknown_symbol_is_not_found(channel: grpc.Channel) -> None:
    (response,) = reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol="flotilla.v1.Nope")
    )

    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_descriptor_pool_resolves_every_service(channel: grpc.Channel) -> None:
    """The reference reflection client can rebuild each service, imports
    (struct.proto, timestamp.proto) included."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    for name in FLOTILLA_SERVICES:
        service = pool.FindServiceByName(name)
        assert service.methods, f"{name} has no methods"
    apply = pool.FindServiceByName("flotilla.v1.ResourceService").methods_by_name["Apply"]
    assert apply.input_type.full_name == "flotilla.v1.ApplyRequest"
    resource = pool.FindMessageTypeByName("flotilla.v1.Resource")
    spec = resource.fields_by_name["spec"].message_type
    assert spec is not None and spec.full_name == "google.protobuf.Struct"


@pytest.mark.parametrize("service", ["", *FLOTILLA_SERVICES], ids=["server", *FLOTILLA_SERVICES])
def test_health_check_is_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="flotilla.v1.Nope"), timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
