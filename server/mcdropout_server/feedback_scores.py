"""Scoring fed-back targets against a kept answer as it was served, one row of values per row.

A calibrated regression answer's interval at a monitored level is ``mean +- q(level) * scale``
with the version's conformal q, exactly as served; an uncalibrated one's is the Gaussian
``mean +- z(level) * predictive_std`` (std without tau), an approximation of the served
MC-mixture quantiles. A calibrated classifier's prediction set at a level is every class whose
served (temperature-scaled) mean probability reaches the version's threshold, as served. A level
the calibration cannot serve (above n/(n+1)) is not scored (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mcdropout import InvalidArgumentError
from mcdropout.calibration.model import HeadCalibration
from mcdropout.errors import shorten
from mcdropout_server.monitoring import gaussian_multiplier

if TYPE_CHECKING:
    from mcdropout_server.feedback import StoredHead

_EPS = 1e-12  # probabilities clipped in log-likelihoods, as in mcdropout.evaluation.scores


def score_rows(head: StoredHead, rows: np.ndarray, y: np.ndarray,
               levels: Sequence[float]) -> np.ndarray:
    """Score targets ``y`` of ``rows`` against a kept head, one row of values per target row.

    Returns:
        Regression: ``[nll, covered@level...]`` (nll and coverage averaged over the outputs);
        classification: ``[correct, confidence, nll, set covered@level..., set size@level...]``
        (set columns NaN for an uncalibrated answer or a level the calibration cannot serve).
        Shape (len(rows), columns) float64.

    Raises:
        InvalidArgumentError: targets of the wrong shape or dtype, labels out of range.
    """
    if head.task == "regression":
        return _score_regression(head, rows, y, levels)
    return _score_classification(head, rows, y, levels)


def _score_regression(head: StoredHead, rows: np.ndarray, y: np.ndarray,
                      levels: Sequence[float]) -> np.ndarray:
    outputs = head.mean.shape[1]
    if y.dtype.kind not in "iuf" or y.shape not in ((len(rows), outputs),) + (
            ((len(rows),),) if outputs == 1 else ()):
        raise InvalidArgumentError(
            f"head {shorten(head.name)}: regression targets must be numbers of shape "
            f"({len(rows)}, {outputs}){f' or ({len(rows)},)' if outputs == 1 else ''} for "
            f"{len(rows)} rows, got {y.dtype} {tuple(y.shape)}")
    y = y.astype(np.float64).reshape(len(rows), outputs)
    if not np.all(np.isfinite(y)):
        raise InvalidArgumentError(f"head {shorten(head.name)}: targets must be finite")
    assert head.scale is not None
    mean, scale = head.mean[rows], head.scale[rows]
    error = np.abs(y - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        nll = 0.5 * np.log(2 * np.pi) + np.log(scale) + 0.5 * (error / scale) ** 2
    columns = [nll.mean(axis=1)]
    for level in levels:
        multiplier = _multiplier(head.calibration, level)
        columns.append(np.full(len(rows), np.nan) if multiplier is None
                       else (error <= multiplier * scale).mean(axis=1))
    return np.stack(columns, axis=1)


def _score_classification(head: StoredHead, rows: np.ndarray, y: np.ndarray,
                          levels: Sequence[float]) -> np.ndarray:
    probs = head.mean[rows]
    if probs.shape[1] == 1:  # a sigmoid head: P(class 1)
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    classes = probs.shape[1]
    if y.dtype.kind not in "iu" or y.shape not in ((len(rows),), (len(rows), 1)):
        raise InvalidArgumentError(
            f"head {shorten(head.name)}: classifier targets must be integer class indices of "
            f"shape ({len(rows)},) for {len(rows)} rows, got {y.dtype} {tuple(y.shape)}")
    y = y.reshape(len(rows))
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise InvalidArgumentError(f"head {shorten(head.name)}: labels must be in "
                                   f"0..{classes - 1}, got {y.min()}..{y.max()}")
    labels = y.astype(np.int64)
    picked = probs[np.arange(len(rows)), labels]
    columns = [(probs.argmax(axis=1) == labels).astype(np.float64), probs.max(axis=1),
               -np.log(np.clip(picked, _EPS, 1.0))]
    thresholds = [_threshold(head.calibration, level) for level in levels]
    nan = np.full(len(rows), np.nan)
    columns += [nan if t is None else (picked >= t).astype(np.float64) for t in thresholds]
    columns += [nan if t is None else (probs >= t).sum(axis=1).astype(np.float64)
                for t in thresholds]
    return np.stack(columns, axis=1)


def _multiplier(head_cal: HeadCalibration | None, level: float) -> np.ndarray | float | None:
    if head_cal is None:
        return gaussian_multiplier(level)
    if head_cal.regression is None:
        return None
    try:
        return head_cal.regression.quantile(level)
    except InvalidArgumentError:  # above n/(n+1): the version serves no interval there
        return None


def _threshold(head_cal: HeadCalibration | None, level: float) -> float | None:
    if head_cal is None or head_cal.sets is None:
        return None
    try:
        return head_cal.sets.threshold(level)
    except InvalidArgumentError:
        return None
