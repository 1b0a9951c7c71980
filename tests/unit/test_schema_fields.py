"""Nothing accepted that does nothing: every field of every manifest schema is
either refused at apply ("not supported yet", with its path) or has a test
that shows its effect (``tests/unit/schema_effects.py``: field path ->
``file::test``). A new field fails this test until it is one or the other."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from controlplane.errors import InvalidManifest
from controlplane.manifests import to_resource
from controlplane.model.specs import NOT_SUPPORTED, NOT_SUPPORTED_VALUES, SPEC_SCHEMAS
from controlplane.manifests.validate import _model_in
from tests.unit.schema_effects import EFFECTS

ROOT = Path(__file__).resolve().parents[2]


def fields() -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, the field's json_schema_extra, refused with an ancestor)."""

    def walk(model: type[BaseModel], path: str, seen: frozenset[type[BaseModel]],
             refused: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
        for name, info in model.model_fields.items():
            where = f"{path}.{info.alias or name}"
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            yield where, extra, refused
            inner = _model_in(info.annotation)
            if inner is not None and inner not in seen:
                yield from walk(inner, where, seen | {inner}, refused or NOT_SUPPORTED in extra)

    for kind, schema in SPEC_SCHEMAS.items():
        yield from walk(schema, kind, frozenset({schema}), False)


PATHS = {path: (extra, refused) for path, extra, refused in fields()}
REFUSED = sorted(p for p, (extra, refused) in PATHS.items() if NOT_SUPPORTED in extra)


@pytest.mark.parametrize("path", sorted(PATHS), ids=str)
def test_every_field_is_refused_or_proven(path: str) -> None:
    extra, under_refused = PATHS[path]
    if NOT_SUPPORTED in extra or under_refused:
        assert path not in EFFECTS, f"{path} is refused: drop it from EFFECTS"
        return
    assert path in EFFECTS, (
        f"{path} is accepted but no test shows its effect: give it one and name it in "
        "tests/unit/schema_effects.py EFFECTS, or refuse it with not_supported_yet(...)")


def test_every_named_proof_exists_and_names_a_field() -> None:
    stale = sorted(set(EFFECTS) - set(PATHS))
    assert not stale, f"EFFECTS names fields the schemas no longer have: {stale}"
    missing = sorted(f"{p}: {t}" for p, t in EFFECTS.items() if not _test_exists(t))
    assert not missing, f"EFFECTS names tests that do not exist: {missing}"


#: A spec that sets each refused field (and nothing else that is refused).
SAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "Service.autoscaling": ("Service", {"image": "x", "autoscaling": {"maxReplicas": 3}}),
    "TrafficPolicy.subsets": ("TrafficPolicy", {"destination": "b", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}]}),
    "TrafficPolicy.split": ("TrafficPolicy", {"destination": "b", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}], "split": [{"subset": "v1", "weight": 100}]}),
    "TrafficPolicy.routes": ("TrafficPolicy", {"destination": "b", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}], "routes": [
        {"match": {"pathPrefix": "/v1"}, "subset": "v1"}]}),
    "TrafficPolicy.faults": ("TrafficPolicy", {"destination": "b", "faults": {
        "abort": {"percent": 50, "httpStatus": 503}}}),
    "TrafficPolicy.rateLimit": ("TrafficPolicy", {"destination": "b",
                                                  "rateLimit": {"requests": 2}}),
    "Gateway.listeners.tls": ("Gateway", {"listeners": [{
        "name": "w", "port": 443, "protocol": "https", "tls": {"secret": "s"},
        "routes": [{"service": "a"}]}]}),
}


def test_every_refused_field_has_a_sample() -> None:
    assert sorted(SAMPLES) == REFUSED


@pytest.mark.parametrize("path", sorted(SAMPLES), ids=str)
def test_a_refused_field_is_refused_with_its_path(path: str) -> None:
    kind, spec = SAMPLES[path]
    with pytest.raises(InvalidManifest) as refused:
        to_resource({"apiVersion": "flotilla.dev/v1", "kind": kind, "metadata": {"name": "x"},
                     "spec": spec})
    wanted = "spec." + path.split(".", 1)[1]
    found = {(_unindexed(v.path), "not supported yet" in v.message)
             for v in refused.value.violations}
    assert (wanted, True) in found, found


def test_refused_values_are_refused_with_their_path() -> None:
    valued = {p: extra[NOT_SUPPORTED_VALUES] for p, (extra, _) in PATHS.items()
              if NOT_SUPPORTED_VALUES in extra}
    assert valued, "no value is refused: drop this test"
    for path, values in valued.items():
        assert all("not supported yet" in str(why) for why in values.values()), path


def _unindexed(path: str) -> str:
    out, depth = "", 0
    for char in path:
        depth += char == "["
        if not depth:
            out += char
        depth -= char == "]"
    return out


@cache
def _defined(file: Path) -> frozenset[str]:
    """Top-level functions of *file*, with those of modules it star-imports."""
    tree = ast.parse(file.read_text())
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            names |= _defined(ROOT / (str(node.module).replace(".", "/") + ".py"))
    return frozenset(names)


def _test_exists(node_id: str) -> bool:
    file, _, function = node_id.partition("::")
    path = ROOT / file
    return path.is_file() and function.startswith("test_") and function in _defined(path)
