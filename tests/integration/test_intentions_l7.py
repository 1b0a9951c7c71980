"""L7 intentions in real Envoys (`flotilla server --mtls --default-intention
deny`, process driver): a caller calls a callee through its sidecar, the
callee's sidecar enforces the intentions' http rules as RBAC, and
`flotilla intentions check` says the same of every request.

Each test applies its intentions with `apply --wait` (every proxy ACKed them,
none NACKed) and deletes them afterwards, so the next test's `--wait` covers
the deletion too. An ACK is not yet the whole change: Envoy updates the
callee's inbound filter chain in place, and a connection the caller's sidecar
pooled before it stays on the old chain, old RBAC and all, while that chain
drains (sidecars run with ``--drain-time-s 2``). So after each apply the test
polls the callee's admin until nothing warms or drains."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.envoy import Admin
from tests.harness import AgentProcess, ServerProcess, eventually, run_cli
from tests.integration.test_mtls import service, serving, upstream_of


@dataclass
class Pair:
    """A caller and a callee, each with its sidecar."""

    server: ServerProcess
    #: host:port of the caller's outbound listener for callee (what its app dials).
    upstream: str
    #: The callee's sidecar's admin API.
    callee: Admin

    def status(self, path: str, headers: Mapping[str, str] = {}) -> int:
        """The HTTP status of a GET through both sidecars (header values sent
        as UTF-8)."""
        host, _, port = self.upstream.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            connection.request("GET", path, headers={k: v.encode() for k, v in headers.items()})
            return connection.getresponse().status
        finally:
            connection.close()

    def check(self, path: str, headers: Mapping[str, str] = {}) -> tuple[int, str]:
        """What `flotilla intentions check caller callee` says of the same
        request: 200 for allowed (exit 0), 403 for denied (exit 1), and why."""
        args = ["intentions", "check", "caller", "callee", "--path", path, "--method", "GET"]
        for name, value in headers.items():
            args += ["--header", f"{name}={value}"]
        done = run_cli(*args, server=self.server)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        return (200 if done.returncode == 0 else 403), done.stdout.strip()

    def settled(self) -> bool:
        """The callee's sidecar runs only its current inbound config: no
        listener warms and no filter chain from before a change drains."""
        _, body = self.callee.get("/stats?filter=^listener_manager\\.total_"
                                  "(listeners_warming|filter_chains_draining)$")
        values = [line.rpartition(":")[2].strip() for line in body.decode().splitlines()]
        return values == ["0", "0"]


def admin_of(agent_dir: Path, instance: dict[str, Any]) -> Admin:
    name = instance["metadata"]["name"]
    state = json.loads((agent_dir / "instances" / name / "state.json").read_text())
    return Admin("127.0.0.1", int(state["admin_port"]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("l7")
    server = ServerProcess(tmp / "server", extra_args=(
        "--mtls", "--trust-domain", "mesh.test", "--default-intention", "deny")).start()
    agent: AgentProcess | None = None
    try:
        agent = AgentProcess(server, "n1", "127.0.0.2", tmp / "n1").start()
        with server.client() as client:
            client.apply([(service("callee", 1), "callee"),
                          (service("caller", 1, upstreams=[{"name": "callee"}]), "caller")])
            callee = eventually(lambda: serving(client, "callee", 1), 60, "the callee")[0]
            caller = eventually(lambda: serving(client, "caller", 1), 60, "the caller")[0]
        found = Pair(server, upstream_of(tmp / "n1", caller, "callee"),
                     admin_of(tmp / "n1", callee))

        def denied_by_the_callee() -> bool:
            try:
                return found.status("/") == 403  # RBAC: no intention yet, the default
            except OSError:
                return False

        eventually(denied_by_the_callee, 30, "the callee's sidecar to answer over mTLS")
        yield found
    finally:
        if agent is not None:
            agent.cleanup()
        server.stop()


def intention(name: str, action: str, *, source: str = "caller", destination: str = "callee",
              namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Intention",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": source, "destination": destination, "action": action, **spec}}


Apply = Callable[..., None]


@pytest.fixture
def intentions(pair: Pair, tmp_path: Path) -> Iterator[Apply]:
    """``intentions(doc, ...)``: applied with `--wait`, deleted after the test."""
    applied: list[tuple[str, str, str]] = []

    def apply(*docs: dict[str, Any]) -> None:
        path = tmp_path / f"intentions-{len(applied)}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        done = run_cli("apply", "-f", str(path), "--wait", server=pair.server)
        applied.extend(("Intention", d["metadata"]["namespace"], d["metadata"]["name"])
                       for d in docs)
        assert done.returncode == 0, done.stdout + done.stderr
        eventually(pair.settled, 15, "the callee's sidecar to drain what it accepted before")

    yield apply
    with pair.server.client() as client:
        client.delete(applied, ignore_not_found=True)


Case = tuple[str, dict[str, str], int]


def outcomes(pair: Pair, cases: list[Case]) -> None:
    """Every request gets its expected status from Envoy, and the check
    command decides it the same way (all cases are reported at once)."""
    wrong = []
    for path, headers, expected in cases:
        envoy, (check, said) = pair.status(path, headers), pair.check(path, headers)
        if (envoy, check) != (expected, expected):
            wrong.append(f"GET {path} {headers}: Envoy {envoy}, check {check} ({said}), "
                         f"expected {expected}")
    assert wrong == []


#: As a regex (what rbac.py compiled pathExact to), an RE2 program Envoy refuses.
LONG = "/" + "long/" * 25


def test_path_exact_allows_exactly_that_path(pair: Pair, intentions: Apply) -> None:
    intentions(intention("caller-to-callee", "allow", http=[{"pathExact": "/exact"},
                                                            {"pathExact": LONG}]))
    outcomes(pair, [
        ("/exact", {}, 200),
        ("/exact?page=2", {}, 200),  # the query string is not part of the path
        ("/exact/", {}, 403),
        ("/exactly", {}, 403),
        ("/EXACT", {}, 403),
        ("/", {}, 403),
        (LONG, {}, 200),
        (LONG + "x", {}, 403),
    ])


def test_each_header_match_allows_only_matching_requests(pair: Pair, intentions: Apply) -> None:
    intentions(intention("caller-to-callee", "allow", http=[
        {"headers": [{"name": "X-Exact", "exact": "core"}]},
        {"headers": [{"name": "x-prefix", "prefix": "co"}]},
        {"headers": [{"name": "x-regex", "regex": r"v\d+"}]},
        {"headers": [{"name": "x-present", "present": True}]},
        {"pathPrefix": "/absent", "headers": [{"name": "x-debug", "present": False}]},
    ]))
    outcomes(pair, [
        ("/", {}, 403),
        # name: matched case-insensitively, and only that header's value counts
        ("/", {"x-exact": "core"}, 200),
        ("/", {"x-other": "core"}, 403),
        # exact
        ("/", {"x-exact": "core-2"}, 403),
        ("/", {"x-exact": "Core"}, 403),
        # prefix
        ("/", {"x-prefix": "core-2"}, 200),
        ("/", {"x-prefix": "edge"}, 403),
        # regex: RE2 against the whole value
        ("/", {"x-regex": "v12"}, 200),
        ("/", {"x-regex": "v12-rc"}, 403),
        ("/", {"x-regex": "xv12"}, 403),
        # RE2's \d is ASCII: an Arabic-Indic 3 is no digit to Envoy (Python's re
        # would match it, so a check with re.fullmatch would say allowed)
        ("/", {"x-regex": "v\u0663"}, 403),
        # present: any value, the empty one too
        ("/", {"x-present": "anything"}, 200),
        ("/", {"x-present": ""}, 200),
        # present: false
        ("/absent", {}, 200),
        ("/absent", {"x-debug": "1"}, 403),
    ])


def test_a_deny_with_a_path_rule_wins_the_tie_for_just_that_path(
        pair: Pair, intentions: Apply) -> None:
    # Both exact -> exact (precedence 9): at equal precedence the deny decides
    # first, and where its rule does not match, it does not apply.
    intentions(intention("caller-to-callee", "allow"),
               intention("no-admin", "deny", source="default/caller",
                         destination="default/callee", namespace="ops",
                         http=[{"pathPrefix": "/admin"}]))
    outcomes(pair, [
        ("/admin", {}, 403),
        ("/admin/users?id=1", {}, 403),
        ("/", {}, 200),
        ("/adm", {}, 200),
        ("/public/admin", {}, 200),
    ])
    assert "DENY by intention ops/no-admin (precedence 9, http rule 0)" in pair.check("/admin")[1]
    assert "ALLOW by intention default/caller-to-callee (precedence 9)" in pair.check("/")[1]


def test_a_more_exact_allow_outranks_a_wildcard_deny(pair: Pair, intentions: Apply) -> None:
    intentions(intention("caller-to-callee", "allow"),
               intention("nobody-to-admin", "deny", source="*",
                         http=[{"pathPrefix": "/admin"}]))
    outcomes(pair, [("/admin", {}, 200), ("/", {}, 200)])
