"""Pydantic schemas of every kind's ``spec``, plus the document envelope.

Field names are camelCase in manifests (``healthCheck``, ``maxSurge``), as in
Kubernetes. Unknown fields are rejected, integers are strict, and each
cross-field rule raises ``ValueError`` with a message that says what to change.
Rules that look at other objects (references) live in
:mod:`controlplane.manifests.references`.

One module per kind (:mod:`service`, :mod:`traffic_policy`, :mod:`intention`,
:mod:`gateway`, :mod:`data` for ConfigMap and Secret); what several share is
in :mod:`common`, including ``not_supported_yet``, the marker of fields apply
refuses until they have an effect.
"""

from __future__ import annotations

from typing import Any

from controlplane.manifests.schemas.common import (
    MAX_REGEX_PROGRAM_SIZE,
    NOT_SUPPORTED,
    NOT_SUPPORTED_VALUES,
    Schema,
    re2_regex,
)
from controlplane.manifests.schemas.data import ConfigMapSpec, SecretSpec
from controlplane.manifests.schemas.gateway import GatewaySpec
from controlplane.manifests.schemas.intention import IntentionSpec
from controlplane.manifests.schemas.service import ServiceSpec
from controlplane.manifests.schemas.traffic_policy import TrafficPolicySpec
from controlplane.manifests.types import Int, Labels, Name


SPEC_SCHEMAS: dict[str, type[Schema]] = {
    "Service": ServiceSpec,
    "TrafficPolicy": TrafficPolicySpec,
    "Intention": IntentionSpec,
    "Gateway": GatewaySpec,
    "ConfigMap": ConfigMapSpec,
    "Secret": SecretSpec,
}


# --- The document envelope ---------------------------------------------------


class Metadata(Schema):
    name: Name
    namespace: Name = "default"
    labels: Labels = {}
    annotations: dict[str, str] = {}
    #: A precondition on apply; the server's value on output.
    resource_version: Int | None = None
    # Output-only fields, accepted so that `get -o yaml` output can be reapplied.
    uid: str | None = None
    generation: Int | None = None
    create_time: str | None = None
    update_time: str | None = None


class Document(Schema):
    api_version: str
    kind: str
    metadata: Metadata
    spec: dict[str, Any] = {}
    #: Written by the system; ignored on input.
    status: dict[str, Any] | None = None


__all__ = [
    "MAX_REGEX_PROGRAM_SIZE",
    "NOT_SUPPORTED",
    "NOT_SUPPORTED_VALUES",
    "SPEC_SCHEMAS",
    "Document",
    "Metadata",
    "Schema",
    "re2_regex",
]
