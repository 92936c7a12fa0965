"""Choosing an abstention threshold on the calibration rows: abstain on a row when its
uncertainty measure is above the threshold.

The threshold meets its target on the calibration rows themselves; on new rows the risk and the
share kept are estimates, exchangeable with those rows but not guaranteed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mcdropout.calibration.model import MEASURES, AbstentionPolicy, Measure
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation.scores import risk_coverage

REGRESSION_MEASURES: tuple[str, ...] = ("predictive_std", "std")
CLASSIFICATION_MEASURES: tuple[str, ...] = tuple(m for m in MEASURES
                                                 if m not in REGRESSION_MEASURES)
TARGETS = ("risk", "coverage")


@dataclass(frozen=True)
class AbstentionTarget:
    """What an abstention policy should reach on the calibration rows.

    Attributes:
        measure: The per-row uncertainty measure: "predictive_std" or "std" for regression
            (averaged over the outputs), "predictive_entropy", "mutual_information" or
            "variation_ratio" for a classifier; all of the calibrated prediction.
        target: "risk": keep the largest share of rows whose risk (error rate, or RMSE in target
            units for regression) is at most ``value``; "coverage": keep the share ``value`` of
            the rows with the lowest measure.
        value: The risk (>= 0) or the coverage (in (0, 1]).

    Raises:
        InvalidArgumentError: an unknown measure or target, or a value out of range.
    """

    measure: Measure
    target: Literal["risk", "coverage"]
    value: float

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise InvalidArgumentError(f"abstention measure must be one of {', '.join(MEASURES)},"
                                       f" got {self.measure!r}")
        if self.target not in TARGETS:
            raise InvalidArgumentError(f"abstention target must be 'risk' or 'coverage', got "
                                       f"{self.target!r}")
        value = float(self.value)
        if self.target == "coverage" and not 0.0 < value <= 1.0:
            raise InvalidArgumentError(f"abstention coverage must be in (0, 1], got {value}")
        if self.target == "risk" and not (math.isfinite(value) and value >= 0.0):
            raise InvalidArgumentError(f"abstention risk must be a finite number >= 0, got "
                                       f"{value}")
        object.__setattr__(self, "value", value)

    def check_task(self, task: str, head: str, has_tau: bool) -> None:
        """Refuse a measure the head does not give.

        Raises:
            InvalidArgumentError: a classifier measure on a regression head or the reverse, or
                "predictive_std" on a regression head without tau.
        """
        allowed = REGRESSION_MEASURES if task == "regression" else CLASSIFICATION_MEASURES
        if task == "regression" and not has_tau:
            allowed = ("std",)
        if self.measure not in allowed:
            why = " (the head has no tau, so no predictive_std)" if (
                self.measure == "predictive_std" and task == "regression") else ""
            raise InvalidArgumentError(
                f"abstention measure {self.measure!r} does not apply to {task} head {head!r}"
                f"{why}; measures it gives: {', '.join(allowed)}")


def choose(target: AbstentionTarget, measure: np.ndarray, loss: np.ndarray,
           regression: bool) -> AbstentionPolicy:
    """The abstention threshold that meets ``target`` on the calibration rows.

    Rows are kept when their measure is at most the threshold, so rows tied at the threshold
    are kept together: only shares ending between two distinct measures can be chosen.

    Args:
        target: What to reach.
        measure: Each calibration row's measure, (rows,).
        loss: Each row's loss: 0/1 error (classification) or squared error averaged over the
            outputs (regression), (rows,).
        regression: Risk is the RMSE of the kept rows (else their error rate).

    Returns:
        The policy, with the risk and share kept it reaches on the calibration rows.

    Raises:
        InvalidArgumentError: no share of the rows reaches the target risk (the message gives
            the lowest risk reachable).
    """
    _, risk, sorted_measure = risk_coverage(measure, loss, root=regression)
    n = len(risk)
    kept = np.arange(1, n + 1)
    # A share can end after row k only where the next row's measure is larger (or k = n).
    ends = np.append(sorted_measure[1:] > sorted_measure[:-1], True)
    if target.target == "coverage":
        wanted = max(1, math.ceil(target.value * n - 1e-9))
        k = int(np.argmax(ends & (kept >= wanted))) + 1
    else:
        ok = ends & (risk <= target.value + 1e-12)
        if not ok.any():
            lowest = float(risk[ends].min())
            what = "RMSE" if regression else "error rate"
            raise InvalidArgumentError(
                f"no share of the {n} calibration rows reaches a {what} of {target.value:g} "
                f"when abstaining by {target.measure}; the lowest reachable is {lowest:.4g}: "
                "ask for a risk at least that, or for a coverage")
        k = int(np.flatnonzero(ok)[-1]) + 1
    return AbstentionPolicy(measure=target.measure, threshold=float(sorted_measure[k - 1]),
                            target=target.target, target_value=target.value,
                            risk=float(risk[k - 1]), coverage=k / n)
