"""Retry bookkeeping shared by the sync and asyncio clients: calls that never ran, backoff + jitter.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

from mcdropout_client.errors import from_rpc_error

# UNAVAILABLE is retried: it means the call never reached a server able to answer it (connection
# refused, server draining). Any other code is an answer, and retrying it would repeat work or
# hide a bug; with one exception, see is_retryable.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# gRPC's own details for a call cancelled on this side (the client closed): never retried.
_LOCAL_CANCELLATIONS = frozenset({"Channel closed!", "Locally cancelled by application!"})


def is_retryable(error: grpc.RpcError) -> bool:
    """Whether ``error`` says the call never ran on a server, so that sending it again is safe.

    That is UNAVAILABLE, and CANCELLED without an ``x-request-id`` trailer: a server cancels the
    calls that reach it in the last instant of a drain, as its listener closes, before any handler
    runs (every mcdropout handler sets the trailer first). CANCELLED with a request id is an answer
    (the server stopped the work), and a cancellation made by this client is not retried.
    """
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code in RETRYABLE:
        return True
    if code != grpc.StatusCode.CANCELLED:
        return False
    parsed = from_rpc_error(error)
    return parsed.request_id is None and parsed.message not in _LOCAL_CANCELLATIONS


@dataclass(frozen=True)
class RetryPolicy:
    """How failed calls are retried.

    Attributes:
        retries: retries after the first attempt (0 disables retrying).
        initial_backoff: ceiling of the first wait, seconds.
        max_backoff: largest ceiling of any wait, seconds.
        multiplier: growth of the ceiling per retry.
    """

    retries: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError(
                "backoff must satisfy 0 < initial_backoff <= max_backoff, got "
                f"initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), with full jitter."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        # Full jitter keeps many clients that failed together from retrying together.
        return random.uniform(0.0, ceiling)


class Attempts:
    """The deadline and retry count of one logical call, across its attempts.

    The timeout covers every attempt and the waits between them, so a caller's timeout is a
    promise about the whole call.
    """

    def __init__(self, policy: RetryPolicy, timeout: float | None):
        self._policy = policy
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._retries = 0

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None`` when the call has no deadline)."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def next_delay(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None`` to give up and raise."""
        if not is_retryable(error) or self._retries >= self._policy.retries:
            return None
        delay = self._policy.backoff(self._retries)
        remaining = self.remaining()
        if remaining is not None and delay >= remaining:
            return None
        self._retries += 1
        return delay
