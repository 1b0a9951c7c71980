"""Services of the API whose behaviour later capabilities bring.

They are registered so that clients (and reflection) see the whole API now;
every call answers UNIMPLEMENTED with what is missing, never a made-up result.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc



def unimplemented(what: str) -> Any:
    def method(self: object, request: object, context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not available yet in this "
                      "version of Flotilla")
        raise AssertionError("unreachable")

    return method
