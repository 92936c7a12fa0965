"""Dynamic batching: concurrent Predict calls for the same model merged into one engine call.

Requests wait in one FIFO queue for a worker. When a worker frees up, the oldest request is taken
with every queued request that can share its engine call: same model version, the same number
of passes T and the same per-row input shapes (a variable dimension, such as a sequence length,
makes requests of different lengths different shapes), and none of adaptive sampling, intervals
or raw samples (those run alone). The merged call stops growing at ``max_rows`` input rows. A
call that is not full yet waits for company while an earlier merged call of the same kind still
runs (requests pile up meanwhile, so the next call takes them all: one large call costs far less
than many small ones running side by side on the same cores), and waits up to ``max_wait`` while
other work runs. On an idle server a request starts at once: no latency when nothing can merge;
except within ``max_wait`` of the end of a call that merged several requests, when their callers'
next requests are on their way (it waits up to ``max_wait`` for them).

Requests are grouped by T rather than padded to the largest T: a request's answer is taken from
exactly its own passes, and no request pays for another's extra passes. Each request keeps its
own seed: :meth:`~mcdropout.engine.MCDropoutPredictor.run` draws every row's masks from
its own request's seed, so each answer equals the one the request gets alone.

Everything here runs on the server's event loop; only the engine calls run on worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from mcdropout import CancelledError
from mcdropout_server.admission import Admission
from mcdropout_server.calls import Answer
from mcdropout_server.errors import DeadlineExceededError, ShuttingDownError
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.registry import PreparedCall, ServedModel


@dataclass(frozen=True)
class BatchPolicy:
    """When requests are merged.

    Attributes:
        enabled: False runs every request on its own.
        max_rows: Most input rows in one merged engine call (a larger request runs alone).
        max_wait: Seconds a request may wait for others to merge with while a worker is busy.
    """

    enabled: bool = True
    max_rows: int = 64
    max_wait: float = 0.002

    def key(self, prepared: PreparedCall) -> Hashable | None:
        """What a request must share with others to be merged with them; None: it runs alone."""
        request = prepared.request
        if not self.enabled or not request.mergeable or request.rows >= self.max_rows:
            return None
        return (id(prepared.model), request.samples, request.shape_key, request.calibrated)


DEFAULT_POLICY = BatchPolicy()


@dataclass(eq=False)
class Job:
    """One admitted request on its way through the queue.

    Attributes:
        prepared: The checked call.
        key: Its batch key (see :meth:`BatchPolicy.key`), or None to run alone.
        deadline: ``time.monotonic()`` after which its caller stops waiting, or None.
        future: Resolved with the :class:`Answer` (or the exception) on the event loop.
        cancelled: Set (on the event loop) when the caller gives up; the engine, which reads
            it on a worker thread, stops at its next chunk. A plain attribute rather than a
            threading.Event: one bool written once and read elsewhere needs no lock in CPython,
            and an Event (a Condition and a lock) cost every request microseconds to make.
        enqueued: When it joined the queue (``time.monotonic()``).
    """

    prepared: PreparedCall
    key: Hashable | None
    deadline: float | None
    future: asyncio.Future[Answer]
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return self.prepared.request.rows

    @property
    def row_passes(self) -> int:
        return self.prepared.request.rows * self.prepared.request.samples

    @property
    def model(self) -> ServedModel:
        return self.prepared.model

    def gave_up(self) -> bool:
        """Whether the caller is gone: cancelled, or past its deadline (safe from any thread)."""
        return self.cancelled or (self.deadline is not None
                                  and time.monotonic() >= self.deadline)


# run(jobs) answers jobs with one engine call (blocking), in order, with an exception in place
# of the answer of a request refused on its own.
Run = Callable[[Sequence[Job]], Sequence[Answer | Exception]]


class Scheduler:
    """The queue in front of the workers: admission, merging, dispatch.

    Args:
        executor: The worker threads.
        workers: Engine calls that may run at once.
        policy: When to merge.
        admission: Queue bound and deadline checks.
        run: Runs the engine (on a worker thread).
        metrics: Where queue time and batch sizes are recorded.
    """

    def __init__(self, executor: Executor, workers: int, policy: BatchPolicy,
                 admission: Admission, run: Run, metrics: ServerMetrics | None = None) -> None:
        self._executor = executor
        self._workers = workers
        self.policy = policy
        self.admission = admission
        self._run = run
        self._metrics = metrics
        self._pending: list[Job] = []
        self._running = 0
        self._running_keys: dict[Hashable, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # When the last engine call that merged several requests ended (see _wait_for_company).
        self._merged_ended = float("-inf")

    @property
    def queued(self) -> int:
        """Requests waiting for a worker now."""
        return len(self._pending)

    async def submit(self, prepared: PreparedCall, deadline: float | None) -> Answer:
        """Queue a request and wait for its answer.

        Raises:
            QueueFullError, DeadlineExceededError: refused by admission control, at once.
            DeadlineExceededError: the deadline passed while it waited or ran.
            asyncio.CancelledError: the caller went away; its work is dropped or stopped.
        """
        if self._closed:
            raise ShuttingDownError()
        remaining = None if deadline is None else deadline - time.monotonic()
        self._drop_dead()  # so that requests already given up do not count against the bound
        try:
            self.admission.admit(self._pending, remaining)
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.observe_rejection(type(exc).__name__)
            raise
        job = Job(prepared, self.policy.key(prepared), deadline,
                  asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._pump()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                self._pump()
            raise

    def close(self) -> None:
        """Take no new work; requests still queued are refused (callable from any thread)."""
        self._closed = True

    # -- dispatch ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start as much queued work as free workers allow (called on every change).

        Queued requests are considered oldest first; one that waits for company does not hold
        up requests of other kinds behind it.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drop_dead()
        if self._closed:
            for job in self._pending:
                _settle(job, ShuttingDownError())
            self._pending.clear()
        waiting: set[Hashable] = set()
        wake: float | None = None
        i = 0
        while self._running < self._workers and i < len(self._pending):
            head = self._pending[i]
            if head.key is not None and head.key in waiting:
                i += 1
                continue
            group = self._group(head)
            wait = self._wait_for_company(head, group)
            if wait is None:
                for job in group:
                    self._pending.remove(job)
                self._start(group)
                continue
            waiting.add(head.key)
            if wait > 0:  # else a running call of the same kind pumps again when it ends
                wake = wait if wake is None else min(wake, wait)
            i += 1
        if wake is not None:
            self._timer = asyncio.get_running_loop().call_later(wake, self._pump)
        if self._metrics is not None:
            self._metrics.queue_depth.set(len(self._pending))

    def _drop_dead(self) -> None:
        """Drop requests whose caller went away or whose deadline passed while queued."""
        if not any(job.future.done() or job.gave_up() for job in self._pending):
            return  # the common case, on every submit and pump: nothing to rebuild
        alive = []
        for job in self._pending:
            if job.future.done() or job.gave_up():
                _settle(job, DeadlineExceededError(
                    "the request's deadline passed while it waited in the queue; it was not run"))
            else:
                alive.append(job)
        self._pending = alive

    def _wait_for_company(self, head: Job, group: list[Job]) -> float | None:
        """None to start ``group`` now; else seconds to wait for more (0: until a call ends)."""
        if head.key is None or sum(j.rows for j in group) >= self.policy.max_rows:
            return None
        if self._running_keys.get(head.key, 0):
            return 0.0
        waited = time.monotonic() - head.enqueued
        if waited >= self.policy.max_wait or (self._running == 0
                                               and not self._company_expected(head)):
            return None
        return self.policy.max_wait - waited

    def _company_expected(self, head: Job) -> bool:
        """Whether an idle server should still wait for company for ``head``: it arrived within
        max_wait of the end of an engine call that merged several requests. Under concurrent
        load the callers of that call send their next requests a moment later; starting the
        first of them alone cost an engine call of its own every other call (merged calls
        averaged 3-4 requests at 16 connections). One caller at a time, or a lone request on a
        quiet server, never waits."""
        since = head.enqueued - self._merged_ended
        return 0 <= since < self.policy.max_wait

    def _group(self, head: Job) -> list[Job]:
        if head.key is None:
            return [head]
        group, rows = [head], head.rows
        for job in self._pending:
            if job is not head and job.key == head.key and rows + job.rows <= self.policy.max_rows:
                group.append(job)
                rows += job.rows
        return group

    def _start(self, group: list[Job]) -> None:
        self._running += 1
        key = group[0].key
        self._running_keys[key] = self._running_keys.get(key, 0) + 1
        running, started = self._running, time.monotonic()
        if self._metrics is not None:
            label = group[0].model.name
            waited = self._metrics.child(self._metrics.queue_seconds,
                                         self._metrics.model_label(label))
            for job in group:
                waited.observe(started - job.enqueued)
            self._metrics.observe_engine_call(label, len(group), sum(j.rows for j in group))
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(self._executor, self._run, group)
        except RuntimeError:  # the pool shut down between close() and this dispatch
            work = loop.create_future()
            work.set_exception(ShuttingDownError())
        work.add_done_callback(lambda done: self._finished(group, done, started, running))

    def _finished(self, group: list[Job], done: asyncio.Future[Sequence[Answer | Exception]],
                  started: float, running: int) -> None:
        if len(group) > 1:
            self._merged_ended = time.monotonic()
        self._running -= 1
        key = group[0].key
        self._running_keys[key] -= 1
        if not self._running_keys[key]:
            del self._running_keys[key]
        try:
            answers = done.result()
        except CancelledError as exc:
            for job in group:
                _settle(job, _stopped(job, exc))
        except BaseException as exc:  # an engine failure fails the requests it served
            for job in group:
                _settle(job, exc)
        else:
            row_passes = sum(j.rows * a.prediction.samples
                             for j, a in zip(group, answers, strict=True)
                             if isinstance(a, Answer))
            self.admission.rate.observe(id(group[0].model), row_passes,
                                        time.monotonic() - started, running)
            for job, answer in zip(group, answers, strict=True):
                if isinstance(answer, Exception):
                    _settle(job, answer)
                elif not job.future.done():
                    job.future.set_result(answer)
        self._pump()


def _stopped(job: Job, exc: BaseException) -> BaseException:
    if job.deadline is not None and time.monotonic() >= job.deadline:
        return DeadlineExceededError("the request's deadline passed while its passes ran; the "
                                     "work was stopped")
    return exc


def _settle(job: Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
