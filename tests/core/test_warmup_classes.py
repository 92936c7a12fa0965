"""Warming every pass-count class: afterwards no request of any T up to max_samples compiles.

Mask kernels are XLA-compiled once per input shape, and a single request's shape is the
power-of-two class of its chunk's pass count (:func:`mcdropout.engine.rng.bucket_size`); the
compiled kernels are shared by every graph of the process. So "nothing compiles" is: the graphs
do not retrace, and every chunk a request runs is of a class the warm-up already ran. Because
the kernels are shared, each test's model has its own layer width (a kernel is per width too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

from mcdropout.engine.predictor import MCDropoutPredictor
from mcdropout.engine.rng import bucket_size
from mcdropout.engine.warmup import sample_classes


def _predictor(max_samples: int, hidden: int, memory_budget_bytes: int = 256 * 2**20
               ) -> MCDropoutPredictor:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hidden, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    return MCDropoutPredictor(model, max_samples=max_samples, default_samples=50,
                              memory_budget_bytes=memory_budget_bytes)


def _record_classes(predictor: MCDropoutPredictor, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The classes of every single-request graph call on ``predictor`` from now on."""
    seen: set[int] = set()
    graphs = predictor.graphs

    def recording(method: Callable[..., Any], count_at: int) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if args[2] is None:  # segments: one request's seed
                seen.add(bucket_size(args[count_at]))
            return method(*args)
        return call

    monkeypatch.setattr(graphs, "chunk", recording(graphs.chunk, 4))
    monkeypatch.setattr(graphs, "whole", recording(graphs.whole, 3))
    return seen


REQUESTS = [(1, 3, False), (1, 100, False), (5, 1000, False), (1, 2000, False), (1, 2000, True),
            (3, 777, True)]  # (rows, T, adaptive); T = max_samples = 2000 included


def test_every_class_warmed_means_no_request_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = _predictor(max_samples=2000, hidden=12)
    warmed = _record_classes(predictor, monkeypatch)
    predictor.warmup(every_sample_class=True)
    assert warmed == set(sample_classes(predictor)) == {64, 128, 256, 512, 1024, 2048}
    traces, before = predictor.trace_count, set(warmed)
    for rows, samples, adaptive in REQUESTS:
        predictor.predict(np.ones((rows, 4)), samples=samples, seed=3,
                          tolerance=1e-3 if adaptive else None)
    assert warmed == before  # every chunk ran at a class already compiled
    assert predictor.trace_count == traces


def test_a_small_memory_budget_needs_only_the_classes_of_its_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = _predictor(max_samples=2000, memory_budget_bytes=2**20, hidden=512)
    largest = predictor.plan(1, 2000)[1]
    assert largest < 1000  # the budget, not max_samples, sets the largest chunk
    warmed = _record_classes(predictor, monkeypatch)
    predictor.warmup(every_sample_class=True)
    before = set(warmed)
    assert before == set(sample_classes(predictor)) and max(before) == bucket_size(largest)
    for samples in (2000, 2 * largest - 1, largest + 1):
        predictor.predict(np.ones((1, 4)), samples=samples, seed=0)
    assert warmed == before


def test_without_the_flag_a_new_class_compiles_on_first_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = _predictor(max_samples=2000, hidden=24)
    seen = _record_classes(predictor, monkeypatch)
    predictor.warmup()
    before = set(seen)
    predictor.predict(np.ones((1, 4)), samples=1000, seed=0)
    assert bucket_size(1000) not in before and bucket_size(1000) in seen

