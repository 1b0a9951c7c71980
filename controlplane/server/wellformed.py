"""Requests that are not their method's message are the caller's mistake.

grpcio answers a request it cannot decode (invalid UTF-8 in a string field,
truncated or random bytes) with INTERNAL "Exception deserializing request!",
which reads like a server bug. :class:`WellFormed` wraps every method's
request decoder: a request that does not decode ends its call with
INVALID_ARGUMENT naming the message type, and the servicer never sees it.
On streams, the first bad message ends the stream the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc


class _Undecodable:
    """What a request that did not decode is handed on as."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _refuse(context: grpc.ServicerContext, method: str, bad: _Undecodable) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                  f"the request is not a well-formed message of {method}: strings must be "
                  f"UTF-8 and fields encoded as the API defines them ({bad.error})")


def _checked(requests: Iterator[Any], context: grpc.ServicerContext,
             method: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Undecodable):
            _refuse(context, method, request)
        yield request


class WellFormed(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[[Any], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = details.method

        def decoded(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as error:  # noqa: BLE001 - any decode failure is the caller's
                return _Undecodable(error)

        def unary(behavior: Callable[[Any, grpc.ServicerContext], Any]
                  ) -> Callable[[Any, grpc.ServicerContext], Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    _refuse(context, method, request)
                return behavior(request, context)
            return guarded

        def streaming(behavior: Callable[[Iterator[Any], grpc.ServicerContext], Any]
                      ) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
            def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behavior(_checked(requests, context, method), context)
            return guarded

        changes: dict[str, Any] = {"request_deserializer": decoded}
        for name, wrap in (("unary_unary", unary), ("unary_stream", unary),
                           ("stream_unary", streaming), ("stream_stream", streaming)):
            behavior = getattr(handler, name)
            if behavior is not None:
                changes[name] = wrap(behavior)
        return handler._replace(**changes)
