"""Health checks (sidecar.health): each probe against small real servers on
loopback started here (HTTP, a TCP listener, grpc.health.v1), for a check's
own port, the gRPC service it names, its timeout and a kind no probe knows;
and the schedule's decisions (interval, initialDelay, failureThreshold, the
startup grace) on a fake clock."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane.api.flotilla.v1 import agent_pb2
from controlplane.convert import workload_to_pb
from controlplane.model.clock import FakeClock
from controlplane.model.specs import Workload
from sidecar.health import CheckTiming, HealthSchedule, Verdict, probe

LOOPBACK = "127.0.0.1"


def check_of(manifest: dict[str, Any]) -> agent_pb2.HealthCheck:
    """A manifest's ``healthCheck`` as the control plane sends it to the agent:
    validated, the schema's defaults filled in."""
    workload = Workload.model_validate({"healthCheck": manifest})
    return workload_to_pb(workload, "default").health_check
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Seconds a slow app takes to answer (at most: it answers at once when its
#: test ends); the timeouts that fail are far shorter.
SLOW = 1.0

# --- small apps on loopback ---------------------------------------------------------


class _Answers(BaseHTTPRequestHandler):
    server: _HttpApp

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.release.wait(self.server.delay)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HttpApp(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int, delay: float) -> None:
        super().__init__((LOOPBACK, 0), _Answers)
        self.status, self.delay, self.release = status, delay, threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe that timed out hung up before the answer: expected


@contextmanager
def http_app(status: int = 200, delay: float = 0.0) -> Iterator[int]:
    """An HTTP app answering every GET with ``status`` after ``delay``; yields its port."""
    server = _HttpApp(status, delay)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="http-app",
                              daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def tcp_port(listening: bool) -> Iterator[int]:
    """A loopback port held for the test: accepting connections, or refusing them."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        if listening:
            sock.listen()
        yield int(sock.getsockname()[1])


class _SlowHealth(health.HealthServicer):  # type: ignore[misc]
    def __init__(self, delay: float, release: threading.Event) -> None:
        super().__init__()
        self._delay, self._release = delay, release

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the servicer's name
        self._release.wait(self._delay)
        return super().Check(request, context)


@dataclass
class GrpcApp:
    port: int
    health: Any  # grpc_health.v1.health.HealthServicer: set(service, status)


@contextmanager
def grpc_app(statuses: dict[str, int], delay: float = 0.0) -> Iterator[GrpcApp]:
    """A gRPC app with the standard health service, each named service
    (``""``: the server) at its status, answering after ``delay``."""
    release = threading.Event()
    servicer = _SlowHealth(delay, release)
    for service, status in statuses.items():
        servicer.set(service, status)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield GrpcApp(port, servicer)
    finally:
        release.set()
        server.stop(None).wait(5)


def grpc_port(status: int) -> AbstractContextManager[int]:
    @contextmanager
    def port() -> Iterator[int]:
        with grpc_app({"": status}) as app:
            yield app.port
    return port()


#: kind -> (an app that fails the check, one that passes it), each yielding its port.
APPS: dict[str, tuple[Callable[[], AbstractContextManager[int]],
                      Callable[[], AbstractContextManager[int]]]] = {
    "http": (lambda: http_app(503), lambda: http_app(200)),
    "tcp": (lambda: tcp_port(listening=False), lambda: tcp_port(listening=True)),
    "grpc": (lambda: grpc_port(NOT_SERVING), lambda: grpc_port(SERVING)),
}

# --- the probes -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(APPS), ids=str)
def test_a_check_with_its_own_port_probes_that_port_not_the_apps(kind: str) -> None:
    failing, passing = APPS[kind]
    with ExitStack() as stack:
        app_port, check_port = stack.enter_context(failing()), stack.enter_context(passing())
        ok, detail = probe(check_of({kind: {}}), LOOPBACK, app_port)
        assert not ok, detail  # the app's own port fails the check...
        ok, detail = probe(check_of({kind: {"port": check_port}}), LOOPBACK, app_port)
        assert ok, detail  # ...and the check's port passes it
        ok, detail = probe(check_of({kind: {"port": app_port}}), LOOPBACK, check_port)
        assert not ok, detail  # the check's port wins over the app's, both ways
        if kind != "grpc":
            assert str(app_port) in detail


def test_the_grpc_probe_asks_the_apps_health_service() -> None:
    with grpc_app({"": SERVING}) as app:
        check = check_of({"grpc": {}})
        assert probe(check, LOOPBACK, app.port) == (True, "grpc health SERVING")
        app.health.set("", NOT_SERVING)
        assert probe(check, LOOPBACK, app.port) == (False, "grpc health NOT_SERVING")
    ok, detail = probe(check, LOOPBACK, app.port)
    assert (ok, detail) == (False, f"grpc health at {LOOPBACK}:{app.port}: UNAVAILABLE")


@pytest.fixture(scope="module")
def echo_app() -> Iterator[GrpcApp]:
    """SERVING for the server and echo.Ready, NOT_SERVING for echo.Echo."""
    with grpc_app({"": SERVING, "echo.Ready": SERVING, "echo.Echo": NOT_SERVING}) as app:
        yield app


@pytest.mark.parametrize(("service", "ok", "detail"), [
    (None, True, "grpc health SERVING"),
    ("", True, "grpc health SERVING"),
    ("echo.Echo", False, "grpc health echo.Echo NOT_SERVING"),
    ("echo.Ready", True, "grpc health echo.Ready SERVING"),
    ("echo.Missing", False, "grpc health echo.Missing at 127.0.0.1:{port}: NOT_FOUND"),
], ids=["unnamed", "the-server", "a-not-serving-service", "a-serving-service",
        "an-unknown-service"])
def test_the_grpc_check_asks_for_the_service_it_names(
    echo_app: GrpcApp, service: str | None, ok: bool, detail: str
) -> None:
    check = {"grpc": {} if service is None else {"service": service}}
    assert probe(check_of(check), LOOPBACK, echo_app.port) == (
        ok, detail.format(port=echo_app.port))


@contextmanager
def slow_app(kind: str) -> Iterator[int]:
    if kind == "http":
        with http_app(200, delay=SLOW) as port:
            yield port
    else:
        with grpc_app({"": SERVING}, delay=SLOW) as app:
            yield app.port


@pytest.mark.parametrize("kind", ["http", "grpc"], ids=str)
def test_a_probe_slower_than_its_timeout_fails(kind: str) -> None:
    with slow_app(kind) as port:
        started = time.monotonic()
        ok, detail = probe(check_of({kind: {}, "timeout": "100ms"}), LOOPBACK, port)
        took = time.monotonic() - started
        assert not ok and "no answer within the 0.1s timeout" in detail, detail
        assert took < SLOW  # the timeout ended the probe, not the app's answer
        ok, detail = probe(check_of({kind: {}, "timeout": "5s"}), LOOPBACK, port)
        assert ok, detail  # the same slow app within a longer timeout


#: A check whose probe is field 8, one this agent's protocol does not know (a
#: newer control plane's): parsed, it names none of the probes.
_UNKNOWN_PROBE = agent_pb2.HealthCheck.FromString(b"\x42\x00\x38\x01")


@pytest.mark.parametrize("check", [
    _UNKNOWN_PROBE,
    agent_pb2.HealthCheck(failure_threshold=1),
    agent_pb2.HealthCheck(),
], ids=["an-unknown-kind", "timing-only", "empty"])
def test_a_check_of_no_known_kind_fails_even_on_a_healthy_app(
    check: agent_pb2.HealthCheck
) -> None:
    with http_app(200) as port:
        ok, detail = probe(check, LOOPBACK, port)
    assert not ok
    assert detail == "nothing to probe: a health check needs one of http, tcp, grpc"


@pytest.mark.parametrize(("check", "timing"), [
    ({"http": {}}, CheckTiming(interval=5.0, timeout=2.0, initial_delay=0.0,
                               failure_threshold=3)),
    ({"tcp": {}, "interval": "250ms", "timeout": "1.5s", "initialDelay": "1m",
      "failureThreshold": 7}, CheckTiming(0.25, 1.5, 60.0, 7)),
], ids=["the-schema-defaults", "each-field"])
def test_check_timing_reads_each_field(check: dict[str, Any], timing: CheckTiming) -> None:
    assert CheckTiming.of(check_of(check)) == timing


# --- the schedule, on a fake clock ----------------------------------------------------

#: A tick and a grace of the test's own (binary fractions: exact sums).
TICK, GRACE = 0.25, 10.0
H, S, F, R = Verdict.HEALTHY, Verdict.STARTING, Verdict.FAILING, Verdict.RESTART


def drive(check: dict[str, Any], results: list[bool], seconds: float
          ) -> list[tuple[float, Verdict]]:
    """Supervise as the runner does for ``seconds``: wait a tick, probe if due.
    Probe n answers ``results[n]`` (the last one once they run out). Returns
    each probe's (seconds since the run started, verdict), up to a restart."""
    clock = FakeClock()
    start = clock.monotonic()
    schedule = HealthSchedule(CheckTiming.of(check_of({"http": {}, **check})), clock,
                              tick=TICK, grace=GRACE)
    seen: list[tuple[float, Verdict]] = []
    while clock.monotonic() - start < seconds and R not in (v for _, v in seen):
        clock.advance(TICK)
        ok = results[min(len(seen), len(results) - 1)]
        judged = schedule.probe_if_due(lambda: (ok, "passes" if ok else "fails"))
        if judged is not None:
            seen.append((clock.monotonic() - start, judged[0]))
    return seen


def times(seen: list[tuple[float, Verdict]]) -> list[float]:
    return [at for at, _ in seen]


def verdicts(seen: list[tuple[float, Verdict]]) -> list[Verdict]:
    return [verdict for _, verdict in seen]


@pytest.mark.parametrize(("check", "results", "seconds", "probed"), [
    ({"interval": "1s"}, [True], 3.5, [0.25, 1.25, 2.25, 3.25]),
    ({"interval": "3s"}, [True], 7.0, [0.25, 3.25, 6.25]),
    ({}, [True], 12.0, [0.25, 5.25, 10.25]),  # the 5s default
    # Until the first pass, every tick: a ready instance is noticed at once.
    ({"interval": "3s"}, [False, False, True], 4.0, [0.25, 0.5, 0.75, 3.75]),
    # After a pass, a failing probe is retried an interval later, not each tick.
    ({"interval": "2s"}, [True, False, False], 5.0, [0.25, 2.25, 4.25]),
], ids=["1s", "3s", "default-5s", "every-tick-until-the-first-pass",
        "failures-after-a-pass-keep-the-interval"])
def test_interval_spaces_the_probes(check: dict[str, Any], results: list[bool],
                                    seconds: float, probed: list[float]) -> None:
    assert times(drive(check, results, seconds)) == probed


@pytest.mark.parametrize(("check", "first"), [
    ({}, 0.25),
    ({"initialDelay": "2s"}, 2.0),
    ({"initialDelay": "1m", "interval": "1s"}, 60.0),
], ids=["none-by-default", "2s", "1m"])
def test_initial_delay_holds_the_first_probe(check: dict[str, Any], first: float) -> None:
    seen = drive(check, [True], first + 1.0)
    assert times(seen)[0] == first  # and none before it


@pytest.mark.parametrize(("threshold", "after_a_pass"), [
    (1, [R]),
    (2, [F, R]),
    (3, [F, F, R]),
    (None, [F, F, R]),  # the default, 3
    (5, [F, F, F, F, R]),
], ids=["1", "2", "3", "default-3", "5"])
def test_failure_threshold_failures_in_a_row_restart_one_fewer_do_not(
    threshold: int | None, after_a_pass: list[Verdict]
) -> None:
    check: dict[str, Any] = {"interval": "1s"}
    if threshold is not None:
        check["failureThreshold"] = threshold
    seen = drive(check, [True, False], 60.0)
    assert verdicts(seen) == [H, *after_a_pass]


def test_a_pass_between_failures_starts_the_count_again() -> None:
    results = [True, False, False, True, False, False, False]
    seen = drive({"interval": "1s", "failureThreshold": 3}, results, 60.0)
    assert verdicts(seen) == [H, F, F, H, F, F, R]


@pytest.mark.parametrize(("check", "grace_ends"), [
    ({}, GRACE),
    ({"initialDelay": "5s"}, 5.0 + GRACE),
], ids=["from-the-start", "beyond-the-initial-delay"])
def test_a_check_that_never_passes_is_starting_for_the_grace_then_restarts(
    check: dict[str, Any], grace_ends: float
) -> None:
    seen = drive(check, [False], 60.0)
    assert all(v is S for at, v in seen if at < grace_ends)
    # The failures during the grace count: the first one after it restarts.
    assert seen[-1] == (grace_ends, R)
