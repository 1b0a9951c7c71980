"""Services of the API whose behaviour later capabilities bring.

They are registered so that clients (and reflection) see the whole API now;
every call answers UNIMPLEMENTED with what is missing, never a made-up result.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from controlplane.api.flotilla.v1 import proxies_pb2_grpc


def unimplemented(what: str) -> Any:
    def method(self: object, request: object, context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not available yet in this "
                      "version of Flotilla")
        raise AssertionError("unreachable")

    return method


class ProxyServicer(proxies_pb2_grpc.ProxyServiceServicer):
    ListProxies = unimplemented("proxy status (the xDS server)")
