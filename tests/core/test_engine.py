"""The MC engine: statistics, determinism, layer families, chunking, prefix caching, limits."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from scipy import special

from mcdropout import (
    CancelledError,
    InvalidArgumentError,
    MCDropoutPredictor,
    NoStochasticLayersError,
    ResourceLimitError,
)
from mcdropout.engine.determinism import rows_are_batch_invariant
from mcdropout.engine.stats import RunningMoments


def _mlp(inputs: int = 8, hidden: int = 32, outputs: int = 1, rate: float = 0.2,
         activation: str | None = None) -> keras.Model:
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((inputs,)),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dropout(rate),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dropout(rate),
        keras.layers.Dense(outputs, activation=activation),
    ])


def _linear_dropout(weights: np.ndarray, rate: float, layer: keras.layers.Layer | None = None
                    ) -> keras.Model:
    """y = w . (dropout(x)): mean w.x and variance sum w^2 x^2 p/(1-p) are known exactly."""
    model = keras.Sequential([keras.Input((len(weights),)),
                              layer or keras.layers.Dropout(rate),
                              keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([weights.reshape(-1, 1).astype("float32")])
    return model


@pytest.fixture(scope="module")
def regressor() -> MCDropoutPredictor:
    return MCDropoutPredictor(_mlp(), tau=4.0)


@pytest.fixture(scope="module")
def classifier() -> MCDropoutPredictor:
    return MCDropoutPredictor(_mlp(outputs=3, rate=0.5, activation="softmax"))


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 8)).astype("float32")


def test_mean_and_std_match_the_exact_dropout_moments() -> None:
    rng = np.random.default_rng(3)
    w, x, p, t = rng.normal(size=20), rng.normal(size=(1, 20)), 0.3, 4000
    result = MCDropoutPredictor(_linear_dropout(w, p)).predict(x, samples=t, seed=11)
    exact_mean = float(x[0] @ w)
    exact_var = float(np.sum(w**2 * x[0] ** 2) * p / (1 - p))
    assert abs(result.mean[0, 0] - exact_mean) < 5 * np.sqrt(exact_var / t)
    # The sample variance of T draws has standard error ~ var * sqrt(2 / T) (plus kurtosis).
    assert abs(result.std[0, 0] ** 2 - exact_var) < 6 * exact_var * np.sqrt(3 / t)


def test_drop_fraction_equals_the_rate() -> None:
    w, p, t = np.ones(64), 0.25, 500
    predictor = MCDropoutPredictor(_linear_dropout(w, p))
    raw = predictor.predict(np.ones((1, 64)), samples=t, seed=5, return_samples=True).raw_samples
    assert raw is not None
    kept = raw[:, 0, 0] * (1 - p)  # each kept unit contributes 1/(1-p), scaled back to a count
    fraction_dropped = 1 - kept.mean() / 64
    assert abs(fraction_dropped - p) < 5 * np.sqrt(p * (1 - p) / (64 * t))


def test_gaussian_dropout_has_the_documented_variance() -> None:
    rng = np.random.default_rng(4)
    w, x, p, t = rng.normal(size=10), rng.normal(size=(1, 10)), 0.2, 4000
    model = _linear_dropout(w, p, keras.layers.GaussianDropout(p))
    result = MCDropoutPredictor(model).predict(x, samples=t, seed=2)
    exact_var = float(np.sum(w**2 * x[0] ** 2) * p / (1 - p))
    assert abs(result.mean[0, 0] - float(x[0] @ w)) < 5 * np.sqrt(exact_var / t)
    assert abs(result.std[0, 0] ** 2 - exact_var) < 6 * exact_var * np.sqrt(3 / t)


def test_alpha_dropout_keeps_mean_and_variance_of_standard_inputs() -> None:
    model = keras.Sequential([keras.Input((2000,)), keras.layers.AlphaDropout(0.1)])
    x = np.random.default_rng(1).normal(size=(1, 2000))
    raw = MCDropoutPredictor(model, task="regression").predict(
        x, samples=20, seed=1, return_samples=True).raw_samples
    assert raw is not None
    assert abs(raw.mean()) < 0.05 and abs(raw.var() - 1) < 0.1
    assert not np.allclose(raw[0], raw[1])


def test_same_seed_same_answer_and_fresh_seed_otherwise(regressor, rows) -> None:
    a = regressor.predict(rows, samples=50, seed=123)
    b = regressor.predict(rows, samples=50, seed=123)
    c = regressor.predict(rows, samples=50, seed=124)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert not np.allclose(a.mean, c.mean)
    fresh1, fresh2 = regressor.predict(rows, samples=50), regressor.predict(rows, samples=50)
    assert fresh1.seed != fresh2.seed and not np.allclose(fresh1.mean, fresh2.mean)
    replay = regressor.predict(rows, samples=50, seed=fresh1.seed)
    np.testing.assert_array_equal(replay.mean, fresh1.mean)


def test_seed_accepts_the_full_64_bit_range(regressor, rows) -> None:
    a = regressor.predict(rows, samples=10, seed=2**64 - 1)
    b = regressor.predict(rows, samples=10, seed=2**32 - 1)
    assert a.seed == 2**64 - 1 and not np.allclose(a.mean, b.mean)


def test_a_row_does_not_depend_on_its_batch(regressor, rows) -> None:
    # Rounding alone where this CPU's matrix kernels depend on the row count (see determinism).
    exact = rows_are_batch_invariant()
    together = regressor.predict(rows, samples=200, seed=9)
    for i in (0, 3, 5):
        alone = regressor.predict(rows[i:i + 1], samples=200, seed=9)
        np.testing.assert_allclose(alone.mean, together.mean[i:i + 1],
                                   rtol=1e-12 if exact else 1e-6, atol=1e-12)
        np.testing.assert_allclose(alone.std, together.std[i:i + 1],
                                   rtol=1e-9 if exact else 1e-5, atol=1e-12)


def test_chunking_does_not_change_the_answer(rows) -> None:
    model = _mlp()
    big = MCDropoutPredictor(model).predict(rows, samples=300, seed=4)
    small_predictor = MCDropoutPredictor(model, memory_budget_bytes=2**20)
    assert small_predictor.plan(6000, 300, False)[0] < 6000  # rows really are split in blocks
    tiny = small_predictor.predict(np.tile(rows, (1000, 1)), samples=300, seed=4)
    np.testing.assert_allclose(tiny.mean[:6], big.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tiny.std[:6], big.std, rtol=1e-7, atol=1e-12)


def test_no_retrace_for_new_batch_sizes_or_sample_counts(regressor) -> None:
    regressor.predict(np.zeros((1, 8)), samples=3, seed=0)
    before = regressor.trace_count
    for n_rows, samples in [(1, 7), (13, 100), (64, 33), (2, 1)]:
        regressor.predict(np.ones((n_rows, 8)), samples=samples)
    assert regressor.trace_count == before


def test_many_predictors_do_not_warn_of_retracing(caplog) -> None:
    # TensorFlow counts traces of MCDropoutPredictor's methods across instances: a server with
    # six models must not log what reads like a retrace per request.
    x = np.ones((3, 8))
    with caplog.at_level("WARNING", logger="tensorflow"):
        for rate in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35):
            MCDropoutPredictor(_mlp(rate=rate)).predict(x, samples=5, seed=0)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    logging.getLogger("tensorflow").warning(
        "5 out of the last 5 calls to <function Other.f> triggered tf.function retracing.")
    assert [r for r in caplog.records if "retracing" in r.getMessage()]  # others still warn


def test_batchnorm_runs_in_inference_mode_and_is_never_updated() -> None:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16),
                              keras.layers.BatchNormalization(), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    bn = model.layers[1]
    bn.set_weights([w + np.arange(w.size).reshape(w.shape) * 0.1 for w in bn.get_weights()])
    before = [w.copy() for w in bn.get_weights()]
    predictor = MCDropoutPredictor(model)
    x = np.random.default_rng(0).normal(size=(5, 4))
    for _ in range(5):
        predictor.predict(x, samples=100)
    for old, new in zip(before, bn.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # Dropout is mean-preserving after a linear layer, so the MC mean converges on the
    # deterministic inference-mode output: BN used its moving statistics.
    result = predictor.predict(x, samples=8000, seed=1)
    deterministic = model(x.astype("float32"), training=False).numpy()
    assert np.all(np.abs(result.mean - deterministic) < 5 * result.standard_error + 1e-6)


def test_prefix_caching_equals_the_unsplit_model(rows) -> None:
    model = _mlp()
    cached = MCDropoutPredictor(model)
    whole = MCDropoutPredictor(model, prefix_caching=False)
    assert cached.split.prefix_layers == 1 and whole.split.prefix_layers == 0
    a, b = cached.predict(rows, samples=100, seed=3), whole.predict(rows, samples=100, seed=3)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-4, atol=1e-6)


def test_functional_model_caches_its_deterministic_branches(rows) -> None:
    keras.utils.set_random_seed(5)
    inp = keras.Input((8,))
    trunk = keras.layers.Dense(16, activation="relu")(inp)
    side = keras.layers.Dense(4)(inp)
    noisy = keras.layers.Dropout(0.3)(trunk)
    merged = keras.layers.Concatenate()([keras.layers.Dense(8)(noisy), side])
    model = keras.Model(inp, keras.layers.Dense(2)(merged))
    cached = MCDropoutPredictor(model)
    assert cached.split.prefix_layers == 2  # trunk and side run once per row
    a = cached.predict(rows, samples=80, seed=8)
    b = MCDropoutPredictor(model, prefix_caching=False).predict(rows, samples=80, seed=8)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-6)
    assert np.all(a.std > 0)


class SubclassedNet(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.drop = keras.layers.Dropout(0.4)
        self.out = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.drop(self.hidden(x), training=training))


def test_subclassed_model_is_sampled_whole(rows) -> None:
    model = SubclassedNet()
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        MCDropoutPredictor(model)  # unbuilt: nothing tells its input shape
    model(np.zeros((1, 8), "float32"))
    assert MCDropoutPredictor(model).input_shape == (8,)  # built: its build config tells
    predictor = MCDropoutPredictor(model, input_shape=(8,))
    result = predictor.predict(rows, samples=100, seed=1)
    assert result.mean.shape == (6, 1) and np.all(result.std > 0)


def test_spatial_dropout_drops_whole_feature_maps() -> None:
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.SpatialDropout2D(0.5)])
    raw = MCDropoutPredictor(model, task="regression").predict(
        np.ones((1, 4, 4, 3)), samples=50, seed=3, return_samples=True).raw_samples
    assert raw is not None
    maps = raw.reshape(50, 4, 4, 3)
    for t in range(50):
        for c in range(3):
            assert len(np.unique(maps[t, :, :, c])) == 1  # a channel is kept or dropped whole
    assert 0 < (maps == 0).mean() < 1


def test_recurrent_dropout_uses_one_mask_for_all_time_steps() -> None:
    units = 6
    layer = keras.layers.SimpleRNN(units, activation="linear", return_sequences=True,
                                   dropout=0.5, recurrent_dropout=0.2)
    model = keras.Sequential([keras.Input((5, units)), layer])
    _, recurrent, bias = layer.get_weights()
    layer.set_weights([np.eye(units), np.zeros_like(recurrent), np.zeros_like(bias)])
    predictor = MCDropoutPredictor(model, task="regression")
    assert predictor.stochastic_layers[0].recurrent_rate == pytest.approx(0.2)
    raw = predictor.predict(np.ones((1, 5, units)), samples=40, seed=1,
                            return_samples=True).raw_samples
    assert raw is not None
    steps = raw.reshape(40, 5, units)
    np.testing.assert_array_equal(steps, np.repeat(steps[:, :1], 5, axis=1))
    assert len({tuple(s[0]) for s in steps}) > 1  # but masks differ between passes


def test_lstm_with_recurrent_dropout_is_reproducible_and_spread() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 3)),
                              keras.layers.LSTM(8, dropout=0.2, recurrent_dropout=0.3),
                              keras.layers.Dense(1)])
    x = np.random.default_rng(0).normal(size=(4, 10, 3))
    predictor = MCDropoutPredictor(model)
    a, b = predictor.predict(x, samples=30, seed=1), predictor.predict(x, samples=30, seed=1)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert np.all(a.std > 0)


def test_model_without_dropout_is_refused() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1), keras.layers.Dropout(0.0)])
    with pytest.raises(NoStochasticLayersError, match="no dropout layer"):
        MCDropoutPredictor(model)


def test_stochastic_layers_are_listed(regressor) -> None:
    assert [(s.kind, s.rate) for s in regressor.stochastic_layers] == [("Dropout", 0.2)] * 2


def test_classification_measures_agree_with_the_raw_passes(classifier, rows) -> None:
    result = classifier.predict(rows, samples=300, seed=6, return_samples=True)
    raw = result.raw_samples
    assert raw is not None and classifier.task == "classification"
    probs = raw.astype(np.float64)
    np.testing.assert_allclose(result.mean, probs.mean(0), rtol=1e-6)
    predictive = -np.sum(special.xlogy(result.mean, result.mean), -1)
    expected = -np.sum(special.xlogy(probs, probs), -1).mean(0)
    np.testing.assert_allclose(result.predictive_entropy, predictive, rtol=1e-9)
    np.testing.assert_allclose(result.expected_entropy, expected, rtol=1e-5)
    np.testing.assert_allclose(result.mutual_information, np.maximum(predictive - expected, 0),
                               atol=1e-6)
    votes = np.stack([np.bincount(row, minlength=3) for row in probs.argmax(-1).T])
    np.testing.assert_allclose(result.variation_ratio, 1 - votes.max(1) / 300)
    np.testing.assert_array_equal(result.predicted_class, result.mean.argmax(-1))
    assert np.all(result.mutual_information >= 0)
    assert np.all(result.mutual_information <= result.predictive_entropy + 1e-12)


def test_binary_sigmoid_classifier_reports_two_classes(rows) -> None:
    predictor = MCDropoutPredictor(_mlp(outputs=1, activation="sigmoid"))
    result = predictor.predict(rows, samples=50, seed=1)
    assert predictor.task == "classification" and result.mean.shape == (6, 2)
    np.testing.assert_allclose(result.mean.sum(-1), 1.0, rtol=1e-6)


def test_empirical_intervals_are_quantiles_of_the_passes(rows) -> None:
    predictor = MCDropoutPredictor(_mlp())
    result = predictor.predict(rows, samples=400, seed=2, interval_levels=[0.5, 0.9],
                               return_samples=True)
    assert result.raw_samples is not None
    raw = result.raw_samples.astype(np.float64)
    for interval in result.intervals:
        lo, hi = np.quantile(raw, [(1 - interval.level) / 2, (1 + interval.level) / 2], axis=0)
        np.testing.assert_allclose(interval.lower, lo, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(interval.upper, hi, rtol=1e-6, atol=1e-6)


def test_mixture_intervals_solve_the_predictive_cdf(regressor, rows) -> None:
    result = regressor.predict(rows, samples=500, seed=2, interval_levels=[0.95],
                               return_samples=True)
    assert result.raw_samples is not None and result.predictive_std is not None
    raw, noise = result.raw_samples.astype(np.float64), 4.0**-0.5
    (interval,) = result.intervals
    for bound, alpha in ((interval.lower, 0.025), (interval.upper, 0.975)):
        cdf = special.ndtr((bound[None] - raw) / noise).mean(0)
        np.testing.assert_allclose(cdf, alpha, atol=1e-4)
    np.testing.assert_allclose(result.predictive_std, np.sqrt(result.std**2 + 0.25))


def test_target_standardisation_is_undone() -> None:
    model = _mlp()
    x = np.ones((2, 8))
    plain = MCDropoutPredictor(model, tau=4.0).predict(x, samples=100, seed=1)
    scaled = MCDropoutPredictor(model, tau=4.0, target_mean=[10.0], target_std=[3.0],
                                feature_mean=np.zeros(8), feature_std=np.ones(8))
    result = scaled.predict(x, samples=100, seed=1)
    np.testing.assert_allclose(result.mean, 10 + 3 * plain.mean, rtol=1e-6)
    np.testing.assert_allclose(result.std, 3 * plain.std, rtol=1e-6)
    assert scaled.tau == pytest.approx(4.0 / 9)


def test_adaptive_sampling_stops_at_the_tolerance(regressor, rows) -> None:
    loose = regressor.predict(rows, samples=5000, seed=1, tolerance=0.05)
    assert loose.samples < 5000 and np.all(loose.standard_error <= 0.05)
    strict = regressor.predict(rows, samples=300, seed=1, tolerance=1e-9)
    assert strict.samples == 300


def test_many_samples_on_many_rows_stay_within_the_budget() -> None:
    predictor = MCDropoutPredictor(_mlp(hidden=50), memory_budget_bytes=8 * 2**20)
    block, chunk = predictor.plan(1000, 10_000, False)
    assert block * chunk * predictor.split.per_row_bytes <= 8 * 2**20
    result = predictor.predict(np.random.default_rng(0).normal(size=(1000, 8)), samples=10_000,
                               seed=1)
    assert result.samples == 10_000 and result.mean.shape == (1000, 1)


def test_welford_merge_is_stable_far_from_zero() -> None:
    data = 1e8 + np.random.default_rng(0).normal(size=(1000, 3))
    moments = RunningMoments()
    for chunk in np.array_split(data, 7):
        moments.merge(len(chunk), chunk.mean(0), ((chunk - chunk.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(moments.mean, data.mean(0), rtol=1e-14)
    np.testing.assert_allclose(moments.variance(), data.var(0, ddof=1), rtol=1e-6)
    naive = (np.sum(data**2, 0) - 1000 * data.mean(0) ** 2) / 999  # the cancelling formula
    assert np.max(np.abs(naive - data.var(0, ddof=1))) > 1e-3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"x": np.ones((2, 7))}, r"shape \(rows, 8\), got \(2, 7\)"),
    ({"x": np.ones((0, 8))}, "at least one row"),
    ({"x": np.array([["a"] * 8])}, "numeric"),
    ({"x": np.full((2, 8), np.nan)}, "NaN or Inf"),
    ({"samples": 0}, r"samples must be an integer in 1..10000 \(unset for the default, 100\), got 0"),
    ({"samples": 10_001}, "got 10001"),
    ({"seed": -1}, "seed must be"),
    ({"seed": 2**64}, "seed must be"),
    ({"tolerance": -1.0}, "tolerance"),
    ({"interval_levels": [1.0]}, "strictly between 0 and 1"),
    ({"interval_levels": [0.5] * 17}, "at most 16"),
])
def test_bad_arguments_say_what_is_allowed(regressor, kwargs, message) -> None:
    call = {"x": np.ones((2, 8)), "samples": 10, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        regressor.predict(call.pop("x"), **call)


def test_raw_samples_are_bounded(rows) -> None:
    predictor = MCDropoutPredictor(_mlp(), max_raw_sample_values=1000)
    with pytest.raises(ResourceLimitError, match="exceeds the limit of 1000"):
        predictor.predict(rows, samples=500, interval_levels=[0.9])
    assert predictor.predict(rows, samples=500).samples == 500  # no raw samples: no limit


def test_should_stop_abandons_the_work(regressor, rows) -> None:
    with pytest.raises(CancelledError):
        regressor.predict(rows, samples=100, should_stop=lambda: True)


def test_every_mask_element_is_random_across_seeds() -> None:
    """No (pass, unit) coordinate may be fixed: e.g. pass 0 of unit 0 dropped for every seed."""
    import tensorflow as tf

    from mcdropout.engine import rng

    seeds, passes = range(400), tf.constant(np.arange(4), tf.uint32)

    def keeps(seed: int) -> np.ndarray:
        key = rng.stream_key(tf.constant(rng.seed_words(seed), tf.uint32), 0)
        return rng.row_keep(tf.fill([4], key), passes, 8, 0.5, tf.constant(1.0)).numpy() > 0

    kept = np.stack([keeps(s) for s in seeds])
    fraction = kept.mean(axis=0)  # (passes, units), each should be 0.5
    assert np.all(np.abs(fraction - 0.5) < 5 * np.sqrt(0.25 / len(seeds)))
