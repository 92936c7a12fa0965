"""What runs in front of every method: the token check, the intake and the concurrency limit,
with no grpc.aio interceptor.

grpc.aio runs each server interceptor on every call as a coroutine awaiting the next one's
(``await continuation(details)``), and an interceptor that wraps the handler builds a new one on
every call; with three of them that was GIL time on the event loop for every request. Here the
services register their method handlers with a :class:`Front` instead of the server (the
generated ``add_*_to_server`` functions call only ``add_generic_rpc_handlers`` and
``add_registered_method_handlers``), each handler is wrapped once, and the server gets the
front as its one generic handler. Per call, grpc.aio calls :meth:`Front.service` (a plain call,
before the body is read): the token check where one is due, then a dictionary lookup.

The order is the one the interceptors had: a call without an accepted token is refused before
its body is read (:func:`~mcdropout_server.security.refusing`), so it is never charged, parsed
or counted; then the body is charged to the received-bytes budget and parsed
(:class:`~mcdropout_server.intake.Intake`); then the call is counted against the RPC limit
(:class:`~mcdropout_server.concurrency.ConcurrencyLimit`); then the method runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from mcdropout_server.concurrency import ConcurrencyLimit, with_behaviour
from mcdropout_server.intake import Intake, Refusal, clear_frames
from mcdropout_server.rpc import SERIALIZED_REPLY
from mcdropout_server.security import TokenAuth, refusing


class Front(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The server's one generic handler: every registered method, guarded.

    Register services with ``add_*_to_server(servicer, front.server)``, then add the front to
    the real server with ``server.add_generic_rpc_handlers((front,))``.

    Args:
        intake: The received-bytes budget and the parsing of bodies.
        limit: The RPC limit (it says which methods it counts).
        auth: The token check, or None when authentication is off.
        open_methods: Full method names served without a token.
    """

    def __init__(self, intake: Intake, limit: ConcurrencyLimit, auth: TokenAuth | None,
                 open_methods: Iterable[str]) -> None:
        self._intake = intake
        self._limit = limit
        self.auth = auth
        self._open = frozenset(open_methods)
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    @property
    def server(self) -> Any:
        """This front, as the generated ``add_*_to_server`` functions take a server."""
        return self

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Serve what ``handlers`` answer for methods no registered handler serves."""
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Serve ``service``'s methods (short name to handler), each wrapped here once."""
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._methods[method] = self._guarded(method, handler)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if self.auth is not None and method not in self._open:
            refusal = self.auth.check(details.invocation_metadata)
            if refusal is not None:
                return refusing(method, *refusal)
        handler = self._methods.get(method)
        if handler is not None:
            return handler
        # Handlers that answer any name (the OIP's UNIMPLEMENTED) are wrapped per call: a table
        # of them would grow with every name a client makes up.
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return self._guarded(method, handler)
        return None

    def _guarded(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        limit = self._limit if self._limit.counts(method) else None
        behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                     or handler.stream_stream)
        if getattr(behaviour, SERIALIZED_REPLY, False):  # an @rpc method: it sends bytes
            handler = handler._replace(response_serializer=None)
        parse = handler.request_deserializer
        if parse is None:  # nothing to charge or parse (a refusal, a raw-bytes method)
            return handler if limit is None else with_behaviour(handler, limit.counted)
        if not handler.request_streaming:
            behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
            if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
                make = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                        else grpc.unary_unary_rpc_method_handler)
                return make(self._taking_raw_body(behaviour, parse, method, limit),
                            response_serializer=handler.response_serializer)
        elif not handler.response_streaming and inspect.iscoroutinefunction(handler.stream_unary):
            return grpc.stream_unary_rpc_method_handler(
                self._taking_raw_messages(handler.stream_unary, parse, method, limit),
                response_serializer=handler.response_serializer)
        # Left to grpcio: synchronous behaviours (they expect its thread-pool context) and
        # bidirectional streams (reflection).
        return handler if limit is None else with_behaviour(handler, limit.counted)

    def _taking_raw_body(self, behaviour: Callable[..., Any], parse: Callable[[bytes], Any],
                         method: str, limit: ConcurrencyLimit | None) -> Callable[..., Any]:
        intake = self._intake
        # One coroutine for every kind: grpc.aio also drives a response stream written with
        # context.write, so an async generator's responses are written here one by one.
        streams = inspect.isasyncgenfunction(behaviour)

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
            size, admitted, request = len(body), False, None
            counted: ConcurrencyLimit | None = None
            try:
                request = intake.charge(body, parse, method, context)
                if isinstance(request, Refusal):
                    await context.abort(request.code, request.message)
                admitted = True
                if limit is not None:
                    if not limit.enter():
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, limit.busy())
                    counted = limit
                if not streams:
                    return await behaviour(request, context)
                async for response in behaviour(request, context):
                    await context.write(response)
                return None
            except BaseException as exc:
                # Leaving through an exception: free the body now (see intake.clear_frames).
                clear_frames(exc)
                del body, context, request
                raise
            finally:
                if counted is not None:
                    counted.leave()
                intake.ended(size, admitted)

        return handle

    def _taking_raw_messages(self, behaviour: Callable[..., Any], parse: Callable[[bytes], Any],
                             method: str, limit: ConcurrencyLimit | None) -> Callable[..., Any]:
        intake = self._intake

        async def handle(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            held = 0  # the bytes of the message the handler is working on

            async def messages() -> AsyncIterator[Any]:
                nonlocal held
                async for body in bodies:
                    # Asking for the next message means the handler is done with the last one.
                    intake.ended(held, admitted=True)
                    held = 0
                    parsed = intake.charge(body, parse, method, context)
                    if isinstance(parsed, Refusal):
                        raise parsed.error()
                    held = len(body)
                    del body  # the handler gets the parsed message; the raw bytes can go
                    yield parsed

            counted: ConcurrencyLimit | None = None
            try:
                if limit is not None:
                    await limit.admit(context)
                    counted = limit
                return await behaviour(messages(), context)
            except BaseException as exc:
                clear_frames(exc)
                del context
                raise
            finally:
                if counted is not None:
                    counted.leave()
                intake.ended(held, admitted=True)

        return handle
