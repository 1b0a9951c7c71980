"""What a Service takes from ConfigMaps and Secrets: ``spec.mounts`` (each key
a file in the mount's directory) and ``spec.envFrom`` (each key an environment
variable). Pure: the objects come through a lookup.

Contract:

- :func:`project` is where a Secret's values are decoded for an instance. The
  control plane calls it only to build the assignments of the node that runs
  the instance (:mod:`controlplane.server.agents`), whose agent stream (mutual
  TLS) is the only place the values go. Nothing here logs, and the values are
  left out of every ``repr``.
- :func:`versions` names each object an instance takes data from by
  ``uid/generation``, never by a digest of its data: the versions go into the
  Service's template hash (a change to the object rolls the instances), which
  anyone who may read Instances sees, and a digest of a short Secret value
  could be guessed back.
- :func:`env_problem` says why an object's data cannot be environment
  variables (keys that are no variable names, values that are no text); apply
  refuses ``envFrom`` of such an object (:mod:`references`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.model.types import ENV_NAME
from controlplane.model import ObjectKey, Resource
from controlplane.model.specs import ConfigMapSpec, SecretSpec
from controlplane.model.specs.service import EnvFrom, Mount, WorkloadFields

#: The kinds a Service takes files and environment from.
CONFIG_KINDS = ("ConfigMap", "Secret")
#: Permission bits of mounted files: readable by the app's user only for a
#: Secret's, by everyone for a ConfigMap's.
SECRET_MODE = 0o400
CONFIG_MAP_MODE = 0o444

#: Reads one stored object (None when there is none).
Lookup = Callable[[ObjectKey], Resource | None]


@dataclass(frozen=True)
class ProjectedMount:
    """One ``spec.mounts`` entry with its object's data."""

    #: The directory inside the instance, as the manifest gives it.
    path: str
    #: File name (a key of the object's data) -> content.
    files: Mapping[str, bytes] = field(repr=False)
    mode: int


@dataclass(frozen=True)
class Projection:
    """What an instance gets from the objects its Service names."""

    #: ``spec.envFrom`` resolved, a later source winning over an earlier one
    #: (``spec.env`` wins over all of them: the agent merges it on top).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    mounts: tuple[ProjectedMount, ...] = ()
    #: Objects not found: apply and delete keep every Service's sources in
    #: place, but an old instance (rolling away) may outlive its Service's
    #: reference to a since deleted object; it goes without that object's data.
    missing: tuple[ObjectKey, ...] = ()


def source_key(item: Mount | EnvFrom, namespace: str) -> ObjectKey:
    """The object one ``mounts`` or ``envFrom`` entry names."""
    if item.config_map:
        return ObjectKey("ConfigMap", namespace, item.config_map)
    return ObjectKey("Secret", namespace, str(item.secret))


def sources_of(workload: WorkloadFields, namespace: str) -> list[ObjectKey]:
    """Every object a workload mounts or takes env from, each once."""
    items: list[Mount | EnvFrom] = [*workload.mounts, *workload.env_from]
    return list(dict.fromkeys(source_key(item, namespace) for item in items))


def data_of(resource: Resource) -> dict[str, bytes]:
    """A ConfigMap's or Secret's data as bytes (a Secret's base64 decoded)."""
    if resource.kind == "Secret":
        return {key: _decoded(value) for key, value in resource.typed(SecretSpec).data.items()}
    return {key: value.encode() for key, value in resource.typed(ConfigMapSpec).data.items()}


def _decoded(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):  # validated on apply: not from the API
        return b""


def _text(value: bytes) -> str | None:
    """``value`` as an environment variable's value, or None when it cannot be one."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def env_problem(resource: Resource) -> str | None:
    """Why ``resource``'s data cannot all be environment variables, or None."""
    data = data_of(resource)
    names = sorted(key for key in data if not ENV_NAME.match(key))
    values = sorted(key for key, value in data.items() if _text(value) is None)
    problems = []
    if names:
        problems.append(
            f"has keys that are not environment variable names ({_quoted(names)}: use "
            "letters, digits and '_', not starting with a digit)")
    if values:
        problems.append(f"has values that are not text ({_quoted(values)}: not UTF-8, "
                        "or holding a NUL byte)")
    return " and ".join(problems) or None


def _quoted(keys: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def project(workload: WorkloadFields, namespace: str, lookup: Lookup) -> Projection:
    """The files and environment an instance of ``workload`` gets now."""
    env: dict[str, str] = {}
    mounts: list[ProjectedMount] = []
    missing: list[ObjectKey] = []
    found: dict[ObjectKey, Resource | None] = {}

    def get(key: ObjectKey) -> Resource | None:
        if key not in found:
            found[key] = lookup(key)
            if found[key] is None:
                missing.append(key)
        return found[key]

    for item in workload.env_from:
        source = get(source_key(item, namespace))
        if source is None:
            continue
        for key, value in data_of(source).items():
            text = _text(value)
            if ENV_NAME.match(key) and text is not None:  # apply refuses the others
                env[key] = text
    for mount in workload.mounts:
        source = get(source_key(mount, namespace))
        if source is not None:
            mode = SECRET_MODE if source.kind == "Secret" else CONFIG_MAP_MODE
            mounts.append(ProjectedMount(mount.path, data_of(source), mode))
    return Projection(env, tuple(mounts), tuple(missing))


def versions(workload: WorkloadFields, namespace: str, lookup: Lookup) -> dict[str, str]:
    """``Kind/name`` -> ``uid/generation`` of each object the workload takes
    data from (``missing`` for one not found); empty when it takes none."""
    out: dict[str, str] = {}
    for key in sources_of(workload, namespace):
        found = lookup(key)
        out[f"{key.kind}/{key.name}"] = (
            f"{found.uid}/{found.generation}" if found is not None else "missing")
    return out
