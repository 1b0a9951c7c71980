"""Mapping Flotilla's errors to gRPC statuses, with google.rpc details."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from controlplane.errors import InvalidManifest, UserError


def abort(context: grpc.ServicerContext, error: UserError) -> NoReturn:
    """End the RPC with the status ``error`` names; field violations travel as
    a ``google.rpc.BadRequest`` detail."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code), message=str(error))
    if isinstance(error, InvalidManifest):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=f"{v.source}: {v.path}" if v.source else v.path,
                    description=v.message,
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(detail)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises
