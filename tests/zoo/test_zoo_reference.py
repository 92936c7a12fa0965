"""The independent reference is right where the answer is known in closed form.

For ``y = W^T (m * x)`` with a dropout mask ``m`` (kept with probability 1 - p, scaled by
1 / (1 - p)), ``E[y] = W^T x`` and ``Var[y_j] = p / (1 - p) * sum_i W_ij**2 x_i**2``; Gaussian
dropout at rate p has the same moments (multiplicative noise of mean 1 and variance p / (1 - p)).
The reference must meet these within its own bounds (:mod:`zoo_reference`, exact values count as
infinitely many passes), run BatchNormalization in inference mode and leave its statistics alone,
and :func:`zoo_reference.compare` must fail estimates that are off.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from zoo_reference import (
    Estimate,
    batch_norm_statistics,
    compare,
    only_dropout_stochastic,
    reference,
)

FEATURES = 4
PASSES = 4000


def _linear(noise: keras.layers.Layer, with_norm: bool = False) -> tuple[keras.Model, np.ndarray]:
    keras.utils.set_random_seed(3)
    weights = np.random.default_rng(3).normal(size=(FEATURES, 2)).astype(np.float32)
    layers = [keras.Input((FEATURES,), name="x")]
    if with_norm:
        layers.append(keras.layers.BatchNormalization())
    model = keras.Sequential([*layers, noise, keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([weights])
    return model, weights


def _rows() -> np.ndarray:
    return np.random.default_rng(4).normal(size=(3, FEATURES)).astype(np.float32)


def _exact(x: np.ndarray, weights: np.ndarray, rate: float) -> Estimate:
    x64, w64 = x.astype(np.float64), weights.astype(np.float64)
    var = rate / (1 - rate) * (x64**2) @ (w64**2)
    return Estimate(x64 @ w64, np.sqrt(var), math.inf)


@pytest.mark.parametrize("noise", [keras.layers.Dropout, keras.layers.GaussianDropout],
                         ids=["dropout", "gaussian"])
def test_reference_meets_the_closed_form(noise: type[keras.layers.Layer]) -> None:
    model, weights = _linear(noise(0.3))
    x = _rows()
    [ref] = reference(model, {"x": x}, ["out"], passes=PASSES).values()
    agreement = compare(_exact(x, weights, 0.3), ref, noise.__name__)
    assert not agreement.failures, str(agreement)
    assert ref.passes == PASSES and ref.mean.shape == ref.std.shape == (3, 2)


def test_batch_normalization_runs_in_inference_mode_and_keeps_its_statistics() -> None:
    model, weights = _linear(keras.layers.Dropout(0.3), with_norm=True)
    norm = model.layers[0]
    rng = np.random.default_rng(5)
    moving_mean, moving_var = rng.normal(size=FEATURES), rng.uniform(0.5, 2.0, size=FEATURES)
    gamma, beta = rng.uniform(0.5, 1.5, size=FEATURES), rng.normal(size=FEATURES)
    norm.set_weights([w.astype(np.float32) for w in (gamma, beta, moving_mean, moving_var)])
    before = batch_norm_statistics(model)
    x = _rows()
    normalised = (gamma * (x - moving_mean) / np.sqrt(moving_var + norm.epsilon) + beta)

    [ref] = reference(model, {"x": x}, ["out"], passes=PASSES).values()

    agreement = compare(_exact(normalised.astype(np.float32), weights, 0.3), ref)
    assert not agreement.failures, str(agreement)
    after = batch_norm_statistics(model)
    assert before.keys() == after.keys() and len(before) == 2
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert norm.trainable  # restored
    with only_dropout_stochastic(model):
        np.testing.assert_allclose(norm(x, training=True), normalised, rtol=1e-5, atol=1e-5)
    # What the flag prevents: a trainable BN called with training=True normalises by the batch
    # (and moves its statistics, so this comes last).
    assert not np.allclose(norm(x, training=True), normalised, rtol=1e-2, atol=1e-2)


def test_compare_fails_a_shifted_mean_or_a_scaled_std() -> None:
    model, _ = _linear(keras.layers.Dropout(0.3))
    x = _rows()
    [ref] = reference(model, {"x": x}, ["out"], passes=PASSES).values()
    [again] = reference(model, {"x": x}, ["out"], passes=1000).values()
    assert not compare(again, ref).failures  # an independent estimate agrees

    se = np.sqrt(again.std**2 / again.passes + ref.std**2 / ref.passes)
    shifted = Estimate(again.mean + 8 * se, again.std, again.passes)
    assert len(compare(shifted, ref).failures) == again.mean.size
    scaled = Estimate(again.mean, again.std * 1.5, again.passes)
    assert len(compare(scaled, ref, "scaled").failures) == again.mean.size
    assert "scaled row 0 output 0" in compare(scaled, ref, "scaled").failures[0]
    wrong_shape = Estimate(again.mean[:, :1], again.std[:, :1], again.passes)
    assert "shapes differ" in compare(wrong_shape, ref).failures[0]


def test_heads_are_read_by_name_from_dict_outputs_and_by_order_from_lists() -> None:
    keras.utils.set_random_seed(6)
    inp = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dropout(0.2)(keras.layers.Dense(8, activation="relu")(inp))
    a = keras.layers.Dense(1, name="a")(hidden)
    b = keras.layers.Dense(3, activation="softmax", name="b")(hidden)
    x = _rows()
    as_dict = reference(keras.Model(inp, {"b": b, "a": a}), {"x": x}, ["a", "b"], passes=200)
    as_list = reference(keras.Model(inp, [a, b]), {"x": x}, ["a", "b"], passes=200)
    for got in (as_dict, as_list):
        assert got["a"].mean.shape == (3, 1) and got["b"].mean.shape == (3, 3)
        np.testing.assert_allclose(got["b"].mean.sum(axis=1), 1.0, rtol=1e-5)
