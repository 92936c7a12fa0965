"""Learned (heteroscedastic) noise: a head predicting a mean and a log-variance per row, from the
builder and trainers to the engine's predictive std and intervals, metadata and the store."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from scipy import special

from mcdropout import cli
from mcdropout.engine import MCDropoutPredictor
from mcdropout.engine.determinism import rows_are_batch_invariant
from mcdropout.errors import InvalidArgumentError
from mcdropout.evaluation import scores
from mcdropout.metadata import HeadInfo, ModelInfo
from mcdropout.modeling import builders, gridfit, tables, training
from mcdropout.store import ModelStore

MEAN, STD = 10.0, 2.0  # the target scaling the head undoes


def two_column_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dropout(0.2), keras.layers.Dense(2)])


def learned_predictor(model: keras.Model) -> MCDropoutPredictor:
    info = ModelInfo(name="het", task="regression", input_shape=(3,), target_mean=(MEAN,),
                     target_std=(STD,), noise="learned")
    return MCDropoutPredictor.from_info(model, info)


ROWS = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)


def test_predictive_std_adds_the_mean_predicted_noise_variance_to_the_epistemic_one() -> None:
    model = two_column_model()
    prediction = learned_predictor(model).predict(ROWS, 400, 7, return_samples=True)
    # the passes by hand: the same masks come from the same seed through a fixed-noise head
    raw = MCDropoutPredictor(model, task="regression").predict(
        ROWS, 400, 7, return_samples=True).raw_samples.astype(np.float64)
    means = raw[..., :1] * STD + MEAN
    variances = np.exp(raw[..., 1:].astype(np.float32)).astype(np.float64) * STD**2
    assert prediction.mean.shape == prediction.std.shape == (6, 1)
    np.testing.assert_allclose(prediction.mean, means.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(prediction.std, means.std(axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(prediction.predictive_std ** 2,
                               means.var(axis=0, ddof=1) + variances.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(prediction.raw_samples, means, rtol=1e-5)
    np.testing.assert_allclose(prediction.raw_noise_var, variances, rtol=1e-5)


def test_intervals_are_those_of_the_mixture_of_the_passes_own_gaussians() -> None:
    prediction = learned_predictor(two_column_model()).predict(
        ROWS, 300, 3, interval_levels=(0.5, 0.95), return_samples=True)
    means, sd = prediction.raw_samples.astype(np.float64), np.sqrt(prediction.raw_noise_var)
    for interval in prediction.intervals:
        for bound, share in ((interval.lower, (1 - interval.level) / 2),
                             (interval.upper, (1 + interval.level) / 2)):
            mixture_cdf = special.ndtr((bound - means) / sd).mean(axis=0)
            np.testing.assert_allclose(mixture_cdf, share, atol=1e-6)


def test_merged_answers_adaptive_stops_and_the_log_likelihood_use_the_mean_columns() -> None:
    predictor = learned_predictor(two_column_model())
    alone = [predictor.predict(ROWS[i:i + 2], 200, 5 + i) for i in (0, 2)]
    merged = predictor.predict_many([ROWS[0:2], ROWS[2:4]], 200, [5, 2 + 5])
    # Rounding alone where this CPU's matrix kernels depend on the row count (see determinism).
    rtol = 0 if rows_are_batch_invariant() else 1e-6
    for a, m in zip(alone, merged, strict=True):
        np.testing.assert_allclose(m.mean, a.mean, rtol=rtol)
        np.testing.assert_allclose(m.predictive_std, a.predictive_std, rtol=rtol)
    adaptive = predictor.predict(ROWS, 2000, 1, tolerance=0.05)
    assert adaptive.samples < 2000
    assert float(np.max(adaptive.standard_error)) <= 0.05
    y = np.linspace(8, 12, 6)
    report = scores.evaluate(predictor, ROWS, y, samples=100, seed=2)
    full = predictor.predict(ROWS, 100, 2, return_samples=True)
    by_hand = scores.mc_log_likelihood(y[:, None], full.raw_samples, 1 / full.raw_noise_var)
    assert report["mc_log_likelihood"] == pytest.approx(by_hand)
    log_terms = (-0.5 * (y[None, :, None] - full.raw_samples) ** 2 / full.raw_noise_var
                 - 0.5 * np.log(2 * np.pi * full.raw_noise_var))
    assert by_hand == pytest.approx(float(np.mean(special.logsumexp(log_terms, axis=0)
                                                  - np.log(100))))


def test_the_metadata_says_the_noise_model_and_refuses_impossible_ones() -> None:
    info = ModelInfo(name="het", task="regression", input_shape=(3,), noise="learned")
    assert info.heads[0].noise == "learned" and info.noise == "learned"
    assert json.loads(info.to_json())["noise"] == "learned"
    assert ModelInfo.from_json(info.to_json()).heads == info.heads
    assert ModelInfo(name="m", task="regression", input_shape=(3,)).noise == "fixed"
    with pytest.raises(InvalidArgumentError, match="noise must be one of"):
        HeadInfo("out", "regression", noise="loud")
    with pytest.raises(InvalidArgumentError, match="learned noise is for regression heads "
                                                   "without tau"):
        HeadInfo("out", "classification", noise="learned")
    with pytest.raises(InvalidArgumentError, match="without tau"):
        HeadInfo("out", "regression", tau=2.0, noise="learned")
    odd = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.2), keras.layers.Dense(3)])
    with pytest.raises(InvalidArgumentError, match="an even number of outputs\\), got 3"):
        MCDropoutPredictor(odd, heads=[HeadInfo("output", "regression", noise="learned")])


def test_build_mlp_gives_a_mean_and_a_log_variance_per_target_trained_by_gaussian_nll() -> None:
    model = builders.build_mlp(4, 2, hidden=(8,), noise="learned")
    assert model.output_shape == (None, 4)
    y = np.array([[1.0, 2.0]])
    pred = np.array([[0.5, 2.0, np.log(4.0), 0.0]])  # variances 4 and 1
    expected = np.mean([0.5 * 0.25 / 4 + 0.5 * np.log(4.0), 0.0])
    assert float(builders.gaussian_nll(y, pred)[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InvalidArgumentError, match="learned noise is for regression only"):
        builders.build_mlp(4, 3, task="classification", noise="learned")
    with pytest.raises(InvalidArgumentError, match=r"noise must be one of \['fixed', "
                                                   r"'learned'\], got 'loud'"):
        builders.build_mlp(4, 1, noise="loud")


def heteroscedastic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = x + noise whose SD is 0.1 for x < 0 and 1 for x > 0."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(rows, 1))
    return x, x[:, 0] + rng.normal(size=rows) * np.where(x[:, 0] > 0, 1.0, 0.1)


def test_the_stacked_trainer_learns_where_the_noise_is_large() -> None:
    x, y = heteroscedastic(400)
    stack = gridfit.fit_mlps(x, y, [0.05], [1e-6], hidden=(32,), epochs=150, batch_size=64,
                             learning_rate=0.01, seed=0, noise="learned")
    model = stack.to_keras(0)
    np.testing.assert_array_equal(model.get_weights()[-1], stack.biases[-1][0])
    log_var = stack.mc_samples(np.array([[-1.0], [1.0]]), 200, 1)[0, ..., 1].mean(axis=0)
    sd = np.exp(0.5 * log_var)
    # true SDs 0.1 and 1: the learned ones are within a factor 2 of them
    assert 0.05 < sd[0] < 0.2 and 0.5 < sd[1] < 2.0


def test_trained_version_is_saved_served_and_reports_its_noise_model(tmp_path: Path) -> None:
    x, y = heteroscedastic(500, seed=1)
    path = tmp_path / "het.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
    table = tables.load_table(path, task="regression")
    config = training.TrainConfig(noise="learned", hidden=(32,), epochs=120, batch_size=64,
                                  learning_rate=0.01, patience=120, seed=2)
    model, info = training.train(table, config, "het")
    assert info.noise == "learned" and info.tau is None and info.heads[0].noise == "learned"
    assert not info.provenance["training"]["tau_estimated"]
    assert "mc_log_likelihood" in info.provenance["validation_metrics"]
    store = ModelStore(tmp_path / "store")
    version = store.save(model, info)
    served = MCDropoutPredictor.from_info(store.load_model("het", version),
                                          store.read_info("het", version))
    quiet, noisy = served.predict(np.array([[-1.0], [1.0]]), 300, 0).predictive_std[:, 0]
    assert noisy > 3 * quiet and 0.5 < noisy < 2.0
    with pytest.raises(InvalidArgumentError, match="learned noise is for regression only"):
        training.train(table, training.TrainConfig(task="classification", noise="learned"), "c")


def test_tune_searches_a_learned_noise_model(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    x, y = heteroscedastic(200, seed=3)
    path = tmp_path / "het.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="x,y", comments="")
    status = cli.main(["tune", "--data", str(path), "--model-root", str(tmp_path / "store"),
                       "--name", "het", "--noise", "learned", "--dropout-rates", "0.05", "0.1",
                       "--epochs", "5", "--seed", "1", "--search-rounds", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "saved het version 1" in printed and "search: " in printed
    info = ModelStore(tmp_path / "store").read_info("het")
    assert info.noise == "learned" and info.tau is None
    tuning = info.provenance["tuning"]
    assert tuning["search"]["rounds"] <= 1 and len(tuning["grid"]) in (2, 3)
    assert tuning["search"]["axes"][0]["given"] == [0.05, 0.1]
