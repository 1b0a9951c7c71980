"""An instance's life on a Docker node (issue 12), with a real server, a real
agent with the docker driver and real Envoy sidecar containers (the fixture of
test_docker_sidecar.py):

- an app container that exited is removed with its pod, and `flotilla logs`
  still shows its last output;
- a killed Envoy container is started again, counted in the instance's
  sidecar restarts (RESTARTS), and the reason clears once it serves.
"""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.client import Client
from sidecar.runner import InstanceRunner
from tests.e2e.test_docker_driver import (  # noqa: F401 - flotilla_images is a fixture
    HTTP_IMAGE,
    flotilla_images,
)
from tests.e2e.test_docker_sidecar import (  # noqa: F401 - mesh is a fixture
    READY_SECONDS,
    Mesh,
    mesh,
    service,
)
from tests.harness import eventually, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def status_of(client: Client, service_name: str) -> tuple[str, dict[str, Any]] | None:
    found = client.list("Instance", "default", {"flotilla.dev/service": service_name})[0]
    return (found[0]["metadata"]["name"], found[0].get("status", {})) if len(found) == 1 \
        else None


def test_exited_output_is_kept_and_envoy_restarts_are_counted(mesh: Mesh) -> None:  # noqa: F811
    job = {"apiVersion": "flotilla.dev/v1", "kind": "Service", "metadata": {"name": "job"},
           "spec": {"image": HTTP_IMAGE, "replicas": 1, "restartPolicy": "never",
                    "command": ["python3", "-c", "print('the job says goodbye', flush=True)"],
                    "resources": {"cpu": 100, "memory": 64}}}
    with mesh.server.client() as client:
        client.apply([(job, "job"), (service("web", 8080, 1), "web")])
        try:
            eventually(lambda: (found := status_of(client, "job")) and
                       found[1].get("state") == "exited", READY_SECONDS, "the job to exit")
            name, web = eventually(lambda: (found := status_of(client, "web")) and
                                   found[1].get("state") == "healthy" and found,
                                   READY_SECONDS, "a healthy web instance")
        except AssertionError as error:
            raise AssertionError(f"{error}; {mesh.why()}") from None

        # The job's pod is gone; its output is not.
        eventually(lambda: not mesh.containers(**{"dev.flotilla.service": "job"}), 30,
                   "the job's containers to be removed")
        shown = run_cli("logs", "job", server=mesh.server)
        assert shown.returncode == 0 and "the job says goodbye" in shown.stdout, shown

        mesh.container(name, "envoy").kill()

        def recovered() -> dict[str, Any] | None:
            found = status_of(client, "web")
            status = found[1] if found else {}
            return status if status.get("sidecarRestarts") == 1 and \
                status.get("state") == "healthy" and \
                status.get("reason") != InstanceRunner.SIDECAR_DOWN else None

        status = eventually(recovered, 60, "the Envoy back, counted, its reason cleared")
        assert status["restarts"] == web["restarts"] == 0, "only the Envoy restarted"
        assert mesh.container(name, "envoy").status == "running"
        listed = run_cli("get", "instances", "web", server=mesh.server)
        assert "1 (1 sidecar)" in listed.stdout, listed.stdout
        client.delete([("Service", "default", "job"), ("Service", "default", "web")])
        eventually(lambda: not mesh.containers(), 60, "every container to be removed")
