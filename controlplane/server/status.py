"""Mapping Flotilla's errors to gRPC statuses, with google.rpc details."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from controlplane.errors import (
    ERROR_DOMAIN,
    MORE_VIOLATIONS,
    FieldViolation,
    InvalidManifest,
    UserError,
)


#: Bytes of violations one error carries, in its message and again in its
#: BadRequest detail: both travel in the trailers, whose size gRPC bounds
#: (the client drops a status past 16 KiB as RESOURCE_EXHAUSTED).
VIOLATION_BYTES = 3_000


def abort(context: grpc.ServicerContext, error: UserError) -> NoReturn:
    """End the RPC with the status ``error`` names; field violations travel as
    a ``google.rpc.BadRequest`` detail. A list too long for the trailers is
    cut to its first problems and "and N more"."""
    message = str(error)
    status = status_pb2.Status(code=getattr(code_pb2, error.code))
    if isinstance(error, InvalidManifest):
        shown = _fitting(error.violations)
        more = error.more + len(error.violations) - len(shown)
        message = str(type(error)(shown, more))
        status.details.add().Pack(
            error_details_pb2.BadRequest(field_violations=[_detail(v) for v in shown]))
        if more:
            status.details.add().Pack(error_details_pb2.ErrorInfo(
                reason=MORE_VIOLATIONS, domain=ERROR_DOMAIN, metadata={"more": str(more)}))
    status.message = message
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises


def _detail(violation: FieldViolation) -> error_details_pb2.BadRequest.FieldViolation:
    return error_details_pb2.BadRequest.FieldViolation(
        field=f"{violation.source}: {violation.path}" if violation.source else violation.path,
        description=violation.message)


def _fitting(violations: list[FieldViolation]) -> list[FieldViolation]:
    """The first violations whose text fits in :data:`VIOLATION_BYTES` (at
    least one), each clipped to a tenth of it (they may quote the input)."""
    shown: list[FieldViolation] = []
    used = 0
    for violation in violations:
        violation = _clipped(violation, VIOLATION_BYTES // 10)
        used += len(str(violation).encode()) + 4
        if shown and used > VIOLATION_BYTES:
            break
        shown.append(violation)
    return shown


def _clipped(violation: FieldViolation, most: int) -> FieldViolation:
    def clip(text: str) -> str:
        return text if len(text) <= most else text[:most] + "…"

    return FieldViolation(clip(violation.path), clip(violation.message), clip(violation.source))
