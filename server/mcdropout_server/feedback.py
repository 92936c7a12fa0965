"""Feedback: recent answers kept by request id, matched with the targets that arrive later.

Every answered Predict (native and OIP: :class:`~mcdropout_server.runner.PredictionRunner` calls
:meth:`Feedback.record` on the worker thread once the engine has answered) is kept in an
:class:`AnswerStore` under (model, request id), with what is needed to score targets against it
as it was served: per head the mean, the spread intervals are scaled by, and the head's
calibration when the answer was calibrated. Raw samples are never kept; the arrays kept are the
answer's own (no copies). The same call puts every row's drift measure into the
:class:`~mcdropout_server.monitoring.DriftMonitor`.

A Feedback call (:meth:`Feedback.apply`) takes its answer out of the store (each answer is fed
back once), scores every row given (:func:`score_rows`) and pushes the scores into the rolling
:class:`~mcdropout_server.monitoring.LiveCalibration` gauges.

How each row is scored, as it was served: :mod:`mcdropout_server.feedback_scores`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout import InvalidArgumentError, MCDropoutError, NotFoundError, Prediction
from mcdropout.calibration.model import Calibration, HeadCalibration
from mcdropout.errors import shorten
from mcdropout_server.calls import Answer
from mcdropout_server.feedback_scores import score_rows
from mcdropout_server.metrics import ServerMetrics
from mcdropout_server.monitoring import DriftMonitor, LiveCalibration

# Ids of answers dropped (used, expired, evicted) remembered to say why a Feedback finds none.
MAX_DROPPED_IDS = 10_000


class FeedbackOffError(MCDropoutError):
    """The server keeps no answers (MCDROPOUT_FEEDBACK_STORE_ROWS=0): FAILED_PRECONDITION."""


class AnswerNotFoundError(NotFoundError):
    """No answer kept under a (model, request id); ``reason`` says why, as a counter label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# Why an id has no answer: counter label -> what the message says.
_WHY = {
    "unknown": "never answered, or dropped too long ago to remember",
    "used": "already fed back (each answer is matched once)",
    "expired": "expired",
    "evicted": "dropped to make room for newer answers",
    "too_large": "not kept: it had more rows than the store holds",
}


@dataclass(frozen=True, eq=False)
class StoredHead:
    """What one head of a kept answer holds.

    Attributes:
        name, task: The head.
        mean: The served mean, (rows, outputs); a classifier's mean probabilities (calibrated
            ones for a calibrated answer).
        scale: Regression: the spread its intervals are scaled by, (rows, outputs); else None.
        calibration: The head's calibration when the answer was calibrated, else None.
    """

    name: str
    task: str
    mean: np.ndarray
    scale: np.ndarray | None
    calibration: HeadCalibration | None


@dataclass(frozen=True, eq=False)
class StoredAnswer:
    """One kept answer: the version that gave it, when (``time.monotonic()``), its heads."""

    version: int
    rows: int
    at: float
    heads: tuple[StoredHead, ...]

    @property
    def nbytes(self) -> int:
        return sum(h.mean.nbytes + (0 if h.scale is None else h.scale.nbytes) for h in self.heads)


class AnswerStore:
    """Recent answers by (model, request id), bounded in rows, bytes and age; oldest dropped
    first.

    Args:
        max_rows: Rows kept, all answers together; an answer of more rows is not kept.
        ttl: Seconds an answer is kept; 0: until the row bound drops it.
        clock: Seconds, monotonic (tests pass their own).
        max_bytes: Bytes of kept arrays, all answers together; None for no byte bound. Rows
            alone do not bound memory: a classifier's row holds one value per class.
    """

    def __init__(self, max_rows: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int | None = None) -> None:
        self.max_rows, self.ttl, self.clock, self.max_bytes = max_rows, ttl, clock, max_bytes
        self._answers: OrderedDict[tuple[str, str], StoredAnswer] = OrderedDict()
        self._dropped: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.rows = 0
        self.nbytes = 0
        self._lock = threading.Lock()

    def put(self, model: str, request_id: str, answer: StoredAnswer) -> None:
        """Keep ``answer``; a later answer with the same id replaces the earlier one."""
        self.put_many([(model, request_id, answer)])

    def put_many(self, answers: Sequence[tuple[str, str, StoredAnswer]]) -> None:
        """Keep several ``(model, request id, answer)`` in order, as :meth:`put` each, under
        one hold of the lock (the answers of one merged engine call)."""
        with self._lock:
            self._expire()
            for model, request_id, answer in answers:
                self._put(model, request_id, answer)

    def _put(self, model: str, request_id: str, answer: StoredAnswer) -> None:
        key = (model, request_id)
        if key in self._answers:
            self._drop(key, "unknown")
        size = answer.nbytes
        if answer.rows > self.max_rows or (self.max_bytes is not None
                                           and size > self.max_bytes):
            self._note(key, "too_large")
            return
        while self.rows + answer.rows > self.max_rows or (
                self.max_bytes is not None and self.nbytes + size > self.max_bytes):
            self._drop(next(iter(self._answers)), "evicted")
        self._answers[key] = answer
        self._dropped.pop(key, None)
        self.rows += answer.rows
        self.nbytes += size

    def get(self, model: str, request_id: str) -> StoredAnswer:
        """The answer kept under (model, request id), left in place.

        Raises:
            AnswerNotFoundError: none: never answered, already fed back, expired or dropped.
        """
        key = (model, request_id)
        with self._lock:
            self._expire()
            answer = self._answers.get(key)
        if answer is None:
            raise self._not_found(key)
        return answer

    def take(self, model: str, request_id: str, answer: StoredAnswer) -> None:
        """Remove ``answer`` (as returned by :meth:`get`), so that it is fed back only once.

        Raises:
            AnswerNotFoundError: another Feedback took it (or it was dropped) meanwhile.
        """
        key = (model, request_id)
        with self._lock:
            if self._answers.get(key) is not answer:
                raise self._not_found(key)
            self._drop(key, "used")

    def _expire(self) -> None:
        if not self.ttl:
            return
        oldest = self.clock() - self.ttl
        while self._answers and next(iter(self._answers.values())).at < oldest:
            self._drop(next(iter(self._answers)), "expired")

    def _drop(self, key: tuple[str, str], why: str) -> None:
        answer = self._answers.pop(key)
        self.rows -= answer.rows
        self.nbytes -= answer.nbytes
        self._note(key, why)

    def _note(self, key: tuple[str, str], why: str) -> None:
        self._dropped[key] = why
        self._dropped.move_to_end(key)
        if len(self._dropped) > MAX_DROPPED_IDS:
            self._dropped.popitem(last=False)

    def _not_found(self, key: tuple[str, str]) -> AnswerNotFoundError:
        model, request_id = key
        reason = self._dropped.get(key, "unknown")
        ttl = f"for {self.ttl:g} s" if self.ttl else "without a time limit"
        return AnswerNotFoundError(
            f"no answer of model {shorten(model)} with request id {shorten(request_id)} to "
            f"match: {_WHY[reason]}. The server keeps the last {self.max_rows} rows of answers "
            f"(MCDROPOUT_FEEDBACK_STORE_ROWS) {ttl} (MCDROPOUT_FEEDBACK_TTL_SECONDS), each "
            "matched once", reason)


@dataclass(frozen=True, eq=False)
class FeedbackCall:
    """One Feedback request as decoded from the wire.

    Attributes:
        model, request_id: The answer to match.
        targets: One-head answers: the targets, (rows, outputs) or (rows,) for regression,
            (rows,) integer labels for a classifier; None when ``named_targets`` is used.
        named_targets: Head name -> such targets (a head may be left out).
        rows: The answer's rows the targets are for, 0-based; empty: every row in order.
    """

    model: str
    request_id: str
    targets: np.ndarray | None
    named_targets: Mapping[str, np.ndarray]
    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class FeedbackResult:
    """Rows matched and counted, and the version that gave the answer."""

    rows_matched: int
    version: int


class Feedback:
    """Keeps answers, matches Feedback with them, and feeds the monitoring collectors.

    Args:
        store: Where answers wait; None when the server keeps none.
        calibration: The fed-back rows' gauges.
        drift: The served rows' drift measure.
        metrics: Where matched rows and unmatched calls are counted.
    """

    def __init__(self, store: AnswerStore | None, calibration: LiveCalibration,
                 drift: DriftMonitor, metrics: ServerMetrics) -> None:
        self.store, self.calibration, self.drift, self.metrics = store, calibration, drift, metrics

    @classmethod
    def off(cls, metrics: ServerMetrics, window: int = 1) -> Feedback:
        """A Feedback that keeps no answers (every Feedback call: FeedbackOffError)."""
        return cls(None, LiveCalibration(window, ()), DriftMonitor(window), metrics)

    @classmethod
    def from_settings(cls, metrics: ServerMetrics, *, store_rows: int, ttl: float, window: int,
                      levels: Sequence[float], store_bytes: int | None = None) -> Feedback:
        """The server's Feedback, its collectors and store gauges registered in ``metrics``.

        Args:
            store_rows: Rows of answers kept (0: none; Feedback calls are refused).
            store_bytes: Bytes of answers kept; None for no byte bound.
            ttl: Seconds an answer is kept (0: no limit).
            window: Rows each rolling gauge averages over.
            levels: The monitored coverage levels.
        """
        store = AnswerStore(store_rows, ttl, max_bytes=store_bytes) if store_rows else None
        feedback = cls(store, LiveCalibration(window, levels), DriftMonitor(window), metrics)
        metrics.add_collector(feedback.calibration)
        metrics.add_collector(feedback.drift)
        if store is not None:
            metrics.feedback_store_rows.set_function(lambda: store.rows)
            metrics.feedback_store_bytes.set_function(lambda: store.nbytes)
        return feedback

    def record(self, answer: Answer, request_id: str, calibration: Calibration | None) -> None:
        """Keep one answer and count its rows' drift (on the worker thread that answered it).

        Args:
            answer: The engine's answer.
            request_id: The call's id; "" keeps nothing (the drift is counted still).
            calibration: The answering version's calibration, if it has one.
        """
        self.record_many([(answer, request_id)], calibration)

    def record_many(self, answers: Sequence[tuple[Answer, str]],
                    calibration: Calibration | None) -> None:
        """:meth:`record` for the ``(answer, request id)`` pairs of one engine call, at once.

        The rows of every answer that a head's drift series counts alike are observed together
        (one histogram update instead of one per answer) and the answers are kept under one
        hold of the store's lock: the per-answer work was a fixed cost that every batch-1
        request paid on the worker thread, holding the GIL.
        """
        drift: dict[tuple[Any, ...], list[tuple[np.ndarray, np.ndarray | None]]] = {}
        kept = []
        now = None if self.store is None else self.store.clock()
        for answer, request_id in answers:
            heads = []
            for name, prediction, _ in answer.heads():
                head_cal = None if calibration is None else calibration.heads.get(name)
                calibrated = (bool(getattr(prediction, "calibrated", False))
                              and head_cal is not None)
                measure, reference = _drift_measure(prediction, head_cal, calibrated)
                abstain = getattr(prediction, "abstain", None)
                key = (answer.model, answer.version, name, reference, abstain is None)
                drift.setdefault(key, []).append((measure, abstain))
                scale = _scale(prediction, head_cal if calibrated else None)
                heads.append(StoredHead(name, prediction.task, _own(prediction.mean),
                                        None if scale is None else _own(scale),
                                        head_cal if calibrated else None))
            if self.store is not None and request_id and now is not None:
                kept.append((answer.model, request_id, StoredAnswer(
                    answer.version, answer.prediction.rows, now, tuple(heads))))
        for (model, version, name, reference, _), parts in drift.items():
            measures = [m for m, _ in parts]
            abstains = [a for _, a in parts if a is not None]
            self.drift.observe(model, version, name,
                               measures[0] if len(measures) == 1 else np.concatenate(measures),
                               reference, np.concatenate(abstains) if abstains else None)
        if self.store is not None and kept:
            self.store.put_many(kept)

    def apply(self, call: FeedbackCall) -> FeedbackResult:
        """Match ``call`` with its answer, score its rows into the gauges, drop the answer.

        Raises:
            FeedbackOffError: the server keeps no answers.
            InvalidArgumentError: no model or request id; targets of no head of the answer, of
                the wrong shape or dtype, labels out of range, bad row indices.
            NotFoundError: no answer kept under (model, request id): never answered, already
                fed back, expired or dropped (the message says which, if the server knows).
        """
        if self.store is None:
            raise FeedbackOffError(
                "this server keeps no answers to match Feedback with "
                "(MCDROPOUT_FEEDBACK_STORE_ROWS=0); start it with a row bound above 0")
        if not call.model or not call.request_id:
            raise InvalidArgumentError("Feedback needs model_name and request_id (the "
                                       "PredictResponse's), got "
                                       f"{shorten(call.model)} and {shorten(call.request_id)}")
        try:
            answer = self.store.get(call.model, call.request_id)
            targets = _by_head(call, answer)
            rows = _rows(call.rows, answer.rows)
            scored = [(head, score_rows(head, rows, y, self.calibration.levels))
                      for head, y in targets]
            self.store.take(call.model, call.request_id, answer)
        except AnswerNotFoundError as exc:
            self.metrics.feedback_unmatched.labels(self.metrics.model_label(call.model),
                                                   exc.reason).inc()
            raise
        for head, values in scored:
            self.calibration.add(call.model, answer.version, head.name,
                                 head.calibration is not None, head.task, values)
        self.metrics.feedback_rows.labels(call.model, str(answer.version)).inc(len(rows))
        return FeedbackResult(len(rows), answer.version)


def _drift_measure(prediction: Prediction, head_cal: HeadCalibration | None, calibrated: bool
                   ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A head's drift measure per row, and the calibration's (p95, p99) when it is compared."""
    if prediction.task == "regression":
        measure = prediction.row_measure("spread")
        compared = head_cal is not None  # spreads are the same, calibrated or not
    else:
        measure = prediction.row_measure("mutual_information")
        compared = calibrated and head_cal is not None  # MI of temperature-scaled passes
    reference = (head_cal.drift.p95, head_cal.drift.p99) if compared and head_cal else None
    return measure, reference


def _scale(prediction: Prediction, head_cal: HeadCalibration | None) -> np.ndarray:
    # A calibrated answer's intervals scale by what the conformal scores were scaled by.
    if head_cal is not None and head_cal.regression and head_cal.regression.scale == "std":
        return prediction.std
    return prediction.spread


def _by_head(call: FeedbackCall, answer: StoredAnswer) -> list[tuple[StoredHead, np.ndarray]]:
    heads = {head.name: head for head in answer.heads}
    if call.targets is not None:
        if len(answer.heads) != 1:
            raise InvalidArgumentError(
                f"this answer has heads {sorted(heads)}: send named_targets by head name, not "
                "targets")
        return [(answer.heads[0], call.targets)]
    unknown = sorted(set(call.named_targets) - set(heads))
    if unknown or not call.named_targets:
        raise InvalidArgumentError(f"named_targets must name heads of the answer "
                                   f"({sorted(heads)}), got {shorten(sorted(call.named_targets))}")
    return [(heads[name], y) for name, y in call.named_targets.items()]


def _rows(wanted: Sequence[int], answered: int) -> np.ndarray:
    if not wanted:
        return np.arange(answered)
    rows = np.asarray(wanted, dtype=np.int64)
    if rows.min() < 0 or rows.max() >= answered or len(np.unique(rows)) != len(rows):
        raise InvalidArgumentError(f"rows must be distinct row indices of the answer, in "
                                   f"0..{answered - 1}, got {shorten(list(wanted))}")
    return rows


def _own(values: np.ndarray) -> np.ndarray:
    """``values`` as an array that owns its memory: the rows of a merged batch are views of the
    whole batch's arrays, which a kept view would keep alive beyond the store's byte bound."""
    return values if values.base is None else values.copy()
