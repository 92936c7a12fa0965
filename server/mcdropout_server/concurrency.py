"""The bound on RPCs handled at once, kept in Python so that probes never count against it.

grpcio's own ``maximum_concurrent_rpcs`` counts every call, health checks included: under a flood
of slow calls, or of idle ``Health/Watch`` streams, the orchestrator's probes were refused with
"Concurrent RPC limit exceeded!" and an overloaded replica looked dead. :class:`ConcurrencyLimit`
counts only the calls that do work; the methods it is told to leave alone (the probes, whose
streams :mod:`mcdropout_server.health` bounds on its own) always pass.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def with_behaviour(handler: grpc.RpcMethodHandler,
                   wrap: Callable[[Behaviour], Behaviour]) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind and serialisers as ``handler``, whose behaviour is
    ``wrap(the behaviour of handler)``."""
    name, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(wrap(getattr(handler, name)), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class ConcurrencyLimit:
    """Refuses a call with RESOURCE_EXHAUSTED while ``limit`` counted calls are being handled.

    A call counts from the moment its handler starts until it returns (a streaming call: until
    its stream ends); :mod:`mcdropout_server.front` counts every method but the probes. Used
    from the server's event loop only, so the count needs no lock.

    Args:
        limit: Most counted calls at once (``MCDROPOUT_MAX_CONCURRENT_RPCS``).
        unlimited: Full method names (``/package.Service/Method``) that are never counted or
            refused: the probes.

    Raises:
        ValueError: ``limit`` below 1.
    """

    def __init__(self, limit: int, unlimited: Iterable[str] = ()) -> None:
        if limit < 1:
            raise ValueError(f"the concurrent RPC limit must be >= 1, got {limit}")
        self.limit = limit
        self._unlimited = frozenset(unlimited)
        self._active = 0

    @property
    def active(self) -> int:
        """Counted calls being handled now."""
        return self._active

    def counts(self, method: str) -> bool:
        """Whether calls of ``method`` (a full name) are counted."""
        return method not in self._unlimited

    def enter(self) -> bool:
        """Count one call; False (nothing counted) when ``limit`` calls are counted already."""
        if self._active >= self.limit:
            return False
        self._active += 1
        return True

    def leave(self) -> None:
        """Uncount a call that :meth:`enter` counted."""
        self._active -= 1

    def busy(self) -> str:
        """The message of a refusal by :meth:`enter`."""
        return (f"server is busy: it is handling {self._active} calls, the most it takes at once "
                f"(MCDROPOUT_MAX_CONCURRENT_RPCS={self.limit}); retry later or on another replica")

    async def admit(self, context: grpc.aio.ServicerContext) -> None:
        """Count one call, or abort it with RESOURCE_EXHAUSTED."""
        if not self.enter():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.busy())

    def counted(self, behaviour: Behaviour) -> Behaviour:
        """``behaviour``, counted while it runs."""
        # The wrapper must be of the same sort as the behaviour (an async generator stays one)
        # for grpc.aio to drive it the same way.
        if inspect.isasyncgenfunction(behaviour):
            async def streamed(request: Any, context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[Any]:
                await self.admit(context)
                try:
                    async for response in behaviour(request, context):
                        yield response
                finally:
                    self.leave()

            return streamed

        async def awaited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self.admit(context)
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self.leave()

        return awaited
