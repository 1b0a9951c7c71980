"""Turn manifest documents into validated resources, or say exactly what is wrong.

Pure: takes text or parsed documents, returns :class:`Resource` values, raises
:class:`InvalidManifest` carrying one :class:`FieldViolation` per problem
(every problem of every document, not just the first). Cross-object rules
(references, one policy per destination) are in
:mod:`controlplane.manifests.references`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from controlplane.errors import FieldViolation, InvalidManifest
from controlplane.manifests.document import Document
from controlplane.manifests.loader import ManifestError, load_all
from controlplane.model.specs import NOT_SUPPORTED, NOT_SUPPORTED_VALUES, SPEC_SCHEMAS, Schema
from controlplane.model.types import FieldError
from controlplane.model import API_VERSION, KINDS, SYSTEM_KINDS, Resource

#: Names accepted for each kind on the command line and in manifests' `kind`
#: (case-insensitive), Kubernetes style.
KIND_ALIASES: dict[str, str] = {}
for _kind, _short in zip(KINDS, ("svc", "tp", "int", "gw", "cm", "sec"), strict=True):
    for _alias in (_kind, _kind + "s", _kind + "es", _short):
        KIND_ALIASES[_alias.lower()] = _kind
KIND_ALIASES["trafficpolicies"] = "TrafficPolicy"
SYSTEM_KIND_ALIASES = {
    alias: kind
    for kind, short in (("Node", "no"), ("Instance", "inst"), ("Certificate", "cert"))
    for alias in (kind.lower(), kind.lower() + "s", short)
}


def resolve_kind(name: str, *, system: bool = False) -> str | None:
    """The kind a user's word names (``svc`` -> ``Service``); with ``system``,
    also the kinds Flotilla writes itself (nodes, instances)."""
    lowered = name.lower()
    found = KIND_ALIASES.get(lowered)
    if found is None and system:
        found = SYSTEM_KIND_ALIASES.get(lowered)
    return found


def parse_yaml(text: str | bytes, source: str) -> list[tuple[Any, str]]:
    """Split a (multi-document) YAML text into ``(document, "source#n")`` pairs.

    Empty documents are skipped (but counted). A syntax error, or what
    :mod:`loader` refuses, is an :class:`InvalidManifest` naming the line
    and column.
    """
    try:
        loaded = load_all(text)
    except ManifestError as error:
        raise InvalidManifest([FieldViolation("", str(error), source)]) from None
    if len(loaded) == 1:
        return [] if loaded[0] is None else [(loaded[0], source)]
    # Numbered by position in the file (empty documents count), so "#3" is
    # the third document a reader sees.
    return [(doc, f"{source}#{i}") for i, doc in enumerate(loaded, start=1) if doc is not None]


def to_resources(docs: Iterable[tuple[Any, str]]) -> list[Resource]:
    """Validate every document; raise one :class:`InvalidManifest` listing all
    problems, including objects given twice in the same batch."""
    resources: list[Resource] = []
    violations: list[FieldViolation] = []
    seen: dict[tuple[str, str, str], str] = {}
    for doc, source in docs:
        try:
            resource = to_resource(doc, source)
        except InvalidManifest as exc:
            violations += exc.violations
            continue
        key = (resource.kind, resource.namespace, resource.name)
        if key in seen:
            violations.append(
                FieldViolation(
                    "metadata.name",
                    f"{resource.key} is also defined in {seen[key]}; define each object once",
                    source,
                )
            )
            continue
        seen[key] = source
        resources.append(resource)
    if violations:
        raise InvalidManifest(violations)
    return resources


def to_resource(doc: Any, source: str = "") -> Resource:
    """Validate one document (a parsed YAML/JSON mapping)."""
    if not isinstance(doc, Mapping):
        raise InvalidManifest(
            [FieldViolation("", f"a manifest must be a mapping, got {_describe(doc)}", source)]
        )
    label = _label(doc, source)
    nul = [FieldViolation(path, "contains a NUL character (\\0); remove it", label)
           for path in _nul_paths(doc, "")]
    if nul:
        raise InvalidManifest(nul)
    try:
        envelope = Document.model_validate(doc)
    except ValidationError as exc:
        raise InvalidManifest(violations_of(exc, Document, "", label)) from None
    problems: list[FieldViolation] = []
    if envelope.api_version != API_VERSION:
        problems.append(
            FieldViolation(
                "apiVersion", f"must be {API_VERSION!r}, got {envelope.api_version!r}", label
            )
        )
    kind = envelope.kind if envelope.kind in KINDS else None
    if envelope.kind in SYSTEM_KINDS:
        problems.append(FieldViolation(
            "kind", f"{envelope.kind} objects are managed by Flotilla: nodes join with "
            "`flotilla agent`, instances follow their Service's replicas (`flotilla scale`)",
            label))
    elif kind is None:
        close = resolve_kind(envelope.kind) or _closest(envelope.kind, KINDS)
        hint = f"; did you mean {close!r}?" if close else f"; use one of {', '.join(KINDS)}"
        problems.append(FieldViolation("kind", f"unknown kind {envelope.kind!r}{hint}", label))
    if problems or kind is None:
        raise InvalidManifest(problems)
    schema = SPEC_SCHEMAS[kind]
    try:
        spec = schema.model_validate(envelope.spec)
    except ValidationError as exc:
        raise InvalidManifest(violations_of(exc, schema, "spec", label)) from None
    refused = [FieldViolation(path, why, label) for path, why in not_supported(spec, "spec")]
    if refused:
        raise InvalidManifest(refused)
    normalize = getattr(spec, "normalized", None)
    if normalize is not None:
        spec = normalize()
    meta = envelope.metadata
    return Resource(
        kind=kind,
        name=meta.name,
        namespace=meta.namespace,
        spec=spec,
        labels=dict(meta.labels),
        annotations=dict(meta.annotations),
        resource_version=meta.resource_version or 0,
    )


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    """The field paths of every string (key or value) holding a NUL: no
    process, file name or header can carry one."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path or "(document)"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                yield where
            else:
                yield from _nul_paths(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{i}]")


def not_supported(model: BaseModel, path: str) -> Iterator[tuple[str, str]]:
    """``(field path, why)`` for every field set in *model* (walked through
    nested models and lists of them) that the schema marks as not supported
    yet, or whose value it marks so."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{path}.{field.alias or name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        why = extra.get(NOT_SUPPORTED)
        if isinstance(why, str) and value != field.get_default(call_default_factory=True):
            yield where, why
            continue
        values = extra.get(NOT_SUPPORTED_VALUES)
        if isinstance(values, dict) and isinstance(value, str) and value in values:
            yield where, str(values[value])
        if isinstance(value, BaseModel):
            yield from not_supported(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from not_supported(item, f"{where}[{i}]")


def _label(doc: Mapping[str, Any], source: str) -> str:
    """How a document is named in errors: its kind and name, and where it came from."""
    kind, meta = doc.get("kind"), doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    namespace = (meta.get("namespace") if isinstance(meta, Mapping) else None) or "default"
    what = f"{kind} {namespace}/{name}" if isinstance(kind, str) and isinstance(name, str) else ""
    if what and source:
        return f"{what} ({source})"
    return what or source


# --- pydantic errors, as field paths and fixes -------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "float_type": "a number",
    "float_parsing": "a number",
}


def violations_of(
    exc: ValidationError, model: type[BaseModel], prefix: str, source: str
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for err in exc.errors():
        loc = [part for part in err["loc"] if not _is_internal(part)]
        ctx = err.get("ctx") or {}
        problem = ctx.get("error")
        if isinstance(problem, FieldError):
            loc.append(problem.field)
        message = _message(err, model, loc)
        out.append(FieldViolation(_path(prefix, loc), message, source))
    return out


def _is_internal(part: Any) -> bool:
    # pydantic names union members and validator wrappers in `loc`
    # ("function-after[...]", "str", "HealthCheck"); they are not fields.
    return isinstance(part, str) and (
        "[" in part or part in ("str", "int", "bool", "list", "dict") or part[:1].isupper()
    )


def _path(prefix: str, loc: list[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _message(err: Any, model: type[BaseModel], loc: list[Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        known = _known_fields(model, loc[:-1])
        close = _closest(name, known)
        hint = f"; did you mean {close!r}?" if close else (
            f"; known fields here: {', '.join(sorted(known))}" if known else ""
        )
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing; add it"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}[kind]
        bound = ctx.get({">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[op])
        return f"must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {_describe(value)}"
    if kind in ("too_short", "too_long"):
        if isinstance(value, str):
            return "must not be empty" if kind == "too_short" else "is too long"
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        which = "at least" if kind == "too_short" else "at most"
        return f"must have {which} {limit} item(s), got {ctx.get('actual_length', len(value))}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(err["msg"])


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _known_fields(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """The field names (aliases) of the model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        target = _model_in(current)
        if target is None:
            return []
        field = next(
            (f for n, f in target.model_fields.items() if (f.alias or n) == part), None
        )
        if field is None:
            return []
        current = field.annotation
    target = _model_in(current)
    if target is None:
        return []
    return [f.alias or n for n, f in target.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated or origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


__all__ = [
    "KIND_ALIASES",
    "Schema",
    "not_supported",
    "parse_yaml",
    "resolve_kind",
    "to_resource",
    "to_resources",
    "violations_of",
]
