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
        learned_noise: Regression whose model predicts a log-variance beside each mean (its
            passes folded as :func:`.sampling.noise_variances` gives them): the predictive std
            is ``sqrt(epistemic variance + mean predicted noise variance)`` and the intervals
            those of the mixture of the passes' own Gaussians. ``tau`` is then None.
    """

    task: Task
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    tau: float | None = None
    learned_noise: bool = False

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
        mean, variance = moments.mean, moments.variance()
        noise_var = noise_passes = None
        joined = np.concatenate(raw).astype(np.float64) if raw else None
        if self.learned_noise:  # means in the first half of the columns, noise variances after
            half = mean.shape[-1] // 2
            scale2 = 1.0 if self.target_std is None else self.target_std**2
            mean, variance = mean[..., :half], variance[..., :half]
            noise_var = moments.mean[..., half:] * scale2
            if joined is not None:
                noise_passes = joined[..., half:] * scale2
                joined = joined[..., :half]
        mean = self.to_target_units(mean)
        std = self.to_target_units(np.sqrt(variance), shift=False)
        passes = self.to_target_units(joined) if joined is not None else None
        result: dict[str, Any] = {}
        if self.task == "regression":
            if self.tau is not None:
                result["predictive_std"] = np.sqrt(std**2 + 1.0 / self.tau)
            elif noise_var is not None:
                result["predictive_std"] = np.sqrt(std**2 + noise_var)
            if passes is not None and levels:
                bounds = (stats.mixture_intervals(passes, self.tau**-0.5, levels)
                          if self.tau is not None
                          else stats.mixture_intervals(passes, np.sqrt(noise_passes), levels)
                          if noise_passes is not None
                          else stats.empirical_intervals(passes, levels))
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
            if noise_passes is not None:
                result["raw_noise_var"] = noise_passes.astype(np.float32)
        return Prediction(task=self.task, samples=n, seed=seed, mean=mean, std=std,
                          standard_error=std / math.sqrt(n), **result)
