"""The xDS stream state machines, driven by hand: no gRPC server, no sleeps.

A tiny client model applies what each response carries, the way Envoy does,
so the properties can say "after every ACK, the client holds the snapshot"."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from controlplane.xds.snapshot import CLUSTER, ENDPOINT, Item, Snapshot, snapshot
from controlplane.xds.stream import DeltaStream, SotwStream


def snap(clusters: Mapping[str, int], endpoints: Mapping[str, int] | None = None) -> Snapshot:
    """Clusters by name with a connect timeout (their "content"), and
    endpoint assignments by name with a port."""
    items = {CLUSTER: [Item(name, cluster_pb2.Cluster(
        name=name, connect_timeout=duration_pb2.Duration(seconds=seconds)))
        for name, seconds in clusters.items()]}
    items[ENDPOINT] = [Item(name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
                       for name in (endpoints or {})]
    return snapshot(items)


def delta(type_url: str = CLUSTER, nonce: str = "", error: str = "",
          subscribe: tuple[str, ...] = (), unsubscribe: tuple[str, ...] = (),
          initial: Mapping[str, str] | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, response_nonce=nonce, resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe, initial_resource_versions=initial or {})
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def sent(responses: list[discovery_pb2.DeltaDiscoveryResponse]) -> dict[str, set[str]]:
    return {r.type_url: {x.name for x in r.resources} | {f"-{n}" for n in r.removed_resources}
            for r in responses}


# --- delta ---------------------------------------------------------------------------------


def test_delta_sends_everything_first_then_only_what_changed() -> None:
    stream = DeltaStream()
    first = snap({"a": 1, "b": 1})
    assert stream.on_request(delta()) is None
    [response] = stream.next_responses(first)
    assert sent([response]) == {CLUSTER: {"a", "b"}}
    assert stream.status(first).pending == {"clusters"} and not stream.in_sync(first)
    assert stream.on_request(delta(nonce=response.nonce)) is None
    assert stream.next_responses(first) == [] and stream.in_sync(first)

    second = snap({"a": 2, "c": 1})
    [change] = stream.next_responses(second)
    assert sent([change]) == {CLUSTER: {"a", "c", "-b"}}
    stream.on_request(delta(nonce=change.nonce))
    assert stream.in_sync(second) and stream.next_responses(second) == []


def test_delta_answers_a_type_once_even_when_it_is_empty() -> None:
    stream = DeltaStream()
    stream.on_request(delta(ENDPOINT, subscribe=("missing",)))
    [response] = stream.next_responses(snap({}))
    assert (response.type_url, list(response.resources)) == (ENDPOINT, [])
    assert stream.next_responses(snap({})) == []


def test_a_nack_keeps_the_last_good_version_and_is_not_resent_until_it_changes() -> None:
    stream = DeltaStream()
    good = snap({"a": 1})
    stream.on_request(delta())
    [first] = stream.next_responses(good)
    stream.on_request(delta(nonce=first.nonce))
    bad = snap({"a": 0})
    [push] = stream.next_responses(bad)
    nack = stream.on_request(delta(nonce=push.nonce, error="connect_timeout must be > 0s"))
    assert nack is not None and (nack.short, nack.error) == ("clusters",
                                                            "connect_timeout must be > 0s")
    status = stream.status(bad)
    assert status.rejected and not status.in_sync and not status.pending
    assert stream.next_responses(bad) == []  # not again
    fixed = snap({"a": 3})
    [again] = stream.next_responses(fixed)
    assert sent([again]) == {CLUSTER: {"a"}}
    stream.on_request(delta(nonce=again.nonce))
    assert stream.in_sync(fixed) and not stream.status(fixed).rejected


def test_a_reconnecting_client_is_not_sent_what_it_already_has() -> None:
    first = snap({"a": 1, "b": 1})
    stream = DeltaStream()
    stream.on_request(delta(initial={"a": first.of(CLUSTER)["a"].version, "b": "old"}))
    [response] = stream.next_responses(first)
    assert sent([response]) == {CLUSTER: {"b"}}


def test_unknown_and_repeated_nonces_change_nothing() -> None:
    stream = DeltaStream()
    first = snap({"a": 1})
    stream.on_request(delta())
    [response] = stream.next_responses(first)
    assert stream.on_request(delta(nonce="999", error="from another stream")) is None
    assert stream.on_request(delta(nonce=response.nonce)) is None
    assert stream.on_request(delta(nonce=response.nonce, error="late")) is None
    assert stream.in_sync(first)


def test_named_subscriptions_follow_subscribe_and_unsubscribe() -> None:
    stream = DeltaStream()
    both = snap({}, {"a": 1, "b": 1})
    stream.on_request(delta(ENDPOINT, subscribe=("a",)))
    [first] = stream.next_responses(both)
    assert sent([first]) == {ENDPOINT: {"a"}}
    stream.on_request(delta(ENDPOINT, nonce=first.nonce, subscribe=("b",), unsubscribe=("a",)))
    [second] = stream.next_responses(both)
    assert sent([second]) == {ENDPOINT: {"b"}}


# --- state of the world --------------------------------------------------------------------


def sotw(type_url: str = CLUSTER, nonce: str = "", version: str = "", error: str = "",
         names: tuple[str, ...] = ()) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce,
                                             version_info=version, resource_names=names)
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def test_sotw_resends_a_whole_type_on_any_change_and_ignores_stale_nonces() -> None:
    stream = SotwStream()
    first = snap({"a": 1, "b": 1})
    stream.on_request(sotw())
    [response] = stream.next_responses(first)
    assert len(response.resources) == 2
    stream.on_request(sotw(nonce=response.nonce, version=response.version_info))
    assert stream.in_sync(first) and stream.next_responses(first) == []
    second = snap({"a": 1, "b": 2})
    [change] = stream.next_responses(second)
    assert len(change.resources) == 2 and change.version_info != response.version_info
    # An answer to the older response is stale: it neither ACKs nor NACKs.
    assert stream.on_request(sotw(nonce=response.nonce, error="stale")) is None
    assert not stream.in_sync(second)
    stream.on_request(sotw(nonce=change.nonce, version=change.version_info))
    assert stream.in_sync(second)


def test_sotw_nack_is_not_resent_until_the_type_changes() -> None:
    stream = SotwStream()
    bad = snap({"a": 0})
    stream.on_request(sotw())
    [response] = stream.next_responses(bad)
    nack = stream.on_request(sotw(nonce=response.nonce, error="no"))
    assert nack is not None and stream.status(bad).rejected
    assert stream.next_responses(bad) == []
    assert len(stream.next_responses(snap({"a": 1}))) == 1


def test_sotw_named_types_send_only_the_names_asked_for() -> None:
    stream = SotwStream()
    both = snap({}, {"a": 1, "b": 1})
    stream.on_request(sotw(ENDPOINT, names=("b",)))
    [response] = stream.next_responses(both)
    assert len(response.resources) == 1
    assert stream.status(both).acked == {"endpoints": ""}


# --- properties ----------------------------------------------------------------------------

versions = st.dictionaries(st.sampled_from("abcde"), st.integers(1, 3), max_size=5)


@given(st.lists(versions, min_size=1, max_size=8), st.lists(st.booleans(), max_size=8))
def test_after_acking_every_response_the_client_holds_the_snapshot(
        steps: list[dict[str, int]], nacks: list[bool]) -> None:
    stream, held = DeltaStream(), {}
    stream.on_request(delta())
    for i, clusters in enumerate(steps):
        current = snap(clusters)
        for response in stream.next_responses(current):
            refuse = i < len(nacks) and nacks[i]
            if not refuse:
                held.update({r.name: r.version for r in response.resources})
                for name in response.removed_resources:
                    held.pop(name, None)
            stream.on_request(delta(nonce=response.nonce, error="refused" if refuse else ""))
    final = snap(steps[-1] | {"z": 9})  # a change no NACK touched
    for response in stream.next_responses(final):
        held.update({r.name: r.version for r in response.resources})
        for name in response.removed_resources:
            held.pop(name, None)
        stream.on_request(delta(nonce=response.nonce))
    status = stream.status(final)
    if not status.rejected:
        assert status.in_sync and held == final.versions(CLUSTER)
