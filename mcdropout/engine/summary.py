"""From the statistics of the passes to a :class:`Prediction`, in the target's own units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.engine import stats
from mcdropout.engine.prediction import Interval, Prediction, Task
from mcdropout.engine.sampling import PassStats


@dataclass(frozen=True)
class OutputSpace:
    """What a model's outputs mean.

    Attributes:
        task: "regression" or "classification".
        target_mean, target_std: A regression model predicts ``(y - mean) / std``; None for
            unscaled targets.
        tau: Noise precision in the target's units, or None.
    """

    task: Task
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    tau: float | None = None

    def scale(self) -> float:
        """The largest factor from model units to target units (for adaptive tolerances)."""
        if self.task == "regression" and self.target_std is not None:
            return float(np.max(self.target_std))
        return 1.0

    def to_target_units(self, values: np.ndarray, shift: bool = True) -> np.ndarray:
        """Undo the target standardisation (``shift=False`` for spreads: scale only)."""
        if self.task != "regression":
            return values
        if self.target_std is not None:
            values = values * self.target_std
        if shift and self.target_mean is not None:
            values = values + self.target_mean
        return values

    def summarise(self, sampled: PassStats, seed: int, levels: Sequence[float],
                  return_samples: bool) -> Prediction:
        """The prediction the statistics of ``sampled`` (and its raw passes, if kept) give."""
        moments, entropy, votes, raw = (sampled.moments, sampled.entropy, sampled.votes,
                                        sampled.raw)
        assert moments.mean is not None
        n = moments.count
        mean = self.to_target_units(moments.mean)
        std = self.to_target_units(np.sqrt(moments.variance()), shift=False)
        passes = self.to_target_units(np.concatenate(raw).astype(np.float64)) if raw else None
        result: dict[str, Any] = {}
        if self.task == "regression":
            if self.tau is not None:
                result["predictive_std"] = np.sqrt(std**2 + 1.0 / self.tau)
            if passes is not None and levels:
                bounds = (stats.mixture_intervals(passes, self.tau**-0.5, levels)
                          if self.tau is not None else stats.empirical_intervals(passes, levels))
                result["intervals"] = tuple(Interval(lv, lo, hi)
                                            for lv, (lo, hi) in zip(levels, bounds, strict=True))
        else:
            assert entropy is not None and votes is not None
            predictive = stats.entropy(mean)
            expected = entropy / n
            result.update(
                predicted_class=np.argmax(mean, axis=-1).astype(np.int64),
                predictive_entropy=predictive,
                expected_entropy=expected,
                mutual_information=stats.mutual_information(predictive, expected),
                variation_ratio=1.0 - votes.max(axis=-1) / n,
            )
            if passes is not None and levels:
                result["intervals"] = tuple(
                    Interval(lv, lo, hi) for lv, (lo, hi)
                    in zip(levels, stats.empirical_intervals(passes, levels), strict=True))
        if return_samples and passes is not None:
            result["raw_samples"] = passes.astype(np.float32)
        return Prediction(task=self.task, samples=n, seed=seed, mean=mean, std=std,
                          standard_error=std / math.sqrt(n), **result)
