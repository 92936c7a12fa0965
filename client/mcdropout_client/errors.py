"""Typed exceptions for failed calls, mapped from gRPC status codes in one place."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

# Trailing-metadata keys under which a server may echo the request id of a failed call.
REQUEST_ID_KEYS = ("x-request-id", "request-id")


class ClientError(Exception):
    """A call to the mcdropout service failed.

    Attributes:
        code: the gRPC status code.
        message: the server's explanation (the status details), e.g.
            ``"samples must be in 1..10000, got 0"``.
        request_id: the request id the server echoed in trailing metadata, if any.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, request_id: str | None = None):
        self.code = code
        self.message = message
        self.request_id = request_id
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{code.name}: {message}{suffix}")


class InvalidArgument(ClientError):
    """The request was malformed: bad tensor, samples, interval levels or outputs."""


class NotFound(ClientError):
    """The model or model version does not exist on the server."""


class ResourceExhausted(ClientError):
    """The request is above a server limit, or the server's queue is full."""


class DeadlineExceeded(ClientError):
    """The call did not finish before its timeout."""


class Unavailable(ClientError):
    """The server could not be reached or is draining (retried before this is raised)."""


class Cancelled(ClientError):
    """The call was cancelled."""


class Unauthenticated(ClientError):
    """The call carried no valid credentials."""


class PermissionDenied(ClientError):
    """The credentials are valid but not allowed to make this call."""


class FailedPrecondition(ClientError):
    """The server is not in a state to answer (e.g. the model cannot be used)."""


class Unimplemented(ClientError):
    """The server does not implement this method."""


class Internal(ClientError):
    """The server failed while answering."""


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(error: grpc.RpcError) -> ClientError:
    """Map a failed gRPC call (sync or asyncio) to the matching :class:`ClientError` subclass.

    Codes without a dedicated subclass (e.g. UNKNOWN, ABORTED) give a plain ``ClientError``.
    """
    code = _call(error, "code") or grpc.StatusCode.UNKNOWN
    message = _call(error, "details") or str(error)
    request_id = None
    for key, value in _call(error, "trailing_metadata") or ():
        if key in REQUEST_ID_KEYS:
            request_id = value.decode() if isinstance(value, bytes) else str(value)
    return _BY_CODE.get(code, ClientError)(code, message, request_id=request_id)


def raise_for(error: grpc.RpcError) -> NoReturn:
    """Raise the :class:`ClientError` that :func:`from_rpc_error` maps ``error`` to, chained."""
    raise from_rpc_error(error) from error


def _call(error: grpc.RpcError, name: str) -> Any:
    # A bare grpc.RpcError has none of the grpc.Call methods; the errors gRPC raises have all.
    method = getattr(error, name, None)
    return method() if callable(method) else None
