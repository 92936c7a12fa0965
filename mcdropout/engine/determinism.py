"""Whether this machine's kernels let a merged batch answer each request bit for bit.

A merged batch gives every row the masks of its own request's seed and sums its statistics in
an order fixed by the request alone, so its answers equal the lone answers exactly when the
model's kernels compute a row the same way whatever the number of rows beside it. Matrix
products decide that: oneDNN picks its blocking by the shape of the product, and on some CPUs
(seen on AMD EPYC with AVX2) a row's dot products are then summed in another order for another
row count. There a merged answer differs from the lone one by float32 rounding (about 1e-7
relative per pass, 1e-9 in the float64 means), which is far below the Monte Carlo error.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

_ROW_COUNTS = (2, 3, 8, 17, 64, 200)


@functools.cache
def rows_are_batch_invariant() -> bool:
    """Whether a float32 matrix product gives each row the same bits for any row count here."""
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(64, 64)).astype(np.float32))
    x = rng.normal(size=(max(_ROW_COUNTS) + 56, 64)).astype(np.float32)
    full = tf.matmul(tf.constant(x), weights).numpy()
    return all(np.array_equal(tf.matmul(tf.constant(x[:m]), weights).numpy(), full[:m])
               for m in _ROW_COUNTS)
