"""How many instances a Service needs created or removed: pure decisions.

A Service's *template* is everything in its spec that shapes one instance
(image, command, env, port, resources, ...), hashed; changing ``replicas``,
``autoscaling`` or ``update`` does not change it. The template also holds
the versions of the ConfigMaps and Secrets the spec mounts or takes env from
(:func:`controlplane.manifests.sources.versions`), so changing one of them
makes a new template too. Instances of an older template are replaced by a
rolling update bounded by ``maxSurge`` and ``maxUnavailable``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.model import Resource
from controlplane.model.endpoints import SERVING

#: Spec fields that do not shape an instance.
NOT_TEMPLATE = ("replicas", "autoscaling", "update", "placement")


def template_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in NOT_TEMPLATE}


def template_hash(spec: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> str:
    """``sources``: ``Kind/name`` -> version of each object the spec takes data
    from (a spec without any hashes as it always did)."""
    template = template_of(spec)
    if sources:
        template = {**template, "$sources": dict(sources)}
    raw = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def available(instance: Resource) -> bool:
    return instance.status.get("state") in SERVING


@dataclass(frozen=True)
class Decision:
    create: int
    #: Instance names to delete, most expendable first.
    remove: tuple[str, ...]


def decide(service: Resource | None, instances: Sequence[Resource],
           usable_nodes: set[str], sources: Mapping[str, str] | None = None) -> Decision:
    """What to do so that ``instances`` converge on ``service`` (with the
    versions of its ``sources``, see :func:`template_hash`).

    Instances placed on a node that is not usable (down, draining, gone) are
    lost: removed, and replaced like any missing instance.
    """
    if service is None:
        return Decision(0, tuple(i.name for i in instances))
    lost = [i for i in instances if i.spec.get("node") and i.spec["node"] not in usable_nodes]
    current = [i for i in instances if i not in lost]
    want = int(service.spec.get("replicas", 0))
    update = service.spec.get("update") or {}
    surge = int(update.get("maxSurge", 1))
    unavailable = int(update.get("maxUnavailable", 0))
    if update.get("strategy") == "recreate":
        surge, unavailable = 0, want
    template = template_hash(service.spec, sources)
    new = [i for i in current if i.spec.get("template") == template]
    old = [i for i in current if i.spec.get("template") != template]

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


def _expendable(instances: Sequence[Resource]) -> list[Resource]:
    """Unplaced first, then unavailable, then the newest."""
    return sorted(
        instances,
        key=lambda i: (bool(i.spec.get("node")), available(i), -i.create_time, i.name),
    )
