"""The server's own domain errors (the core's are in :mod:`mcdropout.errors`).

Each maps to one gRPC status code in :mod:`mcdropout_server.rpc`.
"""

from __future__ import annotations

from mcdropout import CancelledError, MCDropoutError


class ShuttingDownError(MCDropoutError):
    """The server is draining for shutdown and takes no new requests (UNAVAILABLE)."""

    def __init__(self) -> None:
        super().__init__("server is shutting down; retry on another replica")


class DeadlineExceededError(CancelledError):
    """The caller's deadline passed before the prediction finished (or started)."""
