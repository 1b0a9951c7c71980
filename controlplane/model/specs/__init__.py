"""Pydantic schemas of every kind's ``spec``: what a ``Resource`` holds.

Field names are camelCase in manifests (``healthCheck``, ``maxSurge``), as in
Kubernetes. Unknown fields are rejected, integers are strict, and each
cross-field rule raises ``ValueError`` with a message that says what to change.
Rules that look at other objects (references) live in
:mod:`controlplane.manifests.references`.

One module per kind (:mod:`service`, :mod:`traffic_policy`, :mod:`intention`,
:mod:`gateway`, :mod:`data` for ConfigMap and Secret, :mod:`system` for the
kinds Flotilla writes itself); what several share is
in :mod:`common`, including ``not_supported_yet``, the marker of fields apply
refuses until they have an effect.
"""

from __future__ import annotations

from controlplane.model.specs.common import (
    MAX_REGEX_PROGRAM_SIZE,
    NOT_SUPPORTED,
    NOT_SUPPORTED_VALUES,
    Schema,
    re2_regex,
)
from controlplane.model.specs.data import ConfigMapSpec, SecretSpec
from controlplane.model.specs.gateway import GatewaySpec
from controlplane.model.specs.intention import IntentionSpec
from controlplane.model.specs.service import ServiceSpec, Workload
from controlplane.model.specs.system import CertificateSpec, InstanceSpec, NodeSpec
from controlplane.model.specs.traffic_policy import TrafficPolicySpec


SPEC_SCHEMAS: dict[str, type[Schema]] = {
    "Service": ServiceSpec,
    "TrafficPolicy": TrafficPolicySpec,
    "Intention": IntentionSpec,
    "Gateway": GatewaySpec,
    "ConfigMap": ConfigMapSpec,
    "Secret": SecretSpec,
}

#: The spec type of every kind, the system kinds included: what
#: ``Resource.spec`` is.
SPEC_TYPES: dict[str, type[Schema]] = {
    **SPEC_SCHEMAS,
    "Node": NodeSpec,
    "Instance": InstanceSpec,
    "Certificate": CertificateSpec,
}


__all__ = [
    "MAX_REGEX_PROGRAM_SIZE",
    "NOT_SUPPORTED",
    "NOT_SUPPORTED_VALUES",
    "SPEC_SCHEMAS",
    "SPEC_TYPES",
    "CertificateSpec",
    "ConfigMapSpec",
    "GatewaySpec",
    "InstanceSpec",
    "IntentionSpec",
    "NodeSpec",
    "Schema",
    "SecretSpec",
    "ServiceSpec",
    "TrafficPolicySpec",
    "Workload",
    "re2_regex",
]
