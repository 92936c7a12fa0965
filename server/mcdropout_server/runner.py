"""Runs predictions on a bounded pool of worker threads, off the gRPC event loop.

Calls go through a :class:`~mcdropout_server.batching.Scheduler`: admission control (a bounded
queue, deadlines that cannot be met refused at once), then dynamic batching (compatible queued
calls merged into one engine call). Cancellation reaches the engine through ``should_stop``: when
the RPC is cancelled (or its deadline passes) the engine stops at its next chunk of passes, which
frees the worker for the next request; a merged call stops only once all its callers are gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from mcdropout import CancelledError, InvalidArgumentError
from mcdropout_server.admission import Admission
from mcdropout_server.batching import DEFAULT_POLICY, BatchPolicy, Job, Scheduler
from mcdropout_server.calls import Answer, PredictCall
from mcdropout_server.errors import DeadlineExceededError
from mcdropout_server.feedback import Feedback
from mcdropout_server.logs import fields
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)


class PredictionRunner:
    """Checks calls against their models, queues them, runs their passes on ``workers`` threads.

    Args:
        registry: The served models.
        workers: Engine calls running at once; further calls wait in the queue.
        batching: When queued calls are merged (default: on, 64 rows, 2 ms).
        max_queue: Most calls waiting for a worker; more are refused with RESOURCE_EXHAUSTED.
        metrics: Where queue time, queue depth and batch sizes are recorded, if anywhere.
        max_reply_bytes: Largest reply the transport sends; a call whose reply would be larger
            is refused before it is queued. None: no check.
        feedback: Where every answer is recorded (kept for Feedback, its drift counted), if
            anywhere.
    """

    def __init__(self, registry: ModelRegistry, workers: int, *,
                 batching: BatchPolicy = DEFAULT_POLICY, max_queue: int = 32,
                 metrics: ServerMetrics | None = None,
                 max_reply_bytes: int | None = None, feedback: Feedback | None = None) -> None:
        self.registry = registry
        self.max_reply_bytes = max_reply_bytes
        self.feedback = feedback
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mcdropout-worker")
        self.scheduler = Scheduler(self._pool, workers, batching, Admission(max_queue),
                                   self._run, metrics)
        if batching.enabled:
            for served in registry.models():
                served.predictor.warmup(batch_rows=batching.max_rows)

    async def predict(self, call: PredictCall, *, deadline: float | None = None) -> Answer:
        """Check, queue and run ``call``; returns when its passes are done.

        Args:
            call: The decoded request.
            deadline: ``time.monotonic()`` value after which the caller no longer waits, or None.

        Raises:
            InvalidArgumentError, NotFoundError, ResourceLimitError: a bad request: unknown
                model, outputs, samples or sizes are refused before it is queued; the input
                values themselves (NaN, Inf, out of range) are checked on the worker, so that a
                bad one fails alone rather than the batch it was merged into.
            QueueFullError: too many calls are waiting already (RESOURCE_EXHAUSTED).
            DeadlineExceededError: the deadline passed before or while the call waited or ran,
                or is sooner than the queue ahead is expected to take; a call whose deadline
                passed while it was queued is not run at all.
            asyncio.CancelledError: the RPC was cancelled; the passes are stopped.
        """
        prepared = self.registry.prepare(call, self.max_reply_bytes)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("the request's deadline passed before the prediction "
                                        "was queued")
        return await self.scheduler.submit(prepared, deadline)

    def shutdown(self) -> None:
        """Stop the worker threads once running work is done (cancelled work stops early)."""
        self.scheduler.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- on a worker thread ------------------------------------------------------------------------
    def _run(self, jobs: Sequence[Job]) -> list[Answer | InvalidArgumentError]:
        """Answer ``jobs`` with one engine call; a merged call of one job is the ordinary case.

        A job whose input values the engine refuses gets its error in place of an answer; the
        others are answered without it.
        """

        def should_stop() -> bool:
            return all(job.gave_up() for job in jobs)

        if should_stop():
            raise CancelledError("the request was cancelled before it started")
        model = jobs[0].model
        answers = model.predictor.run([job.prepared.request for job in jobs], should_stop)
        done = [answer if isinstance(answer, InvalidArgumentError)
                else Answer(model.name, model.version, answer, job.prepared.outputs)
                for job, answer in zip(jobs, answers, strict=True)]
        if self.feedback is not None:
            self._record(model, jobs, done)
        return done

    def _record(self, model: ServedModel, jobs: Sequence[Job],
                answers: Sequence[Answer | InvalidArgumentError]) -> None:
        # Monitoring must never cost a caller its answer: a failure here is logged, not raised.
        # The answers of one engine call are recorded together (see Feedback.record_many).
        assert self.feedback is not None
        calibration = getattr(model.predictor, "calibration", None)
        kept = [(answer, job.prepared.request_id)
                for job, answer in zip(jobs, answers, strict=True)
                if isinstance(answer, Answer) and job.prepared.monitored]
        if not kept:
            return
        try:
            self.feedback.record_many(kept, calibration)
        except Exception:
            log.exception("recording answers for feedback and drift failed",
                          extra=fields(request_id=",".join(rid for _, rid in kept)))
