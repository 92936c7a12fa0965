"""Temperature scaling of a classifier's passes.

Each pass's probabilities are rescaled before any statistic is taken: ``softmax(log p / T)``,
which is temperature scaling of that pass's logits (log p differs from the logits by a per-row
constant that the softmax cancels). Scaling the passes rather than their mean keeps every MC
statistic (mean, entropies, mutual information, votes) a statistic of one predictive
distribution, the calibrated one.
"""

from __future__ import annotations

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
