"""The RPC middleware: domain errors to gRPC status codes in one place, and the wrapper every
RPC method runs in.

:func:`rpc` admits the call through the drain gate, times it, turns exceptions into status codes
with a message (an unexpected one becomes INTERNAL with the request id and is logged with its
traceback), records metrics, and logs one line per call. The server never dies on a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from mcdropout import (
    CancelledError,
    InvalidArgumentError,
    NotCalibratedError,
    NotFoundError,
    ResourceLimitError,
)
from mcdropout.errors import shorten
from mcdropout_server.calls import is_valid_request_id
from mcdropout_server.drain import DrainGate
from mcdropout_server.errors import DeadlineExceededError, ShuttingDownError
from mcdropout_server.feedback import FeedbackOffError
from mcdropout_server.logs import fields
from mcdropout_server.metrics import ServerMetrics

log = logging.getLogger(__name__)
REQUEST_ID_KEY = "x-request-id"
# Messages quote client values shortened already; this bounds any that does not, in the log.
MAX_LOGGED_ERROR_CHARS = 1000

# Most specific first: the first matching class decides the code.
_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ResourceLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotCalibratedError, grpc.StatusCode.FAILED_PRECONDITION),
    (FeedbackOffError, grpc.StatusCode.FAILED_PRECONDITION),
)


def new_request_id() -> str:
    """A request id for a call that brings none: 32 random hex digits.

    Unguessable on purpose: an id is what a Feedback call names, so an id that could be
    predicted from one's own would let a client feed back another client's answers. Drawn as
    bytes, not as a uuid4 (whose UUID object cost several times as much per call).
    """
    return os.urandom(16).hex()


def status_for(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for ``exc``."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return (grpc.StatusCode.INTERNAL,
            f"internal error while handling request {request_id}; the server log has the details")


@dataclass
class RpcRecord:
    """What one RPC was about, filled in by the method as it learns it, for logs and metrics."""

    method: str
    request_id: str
    model: str = ""
    version: int = 0
    rows: int = 0
    samples: int = 0
    seed: int | None = None


class Guarded(Protocol):
    """What :func:`rpc` needs from the servicer it decorates."""

    gate: DrainGate
    metrics: ServerMetrics
    max_reply_bytes: int | None


Method = Callable[[Any, Any, Any, RpcRecord], Awaitable[Any]]
# Set on every handler :func:`rpc` makes: it returns its reply serialized, so whoever serves it
# gives it no response serializer (:mod:`mcdropout_server.front` does so).
SERIALIZED_REPLY = "serialized_reply"


def rpc(name: str) -> Callable[[Method], Callable[[Any, Any, Any], Awaitable[Any]]]:
    """Decorate an async servicer method ``(self, request, context, record) -> response``.

    The decorated method has gRPC's signature ``(self, request, context)`` and returns the
    response serialized (``bytes``): see ``SERIALIZED_REPLY``.
    """

    def decorate(method: Method) -> Callable[[Any, Any, Any], Awaitable[Any]]:
        @functools.wraps(method)
        async def handler(self: Guarded, request: Any, context: Any) -> Any:
            wanted = getattr(request, "request_id", "")
            # An id that cannot travel in the trailer is replaced here and refused by the codec.
            record = RpcRecord(name, wanted if is_valid_request_id(wanted) else new_request_id(),
                               model=getattr(request, "model_name", ""))
            context.set_trailing_metadata(((REQUEST_ID_KEY, record.request_id),))
            started = time.perf_counter()
            self.metrics.in_flight.inc()
            # Each path records the outcome *before* answering, so that a client that has its
            # answer can rely on the metrics and the log line being there.
            try:
                self.gate.enter()
                try:
                    reply = _serialized(await method(self, request, context, record),
                                        self.max_reply_bytes)
                finally:
                    self.gate.leave()
            except asyncio.CancelledError:
                _record(self.metrics, record, _gave_up_code(context), started, None)
                raise
            except Exception as exc:
                code, message = status_for(exc, record.request_id)
                _record(self.metrics, record, code, started, exc)
                await context.abort(code, message)
            _record(self.metrics, record, grpc.StatusCode.OK, started, None)
            return reply

        setattr(handler, SERIALIZED_REPLY, True)
        return handler

    return decorate


def _serialized(response: Any, limit: int | None) -> bytes:
    # Serialized here, once: the size check needs the bytes (upb's ByteSize() serializes the
    # whole message to count them), and grpc then sends these bytes as they are.
    # Predict replies are bounded before any pass runs (registry.prepare); this catches any reply
    # that still outgrew the limit, so that the call is refused and counted as what it is rather
    # than failing in the transport after being counted OK.
    reply: bytes = response.SerializeToString()
    if limit is not None and len(reply) > limit:
        raise ResourceLimitError(
            f"the reply is {len(reply)} bytes, above the server's message limit of "
            f"{limit} bytes (MCDROPOUT_MAX_MESSAGE_BYTES); ask for fewer rows, samples or outputs")
    return reply


def _gave_up_code(context: Any) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _record(metrics: ServerMetrics, record: RpcRecord, code: grpc.StatusCode, started: float,
            failure: Exception | None) -> None:
    seconds = time.perf_counter() - started
    metrics.in_flight.dec()
    metrics.observe_rpc(record.model, record.method, code.name, seconds)
    if code == grpc.StatusCode.OK and not log.isEnabledFor(logging.DEBUG):
        return  # the common case: no line to write, so no fields to build
    # The model is the name the client sent, and the error may quote more it sent: bounded, so
    # that one call cannot add megabytes to the log.
    extra = fields(request_id=record.request_id, method=record.method,
                   model=shorten(record.model, quote=False),
                   version=record.version, rows=record.rows, samples=record.samples,
                   seed=record.seed, code=code.name, ms=round(seconds * 1000, 2))
    if code == grpc.StatusCode.INTERNAL:
        log.error("rpc failed unexpectedly", extra=extra, exc_info=failure)
    elif code != grpc.StatusCode.OK:
        # Caller-side outcomes (bad request, deadline, draining): worth seeing, not alarming.
        extra["fields"]["error"] = (shorten(str(failure), MAX_LOGGED_ERROR_CHARS, quote=False)
                                    if failure else code.name.lower())
        log.warning("rpc not completed", extra=extra)
    else:
        log.debug("rpc", extra=extra)
