"""Reading manifest files: YAML (JSON is YAML) into plain JSON values.

A manifest is JSON in YAML's clothes, so the loader takes only what JSON can
say and refuses the rest with the line and column, instead of a value that
fails far away or a crash:

- a key given twice in one mapping (PyYAML keeps the last one silently);
- tags JSON has no value for (``!!binary``, ``!!set``, ``!!omap``,
  ``!!pairs``, ``!!python/...``); an unquoted date or time stays the string
  it is written as, as Kubernetes reads it;
- nesting deeper than :data:`MAX_DEPTH` (Python's recursion would end it
  with a crash), and aliases that expand a document beyond
  :data:`MAX_VALUES` values (a "billion laughs" is a few lines);
- bytes that are not UTF-8.

Pure: text in, values out.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

#: Levels of nested mappings and lists a document may have.
MAX_DEPTH = 64
#: Values (scalars, lists and mappings, counting each alias's expansion) in one document.
MAX_VALUES = 200_000

#: Tags JSON has no value for, and what to write instead.
_REFUSED_TAGS = {
    "tag:yaml.org,2002:binary": "binary data: write it as a string (a Secret's data "
                                "holds base64 text)",
    "tag:yaml.org,2002:set": "a set: write a list",
    "tag:yaml.org,2002:omap": "an ordered map: write a mapping",
    "tag:yaml.org,2002:pairs": "pairs: write a mapping",
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class ManifestError(ValueError):
    """What is wrong with a manifest file, saying where (line and column)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds only JSON values (see the module's list)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConstructorError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: SafeConstructor says so
            if key in seen:
                raise ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _refuse(loader: _Loader, node: Node) -> Any:
    raise ConstructorError(None, None, f"{node.tag.rpartition(':')[2]} is not supported in a "
                           f"manifest: {_REFUSED_TAGS[node.tag]}", node.start_mark)


def _as_written(loader: _Loader, node: Node) -> Any:
    """Dates and times stay the text they are written as."""
    return node.value


for _tag in _REFUSED_TAGS:
    _Loader.add_constructor(_tag, _refuse)
_Loader.add_constructor(_TIMESTAMP, _as_written)


def load_all(data: str | bytes) -> list[Any]:
    """Every document of a YAML text (None for an empty one). Raises
    :class:`ManifestError` for what the module refuses and for YAML syntax."""
    if isinstance(data, bytes):
        raw = data
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[:error.start].count(b"\n") + 1
            raise ManifestError(f"line {line}: byte {error.start} is not UTF-8 text; save "
                                "the file as UTF-8") from None
    try:
        documents = list(yaml.load_all(data, Loader=_Loader))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        syntax = "" if isinstance(error, ConstructorError) else "YAML syntax error at "
        raise ManifestError(f"{syntax}{where}{problem}") from None
    for number, document in enumerate(documents, start=1):
        if _count(document, MAX_VALUES) > MAX_VALUES:
            raise ManifestError(
                f"document {number} holds more than {MAX_VALUES:,} values once its aliases "
                "are expanded; write the values out, or split the document")
    return documents


def _count(value: Any, budget: int) -> int:
    """How many values ``value`` holds, counting shared ones each time (an
    alias repeats its anchor's); stops counting once past ``budget``."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
            count += len(item)  # the keys
        elif isinstance(item, list):
            stack.extend(item)
    return count
