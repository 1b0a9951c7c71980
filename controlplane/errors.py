"""The errors Flotilla raises, as one small tree.

::

    FlotillaError
    ├── UserError                 the caller must change something; never retried
    │   ├── InvalidManifest       INVALID_ARGUMENT, carries FieldViolations
    │   │   └── InvalidRequest    the same for an API request's fields
    │   ├── Conflict              ABORTED (stale resourceVersion)
    │   ├── NotFound              NOT_FOUND
    │   ├── FailedPrecondition    FAILED_PRECONDITION (e.g. still referenced)
    │   ├── OutOfRange            OUT_OF_RANGE (watch from compacted history)
    │   ├── PermissionDenied      PERMISSION_DENIED
    │   └── Unauthenticated       UNAUTHENTICATED (no or a wrong join token)
    ├── TemporaryError            retry with backoff
    └── PermanentError            recorded on the object's status

Each user error names a gRPC status code by its name (``code``) so that this
module imports no grpc; :func:`user_error` is the way back, from a status to
the error the server raised (one table, :data:`USER_ERRORS_BY_CODE`, both
ways). The CLI maps every user error to exit code 1. Messages name the object
or the field and say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlotillaError(Exception):
    """Base of every error Flotilla raises on purpose."""


class UserError(FlotillaError):
    """Bad input or a request that cannot be honoured as asked."""

    code = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one field of one document.

    ``path`` is dotted with list indexes (``spec.listeners[1].port``);
    ``source`` says which document (``app.yaml#2`` or ``Service default/web``).
    """

    path: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class InvalidManifest(UserError):
    code = "INVALID_ARGUMENT"
    #: How the message starts.
    summary = "invalid manifest, nothing was applied"

    def __init__(self, violations: list[FieldViolation], more: int = 0) -> None:
        """``more``: problems found beyond ``violations`` and not listed (an
        error too long to send is cut)."""
        self.violations = list(violations)
        self.more = more
        count = len(self.violations) + more
        head = "1 problem" if count == 1 else f"{count} problems"
        if more:
            head += f", the first {len(self.violations)} shown"
        lines = "\n".join(f"  {v}" for v in self.violations)
        if more:
            lines += f"\n  ... and {more} more: fix these and apply again to see them"
        super().__init__(f"{self.summary} ({head}):\n{lines}")


class InvalidRequest(InvalidManifest):
    """Fields of an API request (not a manifest) that cannot be honoured."""

    summary = "invalid request, nothing was stored"


class Conflict(UserError):
    code = "ABORTED"


class NotFound(UserError):
    code = "NOT_FOUND"


class FailedPrecondition(UserError):
    code = "FAILED_PRECONDITION"


class OutOfRange(UserError):
    code = "OUT_OF_RANGE"


class PermissionDenied(UserError):
    code = "PERMISSION_DENIED"


class Unauthenticated(UserError):
    code = "UNAUTHENTICATED"


#: Each user error by the name of its gRPC status code (each class's ``code``
#: is the other way). INVALID_ARGUMENT is a manifest's or a request's, told
#: apart by how the message starts.
USER_ERRORS_BY_CODE: dict[str, type[UserError]] = {
    kind.code: kind for kind in (InvalidManifest, Conflict, NotFound, FailedPrecondition,
                                 OutOfRange, PermissionDenied, Unauthenticated)
}


#: The reason of the ``google.rpc.ErrorInfo`` detail that says how many
#: field violations a status left out (``metadata["more"]``).
MORE_VIOLATIONS = "MORE_VIOLATIONS"
ERROR_DOMAIN = "flotilla.dev"


def user_error(code: str, message: str, violations: list[FieldViolation] | None = None,
               more: int = 0) -> UserError | None:
    """The user error a gRPC status (its code's name, its message, and the
    field violations of its details with how many more were cut) carries
    back; None when the code is not a user error's."""
    kind = USER_ERRORS_BY_CODE.get(code)
    if kind is None:
        return None
    if issubclass(kind, InvalidManifest):
        if message.startswith(InvalidRequest.summary):
            kind = InvalidRequest
        return kind(violations or [FieldViolation("", message)], more)
    return kind(message)


class TemporaryError(FlotillaError):
    """Something outside Flotilla is briefly unavailable; retry with backoff."""


class PermanentError(FlotillaError):
    """Retrying will not help; record it on the object's status."""
