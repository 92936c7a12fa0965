"""Warming a predictor up: every graph a request may use traced and run once before serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mcdropout.engine.graphs import PassGraphs
from mcdropout.engine.inputs import InputSpec
from mcdropout.engine.split import PROBE_SIZES

if TYPE_CHECKING:
    from mcdropout.engine.predictor import MCDropoutPredictor


def zero_inputs(specs: Sequence[InputSpec], rows: int = 1, size: int = PROBE_SIZES[0]
                ) -> dict[str, np.ndarray]:
    """Zero rows for every input, variable dimensions at ``size`` (the first probe size, at which
    the model is known to run): zero ids are valid for any Embedding."""
    return {spec.name: np.zeros((rows, *(size if d is None else d for d in spec.shape)),
                                spec.dtype) for spec in specs}


def warm(predictor: MCDropoutPredictor, graphs: PassGraphs, batch_rows: int = 0) -> None:
    """Trace and run ``predictor``'s graphs once so the first real request pays no compile time.

    Args:
        predictor: The predictor to warm.
        graphs: Its graphs.
        batch_rows: Also prepare merged batches of up to this many rows at
            ``default_samples`` passes (their mask kernels compile per size class).
    """
    zeros = zero_inputs(predictor.inputs)
    predictor.predict(zeros, samples=2, seed=0)
    # Mask kernels compile once per power-of-two class of passes: make the default's now.
    predictor.predict(zeros, samples=predictor.default_samples, seed=0)
    frontier = graphs.frontier(list(zeros.values()))  # the graphs of requests run in chunks
    graphs.chunk(frontier, np.zeros(2, np.uint32), None, 0, 2)
    if batch_rows >= 2:
        graphs.chunk(frontier, np.zeros((1, 2), np.uint32), np.zeros(1, np.int32), 0, 2)
    rows = 2
    while batch_rows >= 2:
        predictor.predict_many([zeros] * rows, samples=predictor.default_samples)
        if rows >= batch_rows:
            break
        rows = min(2 * rows, batch_rows)
