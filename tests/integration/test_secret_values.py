"""Secret values never leave the server, and cannot be probed: `get -o yaml`
shows `<redacted>`, applying that back keeps the stored values, and a dry run
says "configured" whether a guessed value is right or wrong."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from controlplane import errors
from controlplane.client import Client


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(**data: str) -> dict[str, Any]:
    return {"apiVersion": "flotilla.dev/v1", "kind": "Secret",
            "metadata": {"name": "db-credentials"}, "spec": {"data": data}}


def reapplied(client: Client) -> dict[str, Any]:
    """The stored Secret as `get -o yaml` shows it, without its output-only fields."""
    doc = client.get("Secret", "db-credentials")
    doc.pop("status", None)
    return doc


def test_applying_redacted_values_back_keeps_the_stored_ones(client: Client) -> None:
    [first] = client.apply([(secret(user=b64("app"), password=b64("s3cret")), "s.yaml")])
    shown = reapplied(client)
    assert shown["spec"]["data"] == {"password": "<redacted>", "user": "<redacted>"}
    [again] = client.apply([(shown, "edited.yaml")])
    # Nothing changed: the redacted values were the stored ones, not "<redacted>".
    assert again.action == "unchanged"
    assert again.doc["metadata"]["generation"] == first.doc["metadata"]["generation"]
    # One value edited, the other kept: the same value again is unchanged after.
    shown["spec"]["data"]["user"] = b64("admin")
    assert client.apply([(shown, "edited.yaml")])[0].action == "configured"
    kept = secret(user=b64("admin"), password=b64("s3cret"))
    assert client.apply([(kept, "s.yaml")])[0].action == "unchanged"


def test_a_redacted_value_for_a_key_never_stored_is_refused(client: Client) -> None:
    client.apply([(secret(user=b64("app")), "s.yaml")])
    with pytest.raises(errors.InvalidManifest) as caught:
        client.apply([(secret(user="<redacted>", token="<redacted>"), "s.yaml")])
    [violation] = caught.value.violations
    assert violation.path == "spec.data.token"
    assert "has no such key; give the value" in violation.message
    with pytest.raises(errors.InvalidManifest, match="does not exist"):
        client.apply([({**secret(user="<redacted>"),
                        "metadata": {"name": "never-stored"}}, "new.yaml")])


def test_a_dry_run_does_not_tell_whether_a_guess_is_right(client: Client) -> None:
    client.apply([(secret(password=b64("s3cret")), "s.yaml")])
    right = client.apply([(secret(password=b64("s3cret")), "guess")], dry_run=True)
    wrong = client.apply([(secret(password=b64("hunter2")), "guess")], dry_run=True)
    assert right[0].action == wrong[0].action == "configured"
    assert client.apply([(secret(password="<redacted>"), "same")],
                        dry_run=True)[0].action == "unchanged"  # tells nothing new
