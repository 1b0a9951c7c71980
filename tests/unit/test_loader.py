"""Reading manifest files (manifests.loader): only what JSON can say, and a
clear error with the line for the rest, never a crash or a silent choice."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidManifest
from controlplane.manifests import parse_yaml, to_resources
from controlplane.manifests.loader import MAX_DEPTH, MAX_VALUES, load_all

HEAD = "apiVersion: flotilla.dev/v1\nkind: ConfigMap\nmetadata: {name: cfg}\n"


def refusal(text: str | bytes) -> str:
    with pytest.raises(InvalidManifest) as caught:
        parse_yaml(text, "app.yaml")
    [violation] = caught.value.violations
    assert violation.source == "app.yaml"
    return violation.message


def test_a_key_given_twice_is_refused_where_it_is_given_again() -> None:
    text = HEAD + "spec:\n  data:\n    mode: a\n    mode: b\n"
    assert refusal(text) == "line 7, column 5: key 'mode' is given twice; keep one"


@pytest.mark.parametrize(("value", "says"), [
    ("!!binary aGVsbG8=", "binary is not supported in a manifest: binary data: write it as "
                          "a string (a Secret's data holds base64 text)"),
    ("!!set {a, b}", "set is not supported in a manifest: a set: write a list"),
    ("!!omap [{a: 1}]", "omap is not supported in a manifest: an ordered map: write a mapping"),
    ("!!python/object:os.system x", "could not determine a constructor for the tag "
                                    "'tag:yaml.org,2002:python/object:os.system'"),
], ids=["binary", "set", "omap", "python"])
def test_tags_json_has_no_value_for_are_refused(value: str, says: str) -> None:
    assert refusal(HEAD + f"spec: {{data: {{k: {value}}}}}\n").endswith(says)


def test_an_unquoted_date_is_the_text_it_is_written_as() -> None:
    [resource] = to_resources(parse_yaml(HEAD + "spec: {data: {day: 2024-01-31, "
                                                "at: 2024-01-31T10:00:00Z}}\n", "app.yaml"))
    assert resource.spec.to_dict() == {"data": {"day": "2024-01-31",
                                                "at": "2024-01-31T10:00:00Z"}}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000], ids=["just-over", "far-over"])
def test_nesting_deeper_than_the_bound_is_an_error_not_a_crash(depth: int) -> None:
    assert refusal("a: " + "[" * depth + "]" * depth + "\n").endswith(
        f"nested more than {MAX_DEPTH} levels deep")
    assert load_all("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))  # at the bound


def test_aliases_that_expand_past_the_bound_are_refused() -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    assert refusal("\n".join(lines)) == (
        f"document 1 holds more than {MAX_VALUES:,} values once its aliases are expanded; "
        "write the values out, or split the document")
    assert load_all("a: &a [1, 2]\nb: [*a, *a]\n") == [{"a": [1, 2], "b": [[1, 2], [1, 2]]}]


def test_bytes_that_are_not_utf8_name_their_line() -> None:
    assert refusal(HEAD.encode() + b"spec: {data: {k: \xff}}\n") == (
        f"line 4: byte {len(HEAD) + 17} is not UTF-8 text; save the file as UTF-8")
    assert parse_yaml(HEAD.encode() + "spec: {data: {k: é}}\n".encode(), "a.yaml")


def test_a_syntax_error_still_says_so() -> None:
    assert refusal("a: [\n") == (
        "YAML syntax error at line 2, column 1: expected the node content, but found "
        "'<stream end>'")
