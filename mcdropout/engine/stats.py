"""Streaming statistics of MC passes and the uncertainty measures built on them.

Chunks of passes are summarised by (count, mean, M2) in float64 and merged with Chan et al.'s
parallel form of Welford's update, which stays accurate where the naive sum of squares cancels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

_EPS = 1e-12


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations, merged chunk by chunk.

    Attributes:
        count: Passes seen so far.
        mean: Running mean, float64.
        m2: Running sum of squared deviations from the mean, float64.
    """

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Fold in a chunk summarised by its own count, mean and M2."""
        mean = np.asarray(mean, dtype=np.float64)
        m2 = np.asarray(m2, dtype=np.float64)
        if self.count == 0 or self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = count, mean.copy(), m2.copy()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def variance(self) -> np.ndarray:
        """Unbiased sample variance (zero for a single pass)."""
        assert self.m2 is not None
        if self.count < 2:
            return np.zeros_like(self.m2)
        return self.m2 / (self.count - 1)


def entropy(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``; 0 log 0 is taken as 0."""
    p = np.clip(probabilities, 0.0, 1.0)
    return -np.sum(special.xlogy(p, p), axis=axis)


def mutual_information(predictive_entropy: np.ndarray, expected_entropy: np.ndarray) -> np.ndarray:
    """BALD: predictive minus expected entropy, clipped at 0 (rounding can make it -1e-16)."""
    return np.maximum(predictive_entropy - expected_entropy, 0.0)


def empirical_intervals(samples: np.ndarray, levels: Sequence[float]
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Central intervals from the quantiles of the passes (samples on axis 0)."""
    out = []
    for level in levels:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out.append((lo, hi))
    return out


def mixture_intervals(samples: np.ndarray, noise_std: float | np.ndarray, levels: Sequence[float],
                      iterations: int = 50) -> list[tuple[np.ndarray, np.ndarray]]:
    """Central intervals of the MC predictive mixture ``mean_t N(samples_t, noise_std_t^2)``.

    Each bound solves ``mean_t Phi((q - y_t) / noise_std_t) = alpha`` by safeguarded Newton steps
    inside a bracket that bisection keeps valid, so it converges for any set of passes.

    Args:
        samples: Per-pass predictions, (passes, ...).
        noise_std: Standard deviation of the observation noise, > 0: one value (1/sqrt(tau), a
            fixed noise) or one per pass and value, the shape of ``samples`` (a learned noise,
            each pass predicting its own variance).
        levels: Coverage levels in (0, 1).
    """
    y = np.asarray(samples, dtype=np.float64)
    noise = np.asarray(noise_std, dtype=np.float64)
    mu = y.mean(axis=0)
    spread = np.sqrt(y.var(axis=0) + np.mean(np.broadcast_to(noise, y.shape) ** 2, axis=0))
    # The bracket: every pass's Gaussian lies inside its mean +- 12 of the widest noise.
    reach = 12 * (noise.max(axis=0) if noise.ndim else noise)
    out = []
    for level in levels:
        bounds = []
        for alpha in ((1 - level) / 2, (1 + level) / 2):
            lo = y.min(axis=0) - reach
            hi = y.max(axis=0) + reach
            q = np.clip(mu + special.ndtri(alpha) * spread, lo, hi)
            for _ in range(iterations):
                z = (q - y) / noise
                f = special.ndtr(z).mean(axis=0) - alpha
                lo = np.where(f < 0, q, lo)
                hi = np.where(f >= 0, q, hi)
                density = np.exp(-0.5 * z * z)
                slope = ((density.mean(axis=0) / noise) if noise.ndim == 0
                         else (density / noise).mean(axis=0)) / np.sqrt(2 * np.pi)
                step = q - f / np.maximum(slope, _EPS)
                inside = (step > lo) & (step < hi)
                q_next = np.where(inside, step, 0.5 * (lo + hi))
                if np.all(np.abs(q_next - q) <= 1e-10 * (1 + np.abs(q))):
                    q = q_next
                    break
                q = q_next
            bounds.append(q)
        out.append((bounds[0], bounds[1]))
    return out
