"""Requests that are not their method's message (invalid UTF-8, random bytes)
are INVALID_ARGUMENT naming the message, on unary calls and on streams; a
server fed such streams still stops on SIGTERM within its grace; a request
past the size bound is refused saying what to do."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator

import grpc
import pytest

from controlplane import errors
from controlplane.model.limits import MAX_REQUEST_BYTES
from tests.harness import ServerProcess

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
#: A GetRequest whose kind (field 1) holds bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"


def raw(channel: grpc.Channel, method: str, shape: str) -> grpc.UnaryUnaryMultiCallable:
    same = lambda data: data  # noqa: E731 - bytes through untouched
    return getattr(channel, shape)(method, request_serializer=same,
                                   response_deserializer=same)


@pytest.mark.parametrize(("method", "shape", "message_type"), [
    ("/flotilla.v1.ResourceService/Get", "unary_unary", "flotilla.v1.GetRequest"),
    ("/flotilla.v1.ResourceService/Watch", "unary_stream", "flotilla.v1.WatchRequest"),
], ids=["unary", "server-stream"])
def test_invalid_utf8_is_invalid_argument_not_internal(
        module_server: ServerProcess, method: str, shape: str, message_type: str) -> None:
    with grpc.insecure_channel(module_server.address) as channel:
        call = raw(channel, method, shape)
        with pytest.raises(grpc.RpcError) as caught:
            result = call(BAD_UTF8, timeout=10)
            list(result) if shape == "unary_stream" else result
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert f"not a well-formed message of {method}" in details
    assert f"'{message_type}': String field had bad UTF-8" in details


def test_a_random_byte_stream_ends_with_invalid_argument(module_server: ServerProcess) -> None:
    with grpc.insecure_channel(module_server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(channel, ADS, "stream_stream")(iter([b"\xff" * 16]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DeltaDiscoveryRequest" in (caught.value.details() or "")


def _held_open(payload: bytes) -> Iterator[bytes]:
    """One bad message, then the stream stays open (as an abusive client's)."""
    yield payload
    time.sleep(30)


def test_sigterm_stops_the_server_within_its_grace_after_random_byte_streams(
        server: ServerProcess) -> None:
    rng = random.Random(13)
    channels = [grpc.insecure_channel(server.address) for _ in range(20)]
    try:
        calls = [raw(c, ADS, "stream_stream")(_held_open(rng.randbytes(64)), timeout=60)
                 for c in channels]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                next(call)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert server.proc is not None
        began = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
        assert time.monotonic() - began < 5.0 + 3.0  # its 5 s grace, and time to exit
    finally:
        for channel in channels:
            channel.close()


def test_a_request_past_the_size_bound_is_refused_saying_what_to_do(
        module_server: ServerProcess) -> None:
    big = "x" * (1024 * 1024 - 100)  # each ConfigMap just under its own 1 MiB bound
    docs = [({"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap",
              "metadata": {"name": f"blob-{i}"}, "spec": {"data": {"blob": big}}}, f"b#{i}")
            for i in range(MAX_REQUEST_BYTES // len(big) + 1)]
    with module_server.client() as client:
        with pytest.raises(errors.InvalidRequest, match="larger than the server takes "
                           r"\(16 MiB\): apply fewer objects at a time"):
            client.apply(docs)
        assert not [d for d in client.list("ConfigMap", "")[0]
                    if d["metadata"]["name"].startswith("blob-")]
    # A client without that bound of its own meets the server's.
    with grpc.insecure_channel(module_server.address, options=[
            ("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            raw(channel, "/flotilla.v1.ResourceService/Apply", "unary_unary")(
                b"\x0a" + _varint(MAX_REQUEST_BYTES + 10) + b"\x00" * (MAX_REQUEST_BYTES + 10),
                timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
