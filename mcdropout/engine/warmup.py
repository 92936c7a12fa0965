"""Warming a predictor up: every graph a request may use traced and run once before serving."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mcdropout.engine.graphs import PassGraphs
from mcdropout.engine.inputs import InputSpec
from mcdropout.engine.rng import bucket_size
from mcdropout.engine.split import PROBE_SIZES

if TYPE_CHECKING:
    from mcdropout.engine.predictor import MCDropoutPredictor


def zero_inputs(specs: Sequence[InputSpec], rows: int = 1, size: int = PROBE_SIZES[0]
                ) -> dict[str, np.ndarray]:
    """Zero rows for every input, variable dimensions at ``size`` (the first probe size, at which
    the model is known to run): zero ids are valid for any Embedding."""
    return {spec.name: np.zeros((rows, *(size if d is None else d for d in spec.shape)),
                                spec.dtype) for spec in specs}


def largest_chunk(predictor: MCDropoutPredictor) -> int:
    """The most passes one graph call of a one-row request runs (see :func:`.sampling.plan`)."""
    return predictor.plan(1, predictor.max_samples)[1]


def sample_classes(predictor: MCDropoutPredictor) -> list[int]:
    """Every pass-count class (:func:`.rng.bucket_size`) a single request's mask kernels can
    run at: one per power of two from the smallest up to that of the largest chunk, which is
    ``max_samples`` or what the memory budget allows for one row (chunks of more rows, the last
    chunk of a request and adaptive sampling's chunks are all smaller)."""
    classes = [bucket_size(1)]
    while classes[-1] < bucket_size(largest_chunk(predictor)):
        classes.append(2 * classes[-1])
    return classes


def warm(predictor: MCDropoutPredictor, graphs: PassGraphs, batch_rows: int = 0,
         every_sample_class: bool = False) -> None:
    """Trace and run ``predictor``'s graphs once so the first real request pays no compile time.

    Args:
        predictor: The predictor to warm.
        graphs: Its graphs.
        batch_rows: Also prepare merged batches of up to this many rows at
            ``default_samples`` passes (their mask kernels compile per size class).
        every_sample_class: Also compile the mask kernels of every pass-count class up to
            ``max_samples`` (see :func:`sample_classes`), so that no single request of any T
            compiles one later (each class otherwise costs its first request some 60-120 ms).
    """
    zeros = zero_inputs(predictor.inputs)
    predictor.predict(zeros, samples=2, seed=0)
    # Mask kernels compile once per power-of-two class of passes: make the default's now.
    predictor.predict(zeros, samples=predictor.default_samples, seed=0)
    if every_sample_class:
        largest = largest_chunk(predictor)
        for size in sample_classes(predictor):
            # One row, one chunk of min(size, largest) passes: the kernels of class ``size``.
            predictor.predict(zeros, samples=max(2, min(size, largest)), seed=0)
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
