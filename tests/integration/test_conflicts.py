"""Optimistic concurrency against a real server: two writers from the same
resourceVersion, exactly one wins; the loser is told which object and why."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import errors
from controlplane.client import Client
from tests.harness import ServerProcess, run_cli


def config_map(data: str, version: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "shared"}
    if version:
        meta["resourceVersion"] = version
    return {"apiVersion": "flotilla.dev/v1", "kind": "ConfigMap", "metadata": meta,
            "spec": {"data": {"owner": data}}}


def race(server: ServerProcess, version: int, round_: int) -> list[object]:
    """Two clients apply different content from ``version`` at the same instant."""
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def writer(index: int) -> None:
        with server.client() as client:
            client.get("ConfigMap", "shared")  # connection is up before the race
            barrier.wait()
            try:
                results[index] = client.apply([(config_map(f"w{index}-{round_}", version), "")])
            except errors.FlotillaError as error:
                results[index] = error

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_exactly_one_of_two_concurrent_writers_wins(server: ServerProcess,
                                                    client: Client) -> None:
    version = client.apply([(config_map("seed"), "")])[0].doc["metadata"]["resourceVersion"]
    for round_ in range(20):
        results = race(server, version, round_)
        conflicts = [r for r in results if isinstance(r, errors.Conflict)]
        wins = [r for r in results if isinstance(r, list)]
        assert len(wins) == 1 and len(conflicts) == 1, results
        assert "ConfigMap default/shared" in str(conflicts[0])
        assert f"resourceVersion {version}" in str(conflicts[0])
        stored = client.get("ConfigMap", "shared")
        winner = wins[0][0].doc  # type: ignore[index]
        assert stored["spec"] == winner["spec"]
        assert stored["metadata"]["resourceVersion"] == version + 1
        version = stored["metadata"]["resourceVersion"]


def test_stale_version_through_the_cli(server: ServerProcess, client: Client,
                                       tmp_path: Path) -> None:
    client.apply([(config_map("one"), "")])
    current = client.get("ConfigMap", "shared")
    client.apply([(config_map("two"), "")])  # someone else moves it on
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump(config_map("mine", current["metadata"]["resourceVersion"])))
    result = run_cli("apply", "-f", str(stale), server=server)
    assert result.returncode == 1
    assert "ConfigMap default/shared was changed by someone else" in result.stderr
    assert client.get("ConfigMap", "shared")["spec"]["data"] == {"owner": "two"}


@pytest.mark.parametrize("change", ["spec", "labels"])
def test_generation_follows_spec_only(client: Client, change: str) -> None:
    first = client.apply([(config_map("a"), "")])[0].doc["metadata"]
    doc = config_map("a" if change == "labels" else "b")
    if change == "labels":
        doc["metadata"]["labels"] = {"team": "x"}
    second = client.apply([(doc, "")])[0]
    assert second.action == "configured"
    assert second.doc["metadata"]["resourceVersion"] > first["resourceVersion"]
    expected = first["generation"] + (1 if change == "spec" else 0)
    assert second.doc["metadata"]["generation"] == expected
    assert second.doc["metadata"]["uid"] == first["uid"]
