"""Calibrating a learned-noise version: its conformal scores are scaled by the predictive std,
which carries the noise variance the network predicts row by row, so the calibrated intervals
widen and narrow with it (and are not those of the epistemic spread alone)."""

from __future__ import annotations

import keras
import numpy as np

from mcdropout.calibration import calibrate
from mcdropout.engine import MCDropoutPredictor
from mcdropout.metadata import ModelInfo


def _learned(calibration=None) -> MCDropoutPredictor:
    keras.utils.set_random_seed(4)
    # Two output columns: a mean and a log-variance; the log-variance column's weights are
    # scaled up so the predicted noise differs a lot from row to row.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(2)])
    kernel, bias = model.layers[-1].get_weights()
    kernel[:, 1] *= 6.0
    model.layers[-1].set_weights([kernel, bias])
    info = ModelInfo(name="het", task="regression", input_shape=(3,), target_mean=(0.0,),
                     target_std=(1.0,), noise="learned")
    return MCDropoutPredictor.from_info(model, info, calibration=calibration)


def test_conformal_intervals_of_a_learned_noise_version_follow_the_learned_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    plain = _learned().predict(x, 64, 1)
    assert plain.predictive_std is not None
    # Targets drawn from the model's own predictive distribution.
    y = plain.mean + plain.predictive_std * rng.normal(size=plain.mean.shape)
    calibration = calibrate(_learned(), x, y, samples=64, seed=1)
    (head,) = calibration.heads.values()
    assert head.regression is not None and head.regression.scale == "predictive_std"

    rows = rng.normal(size=(40, 3)).astype(np.float32)
    got = _learned(calibration).predict(rows, 64, 2, interval_levels=(0.9,), calibrated=True)
    width = got.intervals[0].upper - got.intervals[0].lower
    assert got.predictive_std is not None
    # mean +- q * predictive_std: the width is proportional to the learned predictive std ...
    ratio = width / got.predictive_std
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-6)
    # ... which varies row to row far more than the epistemic std does relative to it.
    assert width.max() / width.min() > 3
    epistemic = width / got.std
    assert not np.allclose(epistemic, epistemic[0, 0], rtol=0.05)
