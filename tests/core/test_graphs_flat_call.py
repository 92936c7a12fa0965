"""The traced graphs are called through the concrete function's flat entry: same outputs as the
structured call, and a TensorFlow without that entry falls back to the structured call."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcdropout import MCDropoutPredictor
from mcdropout.engine import graphs


def _graph() -> graphs._Graph:
    def fn(x: tf.Tensor, n: tf.Tensor) -> list[tf.Tensor]:
        y = tf.matmul(x, x, transpose_b=True) * tf.cast(n, tf.float32)
        return [y, tf.reduce_sum(y, axis=1)]
    return graphs._Graph(fn, [tf.TensorSpec([None, 4], tf.float32),
                              tf.TensorSpec([], tf.int32)])


def test_the_flat_entry_gives_the_structured_call_s_outputs() -> None:
    graph = _graph()
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4)).astype("float32"))
    n = tf.constant(3, tf.int32)
    flat = graph(x, n)
    assert graph._flat is not None, "this TensorFlow has no flat entry; the test proves nothing"
    structured = graph._concrete(x, n)
    assert isinstance(flat, list) and len(flat) == len(structured) == 2
    for a, b in zip(flat, structured, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_without_a_flat_entry_the_structured_call_is_used() -> None:
    assert graphs.flat_call(object()) is None


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dropout(0.3), keras.layers.Dense(2)])


@pytest.mark.parametrize("samples", [7, 300])
def test_answers_are_bit_identical_with_and_without_the_flat_entry(monkeypatch, samples) -> None:
    rows = np.random.default_rng(2).normal(size=(5, 8)).astype("float32")
    fast = MCDropoutPredictor(_mlp(), tau=2.0).predict(rows, samples=samples, seed=11,
                                                        interval_levels=(0.9,))
    monkeypatch.setattr(graphs, "flat_call", lambda concrete: None)
    slow = MCDropoutPredictor(_mlp(), tau=2.0).predict(rows, samples=samples, seed=11,
                                                        interval_levels=(0.9,))
    for name in ("mean", "std", "predictive_std"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    np.testing.assert_array_equal(fast.intervals[0].lower, slow.intervals[0].lower)
