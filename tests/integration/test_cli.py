"""The CLI against a real `flotilla server` subprocess: every kind round-trips
through apply / get / describe / delete, and exit codes mean what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ServerProcess, free_port, run_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
ALL_KINDS = ["Service", "TrafficPolicy", "Intention", "Gateway", "ConfigMap", "Secret"]


def test_examples_cover_every_kind() -> None:
    kinds = {
        doc["kind"]
        for path in EXAMPLES.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert kinds == set(ALL_KINDS)


def test_apply_get_describe_delete_round_trip(server: ServerProcess) -> None:
    first = run_cli("apply", "-f", str(EXAMPLES), server=server)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(" created") == 9

    again = run_cli("apply", "-f", str(EXAMPLES), server=server)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" unchanged") == 9 and " created" not in again.stdout

    listed = run_cli("get", "all", "-o", "json", server=server)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert sorted({i["kind"] for i in items}) == sorted(ALL_KINDS)
    versions = [i["metadata"]["resourceVersion"] for i in items]
    assert len(set(versions)) == 9 and min(versions) >= 1  # one write each (and statuses)

    for kind in ALL_KINDS:
        table = run_cli("get", kind, server=server)
        assert table.returncode == 0, table.stderr
        assert "NAME" in table.stdout
        for item in (i for i in items if i["kind"] == kind):
            name = item["metadata"]["name"]
            assert name in table.stdout
            one = json.loads(run_cli("get", kind, name, "-o", "json", server=server).stdout)
            assert one["kind"] == kind and one["metadata"]["name"] == name
            assert one["spec"] == item["spec"]
            as_yaml = yaml.safe_load(run_cli("get", kind, name, "-o", "yaml", server=server).stdout)
            assert as_yaml == one
            described = run_cli("describe", kind, name, server=server)
            assert described.returncode == 0, described.stderr
            assert "Name:" in described.stdout and name in described.stdout
            assert f"Kind:             {kind}" in described.stdout

    # Referenced objects cannot be deleted alone; everything at once works.
    refused = run_cli("delete", "service", "backend", server=server)
    assert refused.returncode == 1
    assert "still referenced by" in refused.stderr
    deleted = run_cli("delete", "-f", str(EXAMPLES), server=server)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.count(" deleted") == 9
    empty = json.loads(run_cli("get", "all", "-o", "json", server=server).stdout)
    assert empty["items"] == []


def test_secret_values_are_never_printed(server: ServerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(
        "apiVersion: flotilla.dev/v1\nkind: Secret\nmetadata: {name: db}\n"
        "spec:\n  stringData: {password: hunter2-very-secret}\n"
    )
    assert run_cli("apply", "-f", str(manifest), server=server).returncode == 0
    for args in (["get", "secret", "db", "-o", "json"], ["get", "secret", "db", "-o", "yaml"],
                 ["describe", "secret", "db"], ["get", "all", "-o", "json"]):
        shown = run_cli(*args, server=server)
        assert shown.returncode == 0, shown.stderr
        assert "hunter2" not in shown.stdout and "aHVudGVyMi" not in shown.stdout
        assert "password" in shown.stdout
    # ...and not readable in the database file either (encrypted at rest).
    raw = (server.data_dir / "flotilla.db").read_bytes()
    wal = server.data_dir / "flotilla.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"hunter2" not in raw and b"aHVudGVyMi" not in raw


def test_stdin_and_namespaces(server: ServerProcess) -> None:
    manifest = (
        "apiVersion: flotilla.dev/v1\nkind: ConfigMap\n"
        "metadata: {name: settings, namespace: team-a, labels: {tier: web}}\n"
        "spec: {data: {mode: fast}}\n"
    )
    applied = run_cli("apply", "-f", "-", server=server, stdin=manifest)
    assert applied.returncode == 0, applied.stderr
    assert "ConfigMap team-a/settings created" in applied.stdout
    assert "settings" not in run_cli("get", "cm", server=server).stdout
    assert "settings" in run_cli("get", "cm", "-n", "team-a", server=server).stdout
    wide = run_cli("get", "cm", "-A", "-l", "tier=web", server=server)
    assert "team-a" in wide.stdout and "settings" in wide.stdout
    assert "settings" not in run_cli("get", "cm", "-A", "-l", "tier=db", server=server).stdout


def test_unreachable_server_is_one_line_and_exit_3() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("get", "services", address=address)
    assert result.returncode == 3
    assert address in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines()[0].startswith("error: cannot reach the Flotilla server")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["frobnicate"], 2),
        (["apply"], 2),
        (["get", "gizmos"], 2),
        (["get", "svc", "-o", "xml"], 2),
        (["get", "svc", "nope"], 1),
        (["delete", "svc", "nope"], 1),
    ],
    ids=["unknown-command", "apply-without-file", "unknown-kind", "bad-output", "get-missing",
         "delete-missing"],
)
def test_exit_codes(server: ServerProcess, args: list[str], code: int) -> None:
    result = run_cli(*args, server=server)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if code == 1:
        assert "not found" in result.stderr


def test_describe_shows_an_intentions_description(server: ServerProcess) -> None:
    why = "Payments may call the ledger; nobody else may (PCI scope)."
    manifest = ("apiVersion: flotilla.dev/v1\nkind: Intention\nmetadata: {name: pci}\n"
                f"spec: {{source: '*', destination: '*', action: deny, description: '{why}'}}\n")
    assert run_cli("apply", "-f", "-", server=server, stdin=manifest).returncode == 0
    described = run_cli("describe", "intention", "pci", server=server)
    assert described.returncode == 0, described.stderr
    assert f"description: {why}" in described.stdout


def test_dry_run_stores_nothing(server: ServerProcess) -> None:
    result = run_cli("apply", "-f", str(EXAMPLES / "backend.yaml"), "--dry-run", server=server)
    assert result.returncode == 0, result.stderr
    assert "created (dry run)" in result.stdout
    assert json.loads(run_cli("get", "all", "-o", "json", server=server).stdout)["items"] == []


@pytest.mark.parametrize("args", [["get", "all"], ["get", "services", "-o", "name"],
                                  ["get", "services", "-o", "yaml"], ["--help"]],
                         ids=["table", "names", "yaml", "help"])
def test_a_closed_pipe_ends_the_cli_quietly_with_exit_0(server: ServerProcess,
                                                        args: list[str]) -> None:
    """`flotilla get ... | head -1` under `set -o pipefail`: the reader is gone
    before the CLI writes (the read end closed first makes that certain)."""
    assert run_cli("apply", "-f", str(EXAMPLES), server=server).returncode == 0
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "controlplane", *args], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=60,
                                env={**os.environ, "FLOTILLA_SERVER": server.address})
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "")


def _command_paths() -> list[list[str]]:
    import click

    from controlplane.cli import cluster, main, mesh  # noqa: F401 - registers commands

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        found = []
        for name, command in sorted(group.commands.items()):
            found.append([*prefix, name])
            if isinstance(command, click.Group):
                found += walk(command, [*prefix, name])
        return found

    return walk(main.cli, [])


def test_every_command_takes_log_level() -> None:
    paths = _command_paths()
    assert len(paths) >= 20
    script = ("import sys; from click.testing import CliRunner; from controlplane.cli import "
              "main, flotilla; main.with_log_level(main.cli); paths = " + repr(paths) +
              "; bad = [p for p in paths if CliRunner().invoke(main.cli, [*p, '--log-level', "
              "'debug', '--help']).exit_code != 0]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert run_cli("--log-level", "bogus", "get", "svc").returncode == 2


def test_a_server_logs_less_when_asked(tmp_path: Path) -> None:
    logs = []
    for name, args in (("default", ()), ("quiet", ("--log-level", "warning"))):
        server = ServerProcess(tmp_path / name, extra_args=args).start()
        try:
            assert run_cli("get", "svc", server=server).returncode == 0
        finally:
            server.stop()
        logs.append(server.log())
    assert " INFO " in logs[0] and " INFO " not in logs[1], logs
