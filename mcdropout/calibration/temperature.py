"""Temperature scaling of a classifier's passes.

Each pass's probabilities are rescaled before any statistic is taken: ``softmax(log p / T)``,
which is temperature scaling of that pass's logits (log p differs from the logits by a per-row
constant that the softmax cancels). Scaling the passes rather than their mean keeps every MC
statistic (mean, entropies, mutual information, votes) a statistic of one predictive
distribution, the calibrated one.
"""

from __future__ import annotations

import math

import numpy as np

_TINY = np.finfo(np.float64).tiny


def scale_probabilities(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / temperature)`` over the last axis, float64 (float32 in, float32 out).

    A probability of 0 has its log floored at the float64 tiny (about -708), so it stays
    negligible (below 1e-30 for temperatures up to 10) instead of turning into NaN.
    """
    logp = np.log(np.maximum(p.astype(np.float64), _TINY)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    out = e / e.sum(axis=-1, keepdims=True)
    return out.astype(p.dtype) if p.dtype == np.float32 else out


# log T is searched on [log 0.05, log 20]: beyond, a classifier is either near-uniform or
# near-one-hot, and the NLL no longer tells temperatures apart.
T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
# Values of (passes, rows, classes) scaled at once while the temperature is searched (float64).
_BLOCK_VALUES = 4_000_000


def calibrated_mean(passes: np.ndarray, temperature: float) -> np.ndarray:
    """``mean_t scale_probabilities(passes[t], temperature)``, float64 (rows, classes).

    Args:
        passes: Per-pass class probabilities, (passes, rows, classes).
    """
    t, rows, classes = passes.shape
    block = max(1, _BLOCK_VALUES // max(1, t * classes))
    return np.concatenate([scale_probabilities(passes[:, i:i + block].astype(np.float64),
                                               temperature).mean(axis=0)
                           for i in range(0, rows, block)]) if rows else np.zeros((0, classes))


def mc_nll(passes: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log of the temperature-scaled MC predictive probability of the true class.

    Args:
        passes: Per-pass class probabilities, (passes, rows, classes).
        labels: True classes, (rows,) int.
    """
    mean = calibrated_mean(passes, temperature)
    picked = mean[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-300))))


def fit_temperature(passes: np.ndarray, labels: np.ndarray, *, tolerance: float = 1e-4
                    ) -> float:
    """The temperature that minimises :func:`mc_nll` on labelled rows.

    A golden-section search over log T in [log 0.05, log 20] (the NLL of temperature scaling is
    unimodal in T for one pass and in practice for the MC mean); a minimum at an end of the
    range returns that end.

    Args:
        passes: Per-pass class probabilities of the calibration rows, (passes, rows, classes).
        labels: Their true classes, (rows,) int in 0..classes-1.
        tolerance: Stop once the bracket on log T is narrower than this.

    Returns:
        T in [0.05, 20].
    """
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = mc_nll(passes, labels, math.exp(a)), mc_nll(passes, labels, math.exp(b))
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = mc_nll(passes, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = mc_nll(passes, labels, math.exp(b))
    best = min((fa, a), (fb, b), (mc_nll(passes, labels, T_MIN), math.log(T_MIN)),
               (mc_nll(passes, labels, T_MAX), math.log(T_MAX)))
    return float(math.exp(best[1]))
