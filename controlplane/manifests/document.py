"""The manifest document around a spec: ``apiVersion``, ``kind``, ``metadata``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from controlplane.model.resources import decode_spec
from controlplane.model.specs import Schema
from controlplane.model.types import Annotations, Int, Labels, Name

S = TypeVar("S", bound=Schema)


class Metadata(Schema):
    name: Name
    namespace: Name = "default"
    labels: Labels = {}
    annotations: Annotations = {}
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


def spec_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A document's spec as JSON, as the server sent it (empty when it has none)."""
    return dict(doc.get("spec") or {})


def spec_of(doc: Mapping[str, Any]) -> Schema:
    """A document's spec as its kind's model (a Secret's values are
    ``<redacted>``, as the server sends them and the schema takes them)."""
    return decode_spec(doc["kind"], spec_json(doc))


def typed_spec(doc: Mapping[str, Any], spec_type: type[S]) -> S:
    """``spec_of(doc)`` as *spec_type*; a ``TypeError`` for a document of another kind."""
    spec = spec_of(doc)
    if not isinstance(spec, spec_type):
        raise TypeError(f"a {doc['kind']} has no {spec_type.__name__}")
    return spec
