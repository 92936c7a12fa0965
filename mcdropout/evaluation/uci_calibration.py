"""Split-conformal intervals in the UCI benchmark (``mcdropout benchmark uci --calibration-fraction``).

The benchmark (:mod:`mcdropout.evaluation.uci`) holds out the trailing share of each training
split as calibration rows and runs its protocol on the rest; this module says how many rows that
is and scores the test rows with intervals ``mean +- q * predictive_std``, q from the calibration
rows' scores ``|y - mean| / predictive_std`` through
:class:`mcdropout.calibration.model.ConformalRegression`, the type a calibrated version serves
with, beside the uncalibrated intervals at the same levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.calibration.model import ConformalRegression, conformal_rank
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores

# Levels of the split-conformal intervals scored when calibration rows are held out.
LEVELS = (0.95, 0.90)


@dataclass(frozen=True)
class ConformalResult:
    """Split-conformal intervals ``mean +- q * predictive_std`` at one level, on the test rows.

    Attributes:
        level: The interval level.
        q: The multiplier: the ``ceil((n + 1) level)``-th smallest calibration score
            ``|y - mean| / predictive_std`` (averaged over output columns if several).
        coverage: Share of test targets inside their conformal interval.
        width: Mean width of the conformal intervals (target units).
        raw_coverage: Share inside the uncalibrated central interval of the MC mixture.
        raw_width: Mean width of the uncalibrated intervals.
    """

    level: float
    q: float
    coverage: float
    width: float
    raw_coverage: float
    raw_width: float


def held_out_rows(dataset: str, rows: int, fraction: float) -> int:
    """How many trailing rows of a training split of ``rows`` rows ``fraction`` holds out.

    Args:
        dataset: The data set's name, for the message.
        rows: Rows of each training split.
        fraction: The share held out, in [0, 1); 0 holds out none.

    Returns:
        ``rows - int((1 - fraction) * rows)``, 0 when ``fraction`` is 0.

    Raises:
        InvalidArgumentError: rows are held out but fewer than the highest of :data:`LEVELS`
            needs (n/(n+1) >= level), or fewer than 2 rows would be left to train on.
    """
    held = rows - int((1.0 - fraction) * rows)
    if held:
        needed = next(n for n in range(1, 10**6) if conformal_rank(n, max(LEVELS)) <= n)
        if held < needed or rows - held < 2:
            raise InvalidArgumentError(
                f"calibration_fraction {fraction:g} holds out {held} of the {rows} training rows "
                f"of {dataset}: conformal intervals at level {max(LEVELS):g} need at least "
                f"{needed} calibration rows (n/(n+1) >= level), and training at least 2 rows")
    return held


def score(predictor: Any, test: tuple[np.ndarray, np.ndarray],
          calibration: tuple[np.ndarray, np.ndarray], samples: int, seed: int,
          level: float) -> tuple[dict[str, float], tuple[ConformalResult, ...]]:
    """The test metrics of :func:`scores.evaluate` at ``level``, and conformal intervals.

    The calibration rows are scored with the same seed as the test rows: the same dropout masks
    make (mean, predictive_std) one fixed function of the row, so calibration and test scores
    are exchangeable whenever the rows are.

    Args:
        predictor: A regression :class:`mcdropout.MCDropoutPredictor` with tau.
        test: (inputs, targets) of the test rows, original units.
        calibration: (inputs, targets) of the calibration rows.
        samples: Passes T for both.
        seed: Dropout seed for both.
        level: Interval level of the test metrics (``picp``, ``mean_interval_width``).

    Returns:
        (the metrics :func:`scores.regression_metrics` reports, one result per level of
        :data:`LEVELS`).
    """
    x_test, y_test = test
    tested = scores.predict_chunked(predictor, x_test, samples, seed,
                                    interval_levels=tuple(sorted({level, *LEVELS})),
                                    return_samples=True)
    measured = scores.regression_metrics(y_test, tested, predictor.tau, level)
    fitted = scores.predict_chunked(predictor, calibration[0], samples, seed)
    y_cal = np.asarray(calibration[1], dtype=np.float64).reshape(fitted.mean.shape)
    conformal = ConformalRegression(
        "predictive_std", np.sort(np.abs(y_cal - fitted.mean) / fitted.predictive_std, axis=0))
    y = np.asarray(y_test, dtype=np.float64).reshape(tested.mean.shape)
    results = []
    for at in LEVELS:
        q = conformal.quantile(at)
        lower, upper = tested.mean - q * tested.predictive_std, tested.mean + q * tested.predictive_std
        raw = next(iv for iv in tested.intervals if math.isclose(iv.level, at))
        results.append(ConformalResult(
            level=at, q=float(np.mean(q)), coverage=scores.interval_coverage(y, lower, upper),
            width=scores.mean_interval_width(lower, upper),
            raw_coverage=scores.interval_coverage(y, raw.lower, raw.upper),
            raw_width=scores.mean_interval_width(raw.lower, raw.upper)))
    return measured, tuple(results)
