"""One table maps gRPC status codes to the error tree, both ways."""

from __future__ import annotations

import pytest

from controlplane import errors

EVERY_USER_ERROR = [
    errors.InvalidManifest([errors.FieldViolation("spec.replicas", "must be >= 0, got -1")]),
    errors.InvalidRequest([errors.FieldViolation("port", "must be 1-65535, got 0")]),
    errors.Conflict("stale"), errors.NotFound("gone"), errors.FailedPrecondition("referenced"),
    errors.OutOfRange("compacted"), errors.PermissionDenied("not yours"),
    errors.Unauthenticated("no token"),
]


@pytest.mark.parametrize("raised", EVERY_USER_ERROR, ids=lambda e: type(e).__name__)
def test_a_user_error_comes_back_as_itself(raised: errors.UserError) -> None:
    violations = getattr(raised, "violations", None)
    back = errors.user_error(raised.code, str(raised), violations)
    assert type(back) is type(raised) and str(back) == str(raised)


def test_every_user_error_class_is_in_the_table() -> None:
    leaves = {kind for kind in _subclasses(errors.UserError) if kind is not errors.InvalidRequest}
    assert leaves == set(errors.USER_ERRORS_BY_CODE.values())
    assert len({kind.code for kind in leaves}) == len(leaves)


def test_other_codes_are_not_user_errors() -> None:
    assert errors.user_error("INTERNAL", "boom") is None
    assert errors.user_error("UNAVAILABLE", "down") is None


def _subclasses(kind: type[errors.UserError]) -> set[type[errors.UserError]]:
    found = set()
    for sub in kind.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found
