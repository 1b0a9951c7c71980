"""The manifest document around a spec: ``apiVersion``, ``kind``, ``metadata``."""

from __future__ import annotations

from typing import Any

from controlplane.model.specs import Schema
from controlplane.model.types import Int, Labels, Name


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
