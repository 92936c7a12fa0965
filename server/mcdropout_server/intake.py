"""Intake: a server-wide budget of received request bytes, and request bodies parsed by us.

grpcio's aio server receives a unary request's whole message, copies it into a Python ``bytes``
and parses it with the method's deserializer before any handler runs. A body that did not parse
was answered UNKNOWN with an ERROR traceback per call, and nothing bounded the bytes that calls
hold while they wait in the queue and run (64 calls of 64 MiB each: 4 GiB of bodies alone).
:mod:`mcdropout_server.front` therefore serves every unary-request method without its
deserializer, so that grpcio gives the handler the raw body, and the handler, first of all,
asks :meth:`Intake.charge` to:

1. charge ``len(body)`` to the server's :class:`ByteBudget`, refusing with RESOURCE_EXHAUSTED
   when the budget would be exceeded; the charge is returned when the call ends, however it ends.
   Methods open without a token (the probes) take at most ``OPEN_BODY_LIMIT`` bytes, so that
   nobody without a token can hold the budget;
2. parse the body with the method's own deserializer; one that does not parse is refused with
   INVALID_ARGUMENT and logged once per client address per interval, without a traceback.

What the budget cannot bound, because it happens before any of our code runs: the bytes gRPC's
core buffers while a message is still arriving (at most ``max_message_bytes`` per call) and the
one Python copy of a body that is then refused (freed at once). What a call holds beyond its
counted bytes (the parsed message, the arrays decoded from it) is a small multiple of them.
A client-streaming method (RankPool) gets its messages raw too, one at a time: each is charged
when it arrives and given back when the handler asks for the next one (or the call ends), so a
stream holds at most one message's bytes against the budget however long it runs. Its refusals
are raised as domain errors (:meth:`Refusal.error`) inside the handler, whose ``@rpc`` turns
them into the same status codes and messages as a unary call gets. Bidirectional streams (only reflection
here) are left to grpcio; the log filter in :mod:`mcdropout_server.logs` rate-limits grpcio's own
line for a body it cannot parse.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import traceback
from collections.abc import Callable, Iterable
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


def intake_for(settings: ServerSettings) -> Intake:
    """The intake over a budget of ``settings.received_bytes_budget_mb`` MiB."""
    return Intake(ByteBudget(settings.received_bytes_budget_mb * _MIB), OPEN_METHODS)


class Intake:
    """Charges each request body to a :class:`ByteBudget`, then parses it with the method's own
    deserializer; :mod:`mcdropout_server.front` calls it first thing in every handler that takes
    raw bodies.

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

    def charge(self, body: bytes, parse: Callable[[bytes], Any], method: str,
               context: grpc.aio.ServicerContext) -> Any:
        """The parsed message, its bytes charged; or a :class:`Refusal` with nothing charged."""
        size = len(body)
        if method in self._open and size > OPEN_BODY_LIMIT:
            self._log("request refused: too large for a method open without a token", method,
                      context, size)
            return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{method} needs no token, so its request may be at most "
                           f"{OPEN_BODY_LIMIT} bytes; got {size} bytes")
        if not self.budget.take(size):
            self._log("request refused: received-bytes budget full", method, context, size)
            return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
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
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                       f"the request body ({size} bytes) is not a valid request message for "
                       f"{method}: {error}")

    def ended(self, size: int, admitted: bool) -> None:
        """A body of ``size`` bytes is done with: given back to the budget if ``admitted``
        (:meth:`charge` parsed it), and counted towards the next heap trim either way."""
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
class Refusal:
    """Why :meth:`Intake.charge` refused a body, as the status a client gets."""

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


def clear_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames ``exc`` passed through.

    grpc.aio keeps the exception of ``context.abort`` on the call's state, which the context in
    those frames refers to: a reference cycle that held every aborted call's request (a 60 MiB
    body, for one) until the cyclic garbage collector ran, seconds or minutes later, and a full
    collection costs hundreds of milliseconds in a process holding TensorFlow. Clearing the
    frames (and dropping the caller's own locals) lets reference counting free them at once.
    """
    traceback.clear_frames(exc.__traceback__)
