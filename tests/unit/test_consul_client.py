"""The one Consul client (store log, leader lock, catalog): how it reports a
Consul that is away, refuses the token, or fails; against a local socket
and a tiny HTTP server (the real Consul is in the integration tests)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controlplane.catalog.consul import ConsulCatalog
from controlplane.errors import PermissionDenied, TemporaryError, UserError
from controlplane.server.leader import ConsulLeader
from controlplane.store.consul import ConsulAddress, ConsulClient, ConsulLog, parse_store_url


def _free_port() -> int:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Answer(BaseHTTPRequestHandler):
    status = 403
    body = b"Permission denied"

    def _reply(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_PUT = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def consul_answering() -> Iterator[tuple[str, type[_Answer]]]:
    """An HTTP server at a consul:// URL answering every request as its
    handler class says (403 unless a test changes it)."""
    handler = type("Handler", (_Answer,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"consul://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_unreachable_consul_is_a_temporary_error_for_the_log_and_the_leader() -> None:
    port = _free_port()
    log = ConsulLog(f"consul://127.0.0.1:{port}/flotilla")
    with pytest.raises(TemporaryError) as raised:
        log.read_head()
    assert str(raised.value) == f"cannot reach Consul at 127.0.0.1:{port}: connection refused"
    leader = ConsulLeader(log.client, "flotilla", "127.0.0.1:7300")
    with pytest.raises(TemporaryError, match=f"cannot reach Consul at 127.0.0.1:{port}"):
        leader._campaign()
    assert not leader.is_leader()


def test_a_refused_token_names_the_flag_that_gives_it(
        consul_answering: tuple[str, type[_Answer]]) -> None:
    url, _ = consul_answering
    with pytest.raises(PermissionDenied) as raised:
        ConsulLog(f"{url}/flotilla").read_head()
    assert "refused to read the log's head" in str(raised.value)
    assert "--store-token" in str(raised.value) and "key:write on flotilla/" in str(raised.value)
    address = url.removeprefix("consul://").split(":")
    catalog = ConsulCatalog(ConsulAddress(address[0], int(address[1])))
    with pytest.raises(PermissionDenied, match="--catalog-token"):
        catalog.services()


def test_a_failing_consul_is_temporary_and_a_malformed_request_is_the_users(
        consul_answering: tuple[str, type[_Answer]]) -> None:
    url, handler = consul_answering
    log = ConsulLog(f"{url}/flotilla")
    handler.status, handler.body = 500, b"rpc error: no leader"
    with pytest.raises(TemporaryError, match="failed to read the log's head: .*no leader"):
        log.read_head()
    handler.status, handler.body = 400, b"bad request"
    with pytest.raises(UserError, match="rejected the request to append to the log"):
        log.append(0, 1, {"start": 0, "end": 1, "events": [], "private": []})


def test_store_urls_give_the_address_and_the_prefix() -> None:
    assert parse_store_url("consul://127.0.0.1:8500") == (ConsulAddress("127.0.0.1", 8500),
                                                          "flotilla")
    assert parse_store_url("consul://10.0.0.1:8501/a/b/") == (ConsulAddress("10.0.0.1", 8501),
                                                               "a/b")
    with pytest.raises(UserError, match=r"consul://HOST:PORT\[/PREFIX\]"):
        parse_store_url("http://127.0.0.1:8500")
    assert str(ConsulClient(ConsulAddress("::1", 8500))) == "Consul at [::1]:8500"
