"""Admission control: a bounded queue of pending work, and deadlines that cannot be met fail fast.

A request is admitted only if fewer than ``max_queue`` requests are waiting for a worker (work
already running is never counted, nor ever dropped), and only if its deadline leaves more time
than the queue ahead of it is expected to take. The expected wait is the queued row-passes
(rows x samples) of each request ahead divided by its model's recent throughput, measured from
the engine calls that finished: an estimate, so it errs low (running work is not counted, and
throughput is credited with every call running at once) and refuses only deadlines that the
queue alone would overrun.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

from mcdropout import ResourceLimitError
from mcdropout_server.errors import DeadlineExceededError

# Weight of the newest engine call in the throughput average: about the last ten calls count.
_SMOOTHING = 0.2


class Queued(Protocol):
    """What admission reads of a request waiting in the queue."""

    @property
    def model(self) -> object: ...

    @property
    def row_passes(self) -> int: ...


class QueueFullError(ResourceLimitError):
    """Too many requests are already waiting for a worker (RESOURCE_EXHAUSTED)."""


class ServiceRate:
    """Recent throughput of each model, in row-passes per second, as an exponential average."""

    def __init__(self) -> None:
        self._rates: dict[Hashable, float] = {}

    def observe(self, model: Hashable, row_passes: int, seconds: float, running: int) -> None:
        """Record one finished engine call.

        Args:
            model: Which model ran (any hashable identity of the model version).
            row_passes: Rows x passes the call computed.
            seconds: Its wall time.
            running: Engine calls running when it started, itself included: calls that share
                the CPU each take longer, so the call's rate is credited that many times.
        """
        if seconds <= 0 or row_passes <= 0:
            return
        rate = row_passes * max(1, running) / seconds
        old = self._rates.get(model)
        self._rates[model] = rate if old is None else old + _SMOOTHING * (rate - old)

    def seconds(self, model: Hashable, row_passes: int) -> float:
        """Expected seconds to compute ``row_passes`` on ``model``; 0 before any call finished."""
        rate = self._rates.get(model)
        return 0.0 if rate is None else row_passes / rate


class Admission:
    """Decides whether a new request may join the queue.

    Args:
        max_queue: Most requests waiting for a worker at once.
        rate: Throughput estimates, fed by the scheduler as engine calls finish.
    """

    def __init__(self, max_queue: int, rate: ServiceRate | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self.rate = rate or ServiceRate()

    def expected_wait(self, queued: Iterable[Queued]) -> float:
        """Seconds the queued requests are expected to take (models told apart by identity)."""
        return sum(self.rate.seconds(id(job.model), job.row_passes) for job in queued)

    def admit(self, queued: Sequence[Queued], remaining: float | None) -> None:
        """Admit a request behind ``queued`` work, or refuse it at once.

        Args:
            queued: Every request waiting for a worker now (read only when the new one has a
                deadline: the expected wait is summed then, not on every call).
            remaining: Seconds left before the request's deadline; None for no deadline.

        Raises:
            QueueFullError: ``max_queue`` requests are waiting already.
            DeadlineExceededError: the expected wait is longer than the time left.
        """
        if len(queued) >= self.max_queue:
            raise QueueFullError(
                f"server is busy: {len(queued)} requests are already waiting for a worker, the "
                f"limit (MCDROPOUT_MAX_QUEUE) is {self.max_queue}; retry with backoff or on "
                "another replica")
        if remaining is None or not queued:
            return
        wait = self.expected_wait(queued)
        if wait > remaining:
            raise DeadlineExceededError(
                f"the expected queue wait of {wait * 1000:.0f} ms ({len(queued)} requests ahead) "
                f"is longer than the {max(remaining, 0.0) * 1000:.0f} ms left before the "
                "request's deadline; retry with a longer deadline or later")
