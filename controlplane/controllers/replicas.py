"""How many instances a Service (or a Gateway) needs created or removed:
pure decisions.

What either asks to run is a :class:`Desired`: how many instances, how to
roll them, where they may go, and the workload each one runs. Its
*template* is what shapes one instance (image, command, env, port,
resources, ...), hashed; changing ``replicas``, ``autoscaling``, ``update``
or ``placement`` does not change it. The template also holds the versions
of the ConfigMaps and Secrets the spec mounts or takes env from
(:func:`controlplane.manifests.sources.versions`), so changing one of them
makes a new template too. Instances of an older template are replaced by a
rolling update bounded by ``maxSurge`` and ``maxUnavailable``.

Contract: a template hash is computed from the camelCase JSON the hash has
always been computed from (a Service's stored spec minus
:data:`NOT_TEMPLATE`; a Gateway's Envoy as :func:`gateway_desired` spells
it), so instances stored by an earlier version keep their template and do
not roll on upgrade.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from controlplane.model import Resource
from controlplane.model.endpoints import SERVING
from controlplane.model.specs import GatewaySpec, InstanceSpec, ServiceSpec, Workload
from controlplane.model.specs.common import PlacementSpec
from controlplane.model.specs.service import ResourceLimits, UpdateStrategy

#: Spec fields that do not shape an instance (the ones a Service has
#: besides its workload: changing them replaces no instance).
NOT_TEMPLATE = ("replicas", "autoscaling", "update", "placement", "registration")

#: What a Gateway's Envoy is given on its node (millicores, MiB).
GATEWAY_RESOURCES = ResourceLimits(cpu=100, memory=64)
#: The driver that runs a Gateway's Envoy (the agent runs it like a sidecar).
GATEWAY_DRIVER: Final = "process"


def template_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's JSON form minus the fields that do not shape an instance."""
    return {k: v for k, v in spec.items() if k not in NOT_TEMPLATE}


def template_hash(template: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> str:
    """The hash of a template's JSON form. ``sources``: ``Kind/name`` ->
    version of each object the workload takes data from (a template without
    any hashes as it always did)."""
    hashed = dict(template)
    if sources:
        hashed["$sources"] = dict(sources)
    raw = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Desired:
    """What a Service or a Gateway asks to run. Build it with
    :func:`service_desired` or :func:`gateway_desired`."""

    replicas: int
    update: UpdateStrategy
    placement: PlacementSpec
    #: What each instance runs (its Instance's ``spec.workload``).
    workload: Workload
    #: The template's JSON form (camelCase): what :attr:`template` hashes.
    template_fields: Mapping[str, Any]
    #: ``Kind/name`` -> version of each object the workload takes data from.
    sources: Mapping[str, str] = field(default_factory=dict)
    #: The instances are a Gateway's Envoys.
    gateway: bool = False

    @functools.cached_property
    def template(self) -> str:
        """The template's hash, as each Instance's ``spec.template`` holds it."""
        return template_hash(self.template_fields, self.sources)


def service_desired(spec: ServiceSpec, sources: Mapping[str, str] | None = None) -> Desired:
    """What a Service runs, with the versions of its ``sources``."""
    return Desired(replicas=spec.desired_replicas, update=spec.update, placement=spec.placement,
                   workload=spec.workload(), template_fields=template_of(spec.to_dict()),
                   sources=dict(sources or {}))


def gateway_desired(spec: GatewaySpec) -> Desired:
    """A Gateway runs as ``spec.replicas`` instances, placed by its
    ``spec.placement``, of a workload that is only an Envoy (run by the agent
    like a sidecar) holding the listener ports on its node: those host ports
    keep two replicas off one node. Its routes reach Envoy over xDS, so
    changing them replaces nothing; changing its ports does, one replica at a
    time. With several replicas one of them may be down meanwhile
    (``maxUnavailable: 1``): where a replica runs on every node, a new one
    finds its ports free only on a node an old one left."""
    ports = sorted({listener.port for listener in spec.listeners})
    update = UpdateStrategy.model_validate(
        {"strategy": "rolling", "maxSurge": 1, "maxUnavailable": 1 if spec.replicas > 1 else 0})
    return Desired(
        replicas=spec.replicas, update=update, placement=spec.placement,
        workload=Workload(gateway=True, host_ports=ports, driver=GATEWAY_DRIVER,
                          resources=GATEWAY_RESOURCES),
        # The JSON the hash was always computed from (not the Workload's, which
        # spells out every default).
        template_fields={"gateway": True, "hostPorts": ports, "driver": GATEWAY_DRIVER,
                         "resources": GATEWAY_RESOURCES.to_dict()},
        gateway=True,
    )


def available(instance: Resource) -> bool:
    return instance.status.get("state") in SERVING


@dataclass(frozen=True)
class Decision:
    create: int
    #: Instance names to delete, most expendable first.
    remove: tuple[str, ...]


def decide(desired: Desired | None, instances: Sequence[Resource],
           usable_nodes: set[str]) -> Decision:
    """What to do so that ``instances`` converge on ``desired`` (None: its
    Service or Gateway is gone).

    Instances placed on a node that is not usable (down, draining, gone) are
    lost: removed, and replaced like any missing instance.
    """
    if desired is None:
        return Decision(0, tuple(i.name for i in instances))
    lost = [i for i in instances if _node(i) and _node(i) not in usable_nodes]
    current = [i for i in instances if i not in lost]
    want = desired.replicas
    surge, unavailable = desired.update.max_surge, desired.update.max_unavailable
    if desired.update.strategy == "recreate":
        surge, unavailable = 0, want
    new = [i for i in current if i.typed(InstanceSpec).template == desired.template]
    old = [i for i in current if i.typed(InstanceSpec).template != desired.template]

    create = max(0, want - len(new))
    if old:
        create = max(0, min(create, want + surge - len(current)))
        ready = sum(1 for i in current if available(i))
        spare = ready - (want - unavailable)
        # Unavailable old instances cost nothing to remove; available ones only
        # as far as the budget allows.
        doomed = [i for i in _expendable(old) if not available(i)]
        doomed += [i for i in _expendable(old) if available(i)][:max(0, spare)]
        remove = doomed
    else:
        remove = _expendable(new)[:max(0, len(new) - want)]
    return Decision(create, tuple(i.name for i in lost + remove))


def _node(instance: Resource) -> str:
    return instance.typed(InstanceSpec).node


def _expendable(instances: Sequence[Resource]) -> list[Resource]:
    """Unplaced first, then unavailable, then the newest."""
    return sorted(
        instances,
        key=lambda i: (bool(_node(i)), available(i), -i.create_time, i.name),
    )
