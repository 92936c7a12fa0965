"""Runs predictions on a bounded pool of worker threads, off the gRPC event loop.

The servicer awaits :meth:`PredictionRunner.predict`; this is the seam where a dynamic-batching
layer can later queue and merge calls. Cancellation reaches the engine through ``should_stop``:
when the RPC is cancelled (or its deadline passes) the engine stops at its next chunk of passes,
which frees the worker for the next request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mcdropout import CancelledError
from mcdropout_server.calls import Answer, DeadlineExceededError, PredictCall
from mcdropout_server.registry import ModelRegistry


class PredictionRunner:
    """Checks calls on the event loop, runs their passes on ``workers`` threads.

    Args:
        registry: The served models.
        workers: Number of threads running passes at once; further calls wait in the queue
            (bounded by the server's max_concurrent_rpcs).
    """

    def __init__(self, registry: ModelRegistry, workers: int) -> None:
        self.registry = registry
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mcdropout-worker")

    async def predict(self, call: PredictCall, *, deadline: float | None = None) -> Answer:
        """Check and run ``call``; returns when its passes are done.

        Args:
            call: The decoded request.
            deadline: ``time.monotonic()`` value after which the caller no longer waits, or None.

        Raises:
            DeadlineExceededError: the deadline passed before or while the passes ran; a call
                whose deadline passed while it was queued is not run at all.
            asyncio.CancelledError: the RPC was cancelled; the passes are stopped.
            InvalidArgumentError, NotFoundError, ResourceLimitError: a bad request.
        """
        prepared = self.registry.prepare(call)
        stop = threading.Event()

        def should_stop() -> bool:
            return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

        _check_deadline(deadline, "before the prediction was queued")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.registry.run, prepared, should_stop)
        except asyncio.CancelledError:
            stop.set()  # the worker notices at its next chunk and drops the rest
            raise
        except CancelledError:
            _check_deadline(deadline, "while the passes ran; the work was stopped")
            raise

    def shutdown(self) -> None:
        """Stop the worker threads once queued work is done (cancelled work stops early)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _check_deadline(deadline: float | None, when: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError(f"the request's deadline passed {when}")
