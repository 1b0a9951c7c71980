"""Manifests: the document envelope, validation with field paths, references.

The spec schemas themselves are :mod:`controlplane.model.specs`.

Pure (no I/O): text and mappings in, :class:`~controlplane.model.Resource`
values or :class:`~controlplane.errors.InvalidManifest` out.
"""

from controlplane.manifests.references import check_batch, references
from controlplane.manifests.validate import (
    KIND_ALIASES,
    parse_yaml,
    resolve_kind,
    to_resource,
    to_resources,
)

__all__ = [
    "KIND_ALIASES",
    "check_batch",
    "parse_yaml",
    "references",
    "resolve_kind",
    "to_resource",
    "to_resources",
]
