"""ConfigMap and Secret data for instances (spec.mounts, spec.envFrom): what an
instance gets, what apply refuses, what rolls the instances, how the agent
merges it and how the drivers lay the files out. Pure, plus a store in a temp
dir and files in one."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controlplane.convert import workload_to_pb
from controlplane.controllers.replicas import decide, service_desired
from controlplane.manifests import check_batch, to_resource
from controlplane.manifests.sources import env_problem, project, versions
from controlplane.model import ObjectKey, Resource
from controlplane.model.specs import ServiceSpec
from controlplane.server.agents import assignments_of
from controlplane.store import Store
from controlplane.store.sealing import Sealer, load_or_create_key
from sidecar.drivers.base import DriverError, MountedFiles, Workload
from sidecar.drivers.docker import user_ids
from sidecar.drivers.files import check_mounts, give, mount_path, write_mounts
from sidecar.runner import Assignment
from tests.unit.test_external import Objects


def make(kind: str, name: str, **spec: Any) -> Resource:
    return to_resource({"apiVersion": "flotilla.dev/v1", "kind": kind,
                        "metadata": {"name": name}, "spec": spec})


def stored(resource: Resource, generation: int = 1) -> Resource:
    """As the store keeps it: with a uid and a generation."""
    return replace(resource, uid=f"uid-{resource.name}", generation=generation)


SETTINGS = make("ConfigMap", "settings", data={"GREETING": "hello", "MODE": "configmap"})
FILES = make("ConfigMap", "files", data={"app.conf": "a = 1\n", "GREETING": "from files"})
CREDENTIALS = make("Secret", "credentials", stringData={"API_TOKEN": "s3cret",
                                                         "MODE": "secret"})
BINARY = make("Secret", "binary", data={"KEY": base64.b64encode(b"\xff\x00").decode()})
SPEC: dict[str, Any] = {
    "command": ["app"], "env": {"MODE": "env"},
    "envFrom": [{"configMap": "settings"}, {"secret": "credentials"}],
    "mounts": [{"configMap": "files", "path": "/etc/app"},
               {"secret": "credentials", "path": "/run/secrets/app"}],
}
#: ``SPEC`` as validated: what the reconciler and the assignments read.
SERVICE = ServiceSpec.model_validate(SPEC)
WORLD = Objects(SETTINGS, FILES, CREDENTIALS, BINARY)


# --- what an instance gets ---------------------------------------------------------


def test_env_from_takes_every_key_and_a_later_source_wins() -> None:
    projection = project(SERVICE, "default", WORLD.get)
    assert dict(projection.env) == {"GREETING": "hello", "MODE": "secret",
                                    "API_TOKEN": "s3cret"}
    assert projection.missing == ()


def test_mounts_carry_decoded_data_with_the_mode_of_their_kind() -> None:
    files, secret = project(SERVICE, "default", WORLD.get).mounts
    assert (files.path, dict(files.files), files.mode) == (
        "/etc/app", {"app.conf": b"a = 1\n", "GREETING": b"from files"}, 0o444)
    assert (secret.path, dict(secret.files), secret.mode) == (
        "/run/secrets/app", {"API_TOKEN": b"s3cret", "MODE": b"secret"}, 0o400)


def test_no_repr_shows_a_secret_value() -> None:
    projection = project(SERVICE, "default", WORLD.get)
    assert "s3cret" not in repr(projection)
    workload = Workload("i", "default", "app", 1, env=dict(projection.env),
                        mounts=[MountedFiles("/run/secrets/app", {"API_TOKEN": b"s3cret"}, 0o400)])
    assert "s3cret" not in repr(workload)


def test_an_object_gone_is_named_missing_and_gives_nothing() -> None:
    projection = project(SERVICE, "default", Objects(SETTINGS).get)
    assert set(projection.missing) == {ObjectKey("Secret", "default", "credentials"),
                                       ObjectKey("ConfigMap", "default", "files")}
    assert dict(projection.env) == {"GREETING": "hello", "MODE": "configmap"}
    assert projection.mounts == ()


# --- what apply refuses --------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    (SETTINGS, None),
    (CREDENTIALS, None),
    (FILES, "has keys that are not environment variable names ('app.conf'"),
    (make("ConfigMap", "digit", data={"1ST": "x", "x-y": "y"}), "('1ST', 'x-y'"),
    (BINARY, "has values that are not text ('KEY'"),
], ids=["configmap", "secret", "dotted-key", "digit-and-dash", "binary-value"])
def test_env_problem(source: Resource, expected: str | None) -> None:
    problem = env_problem(source)
    assert problem == expected if expected is None else expected in (problem or "")


def test_env_from_an_object_with_keys_that_are_no_variable_names_is_refused() -> None:
    service = make("Service", "web", command=["app"], envFrom=[{"configMap": "files"}])
    [problem] = check_batch([service], WORLD)
    assert problem.path == "spec.envFrom[0].configMap"
    assert "ConfigMap default/files has keys that are not environment variable names " \
           "('app.conf'" in problem.message
    assert "mount the ConfigMap as files (spec.mounts)" in problem.message
    mounted = make("Service", "web", command=["app"],
                   mounts=[{"configMap": "files", "path": "/etc/app"}])
    assert check_batch([mounted], WORLD) == []


def test_a_config_map_a_service_takes_env_from_keeps_fit_for_it() -> None:
    service = make("Service", "web", command=["app"], envFrom=[{"configMap": "settings"}])
    changed = make("ConfigMap", "settings", data={"GREETING": "hi", "log.level": "debug"})
    [problem] = check_batch([changed], Objects(SETTINGS, service))
    assert problem.path == "spec.data"
    assert "Service default/web takes its keys as environment variables " \
           "(spec.envFrom[0])" in problem.message
    # Changed together with the Service, the Service's side reports it once.
    both = check_batch([changed, service], Objects(SETTINGS))
    assert [p.path for p in both] == ["spec.envFrom[0].configMap"]
    assert check_batch([changed], Objects(SETTINGS)) == []  # nobody takes env from it


# --- what rolls the instances -----------------------------------------------------------


def test_the_template_holds_the_versions_of_the_objects_it_takes_data_from() -> None:
    plain = ServiceSpec.model_validate({"image": "web:1", "port": 8080})
    assert versions(plain, "default", WORLD.get) == {}
    # nothing rolls on upgrade
    assert service_desired(plain, {}).template == service_desired(plain).template
    world = Objects(stored(SETTINGS), stored(FILES), stored(CREDENTIALS))
    before = versions(SERVICE, "default", world.get)
    assert before == {"ConfigMap/files": "uid-files/1", "Secret/credentials": "uid-credentials/1",
                      "ConfigMap/settings": "uid-settings/1"}
    after = versions(SERVICE, "default", Objects(stored(SETTINGS, 2), stored(FILES),
                                              stored(CREDENTIALS)).get)
    assert service_desired(SERVICE, after).template != service_desired(SERVICE, before).template
    assert "s3cret" not in str(before)


def test_a_changed_config_map_replaces_the_instances_one_by_one() -> None:
    service = Resource(kind="Service", name="web", spec={
        **SPEC, "replicas": 2, "update": {"strategy": "rolling", "maxSurge": 1,
                                          "maxUnavailable": 0}})
    old = service_desired(service.typed(ServiceSpec), {"ConfigMap/settings": "u/1"})
    instances = [Resource(kind="Instance", name=name, spec={
        "service": "web", "node": "n1", "template": old.template},
        status={"state": "healthy"}) for name in ("a", "b")]
    assert decide(old, instances, {"n1"}).create == 0
    rolled = decide(service_desired(service.typed(ServiceSpec), {"ConfigMap/settings": "u/2"}),
                    instances, {"n1"})
    assert (rolled.create, rolled.remove) == (1, ())  # a surge first, nobody removed yet


# --- the assignment a node gets ------------------------------------------------------------


def test_the_assignment_carries_the_decoded_data_and_the_store_keeps_it_sealed(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "db", sealer=Sealer(load_or_create_key(tmp_path / "key")))
    try:
        store.apply([SETTINGS, FILES, CREDENTIALS])
        store.apply([Resource(kind="Instance", name=name, spec={
            "service": "web", "node": node, "driver": "process", "workload": SPEC})
            for name, node in (("web-a", "n1"), ("web-b", "n2"))])
        [assignment] = assignments_of(store, "n1").assignments
        assert assignment.instance_id == "web-a"
        assert dict(assignment.env_from) == {"GREETING": "hello", "MODE": "secret",
                                             "API_TOKEN": "s3cret"}
        assert [(m.path, dict(m.files), m.mode) for m in assignment.mounts] == [
            ("/etc/app", {"app.conf": b"a = 1\n", "GREETING": b"from files"}, 0o444),
            ("/run/secrets/app", {"API_TOKEN": b"s3cret", "MODE": b"secret"}, 0o400)]
    finally:
        store.close()
    for path in tmp_path.glob("db*"):  # the database and its write-ahead log
        assert b"s3cret" not in path.read_bytes(), path


def test_the_agent_puts_env_over_env_from() -> None:
    assignment = Assignment("i", "default", "web", 1,
                            workload_to_pb(SERVICE.workload(), "default"), "process",
                            env_from={"MODE": "secret", "API_TOKEN": "s3cret"},
                            mounts=(MountedFiles("/etc/app", {"k": b"v"}, 0o444),))
    workload = assignment.workload()
    assert dict(workload.env) == {"MODE": "env", "API_TOKEN": "s3cret"}
    assert [m.path for m in workload.mounts] == ["/etc/app"]
    assert "s3cret" not in repr(assignment)


# --- files on the node --------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("/etc/app", "/etc/app"), ("/etc/app/", "/etc/app"), ("//etc/./app", "/etc/app"),
    ("/etc/x/../app", "/etc/app"), ("/", None), ("/etc/../..", None), ("etc", None),
], ids=["plain", "trailing-slash", "doubled", "dot-dot", "root", "escapes-to-root", "relative"])
def test_mount_path(path: str, expected: str | None) -> None:
    mounted = MountedFiles(path, {})
    if expected is None:
        with pytest.raises(DriverError, match="absolute directory other than '/'"):
            mount_path(mounted)
    else:
        assert mount_path(mounted) == expected


def test_a_mount_path_with_a_colon_is_refused() -> None:
    with pytest.raises(DriverError, match="may not hold ':'"):
        mount_path(MountedFiles("/etc/a:b"))


def test_mounts_that_overlap_are_refused() -> None:
    with pytest.raises(DriverError, match="/etc/app and /etc/app/tls overlap"):
        check_mounts([MountedFiles("/etc/app"), MountedFiles("/etc/app/tls")])
    with pytest.raises(DriverError, match="overlap"):
        check_mounts([MountedFiles("/etc/app"), MountedFiles("/etc/app/")])
    assert check_mounts([MountedFiles("/etc/app"), MountedFiles("/etc/apps")]) == [
        "/etc/app", "/etc/apps"]


def test_files_get_exactly_their_mode_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        written = write_mounts(tmp_path / "i", [
            MountedFiles("/etc/app", {"a.conf": b"x" * 100_000}, 0o444),
            MountedFiles("/run/secrets", {"token": b"s3cret"}, 0o400)])
    finally:
        os.umask(previous)
    (config, config_at), (secret, secret_at) = written
    assert (config_at, secret_at) == ("/etc/app", "/run/secrets")
    assert stat.S_IMODE((config / "a.conf").stat().st_mode) == 0o444
    assert (config / "a.conf").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE((secret / "token").stat().st_mode) == 0o400
    assert stat.S_IMODE(secret.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "i").stat().st_mode) == 0o700
    give([config, secret], os.getuid(), os.getgid())  # the agent's own: nothing to do
    assert (secret / "token").stat().st_uid == os.getuid()


@pytest.mark.parametrize("key", ["..", ".", ""])
def test_a_key_that_is_no_file_name_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(DriverError, match="cannot be a file name"):
        write_mounts(tmp_path / "i", [MountedFiles("/etc/app", {key: b"x"})])


PASSWD = [["root", "x", "0", "0", "root", "/root", "/bin/sh"],
          ["app", "x", "1000", "1001", "", "/home/app", "/bin/sh"]]
GROUPS = [["root", "x", "0", ""], ["staff", "x", "50", ""]]


@pytest.mark.parametrize(("user", "expected"), [
    ("", (0, 0)), ("root", (0, 0)), ("app", (1000, 1001)), ("1000", (1000, 1001)),
    ("4242", (4242, 0)), ("app:staff", (1000, 50)), ("app:7", (1000, 7)), ("4242:7", (4242, 7)),
    ("nobody", "not in its /etc/passwd"), ("app:wheel", "not in its /etc/group"),
], ids=["default", "root", "name", "uid", "unknown-uid", "named-group", "gid", "uid-gid",
        "unknown-name", "unknown-group"])
def test_the_docker_user_resolves_as_the_engine_does(user: str,
                                                     expected: tuple[int, int] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(DriverError, match=expected):
            user_ids(user, lambda: PASSWD, lambda: GROUPS)
    else:
        assert user_ids(user, lambda: PASSWD, lambda: GROUPS) == expected
