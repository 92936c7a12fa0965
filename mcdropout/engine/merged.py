"""Several requests answered by the same graph calls (a merged batch), each as if it ran alone.

Answer i is what request i gets alone, bit for bit wherever the model's kernels compute a row the
same way whatever its position in the batch: each row gets the masks of its own request's seed
(element (pass, unit) of a mask depends only on the seed, the layer, the pass and the unit), and
requests are grouped so that each one's passes fall in the chunks it would use alone (chunk
boundaries decide how the float64 statistics are merged). Dense, convolution-free models with
ReLU, tanh or softmax meet that; sigmoid, exp and log kernels in TensorFlow round a value
differently depending on where in a vector it falls (by about 1e-7 relative), and so may the
answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mcdropout.engine.passes import PassRunner
from mcdropout.engine.prediction import ROW_STATISTICS, Prediction
from mcdropout.engine.request import Request
from mcdropout.engine.rng import seed_words
from mcdropout.engine.sampling import StopCheck


def run_merged(runner: PassRunner, requests: Sequence[Request], rows: Sequence[np.ndarray],
               should_stop: StopCheck) -> list[Prediction]:
    """Answer mergeable ``requests`` (same ``samples``) whose checked rows are ``rows``.

    Returns:
        One prediction per request, in order.
    """
    samples = requests[0].samples
    groups: dict[int, list[int]] = {}
    for i, arr in enumerate(rows):
        groups.setdefault(runner.plan(arr.shape[0], samples)[1], []).append(i)
    results: dict[int, Prediction] = {}
    for chunk, members in groups.items():
        results.update(_run_group(runner, chunk, [requests[i] for i in members],
                                  [rows[i] for i in members], members, should_stop))
    return [results[i] for i in range(len(requests))]


def _run_group(runner: PassRunner, chunk: int, requests: list[Request], rows: list[np.ndarray],
               indices: list[int], should_stop: StopCheck) -> dict[int, Prediction]:
    samples = requests[0].samples
    sizes = [arr.shape[0] for arr in rows]
    x = np.concatenate(rows)
    segments = np.repeat(np.arange(len(requests), dtype=np.int32), sizes)
    words = np.array([seed_words(r.seed) for r in requests], dtype=np.uint32)
    block = max(1, min(x.shape[0], runner.memory_budget_bytes // (chunk * runner.row_bytes)))
    graphs = runner.graphs

    def run_chunk(block_rows: slice, frontier: list[tf.Tensor], first: int, count: int
                  ) -> np.ndarray:
        return graphs.chunk(frontier, words, segments[block_rows], first, count)

    sampled = runner.sample(x, samples, block, chunk, run_chunk,
                            lambda: graphs.whole(x, words, segments, samples),
                            should_stop=should_stop)
    # Every statistic is per row, so all rows are summarised at once and then split.
    together = runner.space.summarise(sampled, 0, (), False)
    out, start = {}, 0
    for i, request, size in zip(indices, requests, sizes, strict=True):
        out[i] = _rows_of(together, slice(start, start + size), request.seed)
        start += size
    return out


def _rows_of(prediction: Prediction, rows: slice, seed: int) -> Prediction:
    """The prediction for some rows of a merged batch (it has no intervals or raw samples)."""
    arrays: dict[str, Any] = {name: np.array(getattr(prediction, name)[rows])
                              for name in ROW_STATISTICS if getattr(prediction, name) is not None}
    return dataclasses.replace(prediction, seed=seed, **arrays)
