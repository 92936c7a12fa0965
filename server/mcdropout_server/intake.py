"""Intake: a server-wide budget of received request bytes, and request bodies parsed by us.

grpcio's aio server receives a unary request's whole message, copies it into a Python ``bytes``
and parses it with the method's deserializer before any handler runs. A body that did not parse
was answered UNKNOWN with an ERROR traceback per call, and nothing bounded the bytes that calls
hold while they wait in the queue and run (64 calls of 64 MiB each: 4 GiB of bodies alone).
:class:`IntakeInterceptor` hands every unary-request handler over without its deserializer, so
that grpcio gives it the raw body, and the handler then, first of all:

1. charges ``len(body)`` to the server's :class:`ByteBudget`, refusing with RESOURCE_EXHAUSTED
   when the budget would be exceeded; the charge is returned when the call ends, however it ends.
   Methods open without a token (the probes) take at most ``OPEN_BODY_LIMIT`` bytes, so that
   nobody without a token can hold the budget;
2. parses the body with the method's own deserializer; one that does not parse is refused with
   INVALID_ARGUMENT and logged once per client address per interval, without a traceback.

What the budget cannot bound, because it happens before any of our code runs: the bytes gRPC's
core buffers while a message is still arriving (at most ``max_message_bytes`` per call) and the
one Python copy of a body that is then refused (freed at once). What a call holds beyond its
counted bytes (the parsed message, the arrays decoded from it) is a small multiple of them.
A client-streaming method (RankPool) gets its messages raw too, one at a time: each is charged
when it arrives and given back when the handler asks for the next one (or the call ends), so a
stream holds at most one message's bytes against the budget however long it runs. Its refusals
are raised as domain errors (:class:`~mcdropout.ResourceLimitError`,
:class:`~mcdropout.InvalidArgumentError`) inside the handler, whose ``@rpc`` turns them into the
same status codes and messages as a unary call gets. Bidirectional streams (only reflection
here) are left to grpcio; the log filter in :mod:`mcdropout_server.logs` rate-limits grpcio's own
line for a body it cannot parse.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import inspect
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mcdropout import InvalidArgumentError, ResourceLimitError
from mcdropout_server.health import peer_address
from mcdropout_server.logs import RateLimiter, fields
from mcdropout_server.security import OPEN_METHODS
from mcdropout_server.settings import ServerSettings

log = logging.getLogger(__name__)
BUDGET_SETTING = "MCDROPOUT_RECEIVED_BYTES_BUDGET_MB"
LOG_INTERVAL_SECONDS = 60.0
# Methods that need no token take requests of a few bytes (a health service name at most); a
# larger one could only be there to hold the shared budget (a Watch holds it while it is open).
OPEN_BODY_LIMIT = 16 * 1024
_MIB = 2**20


class ByteBudget:
    """Bytes that calls in progress may hold at once; used from the server's event loop only.

    Args:
        limit: Most bytes held at once (>= 1).

    Raises:
        ValueError: ``limit`` below 1.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the received-bytes budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self._held = 0

    @property
    def held(self) -> int:
        """Bytes charged by calls that have not ended."""
        return self._held

    def take(self, size: int) -> bool:
        """Charge ``size`` bytes; False (and nothing charged) when that would exceed the limit."""
        if self._held + size > self.limit:
            return False
        self._held += size
        return True

    def give_back(self, size: int) -> None:
        """Return ``size`` bytes charged by :meth:`take`."""
        self._held -= size


def intake_interceptor(settings: ServerSettings) -> IntakeInterceptor:
    """The interceptor over a budget of ``settings.received_bytes_budget_mb`` MiB."""
    return IntakeInterceptor(ByteBudget(settings.received_bytes_budget_mb * _MIB), OPEN_METHODS)


class IntakeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Charges each unary request's body to a :class:`ByteBudget`, then parses it itself.

    Put it first in the server's interceptors: its handler is then the outermost, which lets it
    clear the frames an aborted call passed through (see :func:`_clear_frames`). It still sees
    the handler the others chose: a refusal by authentication is request-streaming and passes
    untouched, so a call without a token is never charged or parsed.

    Args:
        budget: The server-wide budget (``MCDROPOUT_RECEIVED_BYTES_BUDGET_MB``).
        open_methods: Full method names served without a token: their bodies may be at most
            ``OPEN_BODY_LIMIT`` bytes.
        log_interval: Seconds between two log lines about one client address's refusals.
    """

    def __init__(self, budget: ByteBudget, open_methods: Iterable[str] = (),
                 log_interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.budget = budget
        self._open = frozenset(open_methods)
        self._log_limiter = RateLimiter(log_interval)
        self._heap = HeapTrimmer()

    async def intercept_service(
            self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming:
            if handler.response_streaming or not inspect.iscoroutinefunction(handler.stream_unary):
                return handler
            return grpc.stream_unary_rpc_method_handler(
                self._taking_raw_messages(handler.stream_unary, handler.request_deserializer,
                                          details.method),
                response_serializer=handler.response_serializer)
        behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
        if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            return handler  # a synchronous behaviour expects grpcio's thread-pool context
        wrapped = self._taking_raw_bodies(behaviour, handler.request_deserializer, details.method)
        make = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                else grpc.unary_unary_rpc_method_handler)
        return make(wrapped, response_serializer=handler.response_serializer)

    def _taking_raw_bodies(self, behaviour: Callable[..., Any], parse: Callable[[bytes], Any],
                           method: str) -> Callable[..., Any]:
        # One coroutine for every kind: grpc.aio also drives a response stream written with
        # context.write, so an async generator's responses are written here one by one.
        streams = inspect.isasyncgenfunction(behaviour)

        async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
            size, admitted, request = len(body), False, None
            try:
                request = await self._admit(body, parse, method, context)
                admitted = True
                if not streams:
                    return await behaviour(request, context)
                async for response in behaviour(request, context):
                    await context.write(response)
                return None
            except BaseException as exc:
                # Leaving through an exception: free the body now (see _clear_frames).
                _clear_frames(exc)
                del body, context, request
                raise
            finally:
                self._ended(size, admitted)

        return handle

    def _taking_raw_messages(self, behaviour: Callable[..., Any], parse: Callable[[bytes], Any],
                             method: str) -> Callable[..., Any]:
        async def handle(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            held = 0  # the bytes of the message the handler is working on

            async def messages() -> AsyncIterator[Any]:
                nonlocal held
                async for body in bodies:
                    # Asking for the next message means the handler is done with the last one.
                    self._ended(held, admitted=True)
                    held = 0
                    parsed = self._charge(body, parse, method, context)
                    if isinstance(parsed, _Refusal):
                        raise parsed.error()
                    held = len(body)
                    del body  # the handler gets the parsed message; the raw bytes can go
                    yield parsed

            try:
                return await behaviour(messages(), context)
            except BaseException as exc:
                _clear_frames(exc)
                del context
                raise
            finally:
                self._ended(held, admitted=True)

        return handle

    async def _admit(self, body: bytes, parse: Callable[[bytes], Any], method: str,
                     context: grpc.aio.ServicerContext) -> Any:
        """The parsed request, its bytes charged; or the call aborted with nothing charged."""
        parsed = self._charge(body, parse, method, context)
        if isinstance(parsed, _Refusal):
            await context.abort(parsed.code, parsed.message)
        return parsed

    def _charge(self, body: bytes, parse: Callable[[bytes], Any], method: str,
                context: grpc.aio.ServicerContext) -> Any:
        """The parsed message, its bytes charged; or a :class:`_Refusal` with nothing charged."""
        size = len(body)
        if method in self._open and size > OPEN_BODY_LIMIT:
            self._log("request refused: too large for a method open without a token", method,
                      context, size)
            return _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{method} needs no token, so its request may be at most "
                            f"{OPEN_BODY_LIMIT} bytes; got {size} bytes")
        if not self.budget.take(size):
            self._log("request refused: received-bytes budget full", method, context, size)
            return _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the server is holding {self.budget.held / _MIB:.1f} MiB of received "
                            f"requests; this {size / _MIB:.1f} MiB one would go beyond its budget "
                            f"of {self.budget.limit / _MIB:.1f} MiB ({BUDGET_SETTING}): retry "
                            "later, or send smaller requests")
        try:
            return parse(body)
        except DecodeError as exc:
            error = str(exc)
        self.budget.give_back(size)
        self._log("request body does not parse", method, context, size, error=error)
        return _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request body ({size} bytes) is not a valid request message for "
                        f"{method}: {error}")

    def _ended(self, size: int, admitted: bool) -> None:
        if admitted:
            self.budget.give_back(size)
        self._heap.freed(size)

    def _log(self, what: str, method: str, context: grpc.aio.ServicerContext, size: int,
             **more: Any) -> None:
        # A client can cause these at will: one line per client address and kind per interval.
        address = peer_address(context.peer())
        held_back = self._log_limiter.allow(f"{what} {address}")
        if held_back is not None:
            log.warning(what, extra=fields(method=method, peer=address, bytes=size,
                                           held_back=held_back, **more))


@dataclass(frozen=True)
class _Refusal:
    code: grpc.StatusCode
    message: str

    def error(self) -> Exception:
        """The domain error a handler's ``@rpc`` turns into this code and message."""
        kind = (ResourceLimitError if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                else InvalidArgumentError)
        return kind(self.message)


class HeapTrimmer:
    """Hands the heap memory that request bodies leave behind back to the OS (glibc only).

    Once ``threshold`` bytes of bodies have been freed, :func:`malloc_trim` runs ``delay``
    seconds later (by then grpcio has freed its own copies too), on a worker thread so that the
    event loop never waits for it, and at most one at a time. Without it glibc kept most of a
    burst of large bodies as free heap: the process stayed hundreds of MiB above its baseline.
    Elsewhere (musl, macOS) it does nothing.

    Args:
        threshold: Bytes freed before a trim is worth its cost (about a millisecond).
        delay: Seconds from the threshold being reached to the trim.
    """

    def __init__(self, threshold: int = 8 * _MIB, delay: float = 0.2) -> None:
        self.threshold = threshold
        self.delay = delay
        self._freed = 0
        self._pending = False
        self._trim = _malloc_trim()

    def freed(self, size: int) -> None:
        """Note that a body of ``size`` bytes is being freed (call on the event loop)."""
        self._freed += size
        self._schedule()

    def _schedule(self) -> None:
        if self._trim is None or self._pending or self._freed < self.threshold:
            return
        self._pending = True
        asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self._freed = 0
        trim = self._trim
        if trim is None:
            return
        try:
            done = asyncio.get_running_loop().run_in_executor(None, trim)
        except RuntimeError:  # the loop's executor is shut down: the server is stopping
            return
        done.add_done_callback(self._finished)

    def _finished(self, _: object) -> None:
        self._pending = False
        self._schedule()  # bodies freed while it ran


def _malloc_trim() -> Callable[[], object] | None:
    try:
        return functools.partial(ctypes.CDLL("libc.so.6").malloc_trim, 0)
    except (OSError, AttributeError):  # not glibc
        return None


def _clear_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames ``exc`` passed through.

    grpc.aio keeps the exception of ``context.abort`` on the call's state, which the context in
    those frames refers to: a reference cycle that held every aborted call's request (a 60 MiB
    body, for one) until the cyclic garbage collector ran, seconds or minutes later, and a full
    collection costs hundreds of milliseconds in a process holding TensorFlow. Clearing the
    frames (and dropping the caller's own locals) lets reference counting free them at once.
    """
    traceback.clear_frames(exc.__traceback__)
