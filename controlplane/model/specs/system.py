"""The specs of the objects Flotilla writes itself: Node, Instance, Certificate.

Nobody applies them, so they are not validated like manifests: they hold
what the control plane decided (a node's capacity as its agent reported it,
an instance's workload and placement), built by field name in code.
"""

from __future__ import annotations

from controlplane.model.specs.common import PlacementSpec, SystemSchema
from controlplane.model.specs.service import Workload


class NodeCapacity(SystemSchema):
    #: Millicores.
    cpu: int = 0
    #: MiB.
    memory: int = 0


class NodeSpec(SystemSchema):
    address: str = ""
    labels: dict[str, str] = {}
    capacity: NodeCapacity = NodeCapacity()
    #: The drivers its agent runs (docker, process).
    drivers: list[str] = []
    #: Where the agent serves instance logs.
    logs_endpoint: str = ""
    #: An operator drains it: nothing new is placed there.
    drain: bool = False
    #: Its agent's certificates are refused; its instances are moved away.
    revoked: bool = False
    revoked_at: str | None = None


class InstanceSpec(SystemSchema):
    #: The Service (or, with ``gateway``, the Gateway) it belongs to.
    service: str
    #: The Service's generation it was created for.
    revision: int = 0
    #: The hash of the template it runs (see controllers.replicas.template_hash).
    template: str = ""
    workload: Workload = Workload()
    placement: PlacementSpec = PlacementSpec()
    #: Where it was placed and which driver runs it; empty while pending.
    node: str = ""
    driver: str = ""
    #: Being replaced or scaled away: out of load balancing, removed after a grace.
    draining: bool = False
    #: Unix seconds.
    draining_since: float = 0.0
    #: Registered by a client over gRPC (RegisterInstance), not run by Flotilla.
    registered: bool = False
    #: A Gateway's Envoy (``service`` names the Gateway).
    gateway: bool = False
    #: A registered instance's address, port and TTL in seconds.
    address: str = ""
    port: int = 0
    ttl: float = 0.0


class CertificateSpec(SystemSchema):
    """A leaf certificate the control plane signed: who holds it, until when."""

    identity: str
    serial: str
    node: str = ""
    #: The instance holding it; unset for a node's own certificate.
    instance: str | None = None
    #: The client it was signed for (a proxyless gRPC client, by the name it gave).
    client: str | None = None
    #: The serial of the root it chains to.
    root: str = ""
    #: RFC 3339, UTC.
    not_after: str = ""
