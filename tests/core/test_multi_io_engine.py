"""The engine on models with several named inputs, several heads and variable dimensions.

Statistical claims are checked against an independent loop of ``model(x, training=True)`` passes
(dropout on, nothing else in these models differs in training mode) within standard-error bounds;
reproducibility and merging claims are checked exactly (or within this CPU's rounding, see
mcdropout.engine.determinism).
"""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np
import pytest
from test_engine_batching import assert_same

from mcdropout import (
    HeadInfo,
    InputInfo,
    InvalidArgumentError,
    MCDropoutPredictor,
    ModelInfo,
    MultiHeadPrediction,
    NoStochasticLayersError,
    Prediction,
    ResourceLimitError,
)
from mcdropout.engine.validate import validate_model

REFERENCE_PASSES = 2000
SAMPLES = 1500


def _two_inputs() -> keras.Model:
    keras.utils.set_random_seed(11)
    feats = keras.Input((4,), name="feats")
    ids = keras.Input((6,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(20, 3)(ids))
    hidden = keras.layers.Concatenate()([keras.layers.Dense(16, activation="relu")(feats), embedded])
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(16, activation="relu")(hidden))
    return keras.Model([feats, ids], keras.layers.Dense(1, name="y")(hidden))


def _two_heads() -> keras.Model:
    keras.utils.set_random_seed(12)
    x = keras.Input((5,), name="x")
    hidden = keras.layers.Dropout(0.25)(keras.layers.Dense(16, activation="relu")(x))
    hidden = keras.layers.Dense(16, activation="tanh")(hidden)
    price = keras.layers.Dense(1, name="price")(keras.layers.Dropout(0.2)(hidden))
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(hidden)
    return keras.Model(x, [price, kind])


def _scaled_heads() -> keras.Model:
    """Two heads that are one Dense output, the second doubled: raw samples of the same passes
    are then exactly proportional."""
    keras.utils.set_random_seed(13)
    x = keras.Input((5,))
    base = keras.layers.Dense(2, name="base")(keras.layers.Dropout(0.3)(
        keras.layers.Dense(8, activation="relu")(x)))
    return keras.Model(x, [base, keras.layers.Rescaling(2.0, name="double")(base)])


def _lstm() -> keras.Model:
    keras.utils.set_random_seed(14)
    return keras.Sequential([keras.Input((None, 3)),
                             keras.layers.LSTM(8, dropout=0.2, recurrent_dropout=0.2),
                             keras.layers.Dense(1)])


@keras.saving.register_keras_serializable(package="tests_multi_io")
class TwoInputRegressor(keras.Model):
    """A subclassed model taking {"a": (rows, 3), "b": (rows, 2)}."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(8, activation="relu")
        self.drop = keras.layers.Dropout(0.3)
        self.out = keras.layers.Dense(1)

    def call(self, inputs: dict[str, Any], training: Any = None) -> Any:
        joined = keras.ops.concatenate([inputs["a"], inputs["b"]], axis=-1)
        return self.out(self.drop(self.dense(joined), training=training))


def _subclassed() -> keras.Model:
    keras.utils.set_random_seed(15)
    model = TwoInputRegressor()
    model({"a": np.zeros((1, 3), "float32"), "b": np.zeros((1, 2), "float32")})
    return model


def _rows(seed: int = 0, rows: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"feats": rng.normal(size=(rows, 4)).astype("float32"),
            "ids": rng.integers(0, 20, size=(rows, 6)).astype("int32")}


def _x(rows: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 5)).astype("float32")


@pytest.fixture(scope="module")
def two_inputs() -> tuple[keras.Model, MCDropoutPredictor]:
    model = _two_inputs()
    return model, MCDropoutPredictor(model)


@pytest.fixture(scope="module")
def two_heads() -> tuple[keras.Model, MCDropoutPredictor]:
    model = _two_heads()
    return model, MCDropoutPredictor(model)


def _reference(model: Any, x: Any) -> list[np.ndarray]:
    """Per output: (passes, rows, width) of independent passes of Keras itself with dropout on.

    One call over the rows repeated REFERENCE_PASSES times: Keras draws every row of a training
    batch its own masks, so each copy of a row is an independent pass.
    """
    tiled = keras.tree.map_structure(lambda a: np.tile(a, (REFERENCE_PASSES,) + (1,) * (a.ndim - 1)),
                                     x)
    outs = keras.tree.flatten(model(tiled, training=True))
    return [np.asarray(o).reshape(REFERENCE_PASSES, -1, int(np.prod(o.shape[1:]))) for o in outs]


def _agrees(prediction: Prediction, passes: np.ndarray) -> None:
    """Mean within 5 standard errors of the reference's; std within 5 of its relative error."""
    mean, std = passes.mean(axis=0), passes.std(axis=0, ddof=1)
    se = np.sqrt(std**2 / len(passes) + prediction.std**2 / prediction.samples) + 1e-9
    assert np.all(np.abs(prediction.mean - mean) < 5 * se)
    relative = 5 * np.sqrt(1 / (2 * len(passes)) + 1 / (2 * prediction.samples))
    assert np.all(np.abs(prediction.std - std) <= relative * std + 1e-6)


# -- what the engine sees in a model ---------------------------------------------------------------
def test_inputs_are_named_with_their_dtypes_and_id_ranges(two_inputs) -> None:
    _, predictor = two_inputs
    assert [(s.name, s.shape, s.dtype, s.id_limit) for s in predictor.inputs] == \
        [("feats", (4,), "float32", None), ("ids", (6,), "int32", 20)]
    assert predictor.split.prefix_layers > 0  # the Embedding and trunk run once per row


def test_heads_are_named_with_their_own_tasks(two_heads) -> None:
    _, predictor = two_heads
    assert [(h.name, h.task, h.width) for h in predictor.heads] == \
        [("price", "regression", 1), ("kind", "classification", 3)]
    assert predictor.output_dim == 4 and predictor.task == "regression"


# -- statistics against an independent loop --------------------------------------------------------
def test_two_inputs_agree_with_an_independent_loop(two_inputs) -> None:
    model, predictor = two_inputs
    x = _rows()
    prediction = predictor.predict(x, samples=SAMPLES, seed=1)
    assert isinstance(prediction, Prediction)
    [passes] = _reference(model, [x["feats"], x["ids"]])
    _agrees(prediction, passes)


def test_every_head_agrees_with_an_independent_loop(two_heads) -> None:
    model, predictor = two_heads
    x = _x()
    prediction = predictor.predict(x, samples=SAMPLES, seed=2)
    assert isinstance(prediction, MultiHeadPrediction) and list(prediction.heads) == ["price", "kind"]
    price, kind = _reference(model, x)
    _agrees(prediction["price"], price)
    _agrees(prediction["kind"], kind)
    assert prediction["kind"].predicted_class is not None and prediction["price"].predicted_class is None
    assert prediction.rows == 4 and prediction.samples == SAMPLES


def test_a_subclassed_model_with_two_inputs(tmp_path) -> None:
    model = _subclassed()
    inputs = (InputInfo("a", (3,)), InputInfo("b", (2,)))
    predictor = MCDropoutPredictor(model, inputs=inputs)
    rng = np.random.default_rng(3)
    x = {"a": rng.normal(size=(3, 3)).astype("float32"), "b": rng.normal(size=(3, 2)).astype("float32")}
    prediction = predictor.predict(x, samples=SAMPLES, seed=4)
    [passes] = _reference(model, x)
    _agrees(prediction, passes)
    with pytest.raises(InvalidArgumentError, match=r"missing input\(s\) \['b'\]: the model takes 'a'"):
        predictor.predict({"a": x["a"]}, samples=2)


def test_a_loaded_subclassed_model_takes_its_inputs_from_its_build(tmp_path) -> None:
    path = tmp_path / "sub.keras"
    _subclassed().save(path)
    predictor = MCDropoutPredictor(keras.saving.load_model(path))
    assert [(s.name, s.shape, s.dtype) for s in predictor.inputs] == \
        [("a", (3,), "float32"), ("b", (2,), "float32")]


def test_padding_masked_by_the_embedding_is_skipped() -> None:
    """Embedding(mask_zero=True) in the prefix, LSTM in the suffix: the mask crosses over."""
    keras.utils.set_random_seed(18)
    model = keras.Sequential([keras.Input((8,), dtype="int32"),
                              keras.layers.Embedding(20, 6, mask_zero=True),
                              keras.layers.LSTM(10, dropout=0.2, recurrent_dropout=0.2),
                              keras.layers.Dense(1)])
    tokens = np.random.default_rng(5).integers(1, 20, size=(3, 8)).astype(np.int32)
    tokens[np.arange(8) >= np.array([[2], [5], [7]])] = 0
    predictor = MCDropoutPredictor(model)
    assert predictor.split.masks == 1
    [passes] = _reference(model, tokens)
    _agrees(predictor.predict(tokens, samples=SAMPLES, seed=3), passes)


def test_a_variable_length_lstm_agrees_at_every_length() -> None:
    model = _lstm()
    predictor = MCDropoutPredictor(model)
    assert predictor.input_shape == (None, 3)
    for steps in (5, 21):
        x = np.random.default_rng(steps).normal(size=(2, steps, 3)).astype("float32")
        [passes] = _reference(model, x)
        _agrees(predictor.predict(x, samples=SAMPLES, seed=steps), passes)
    assert predictor.trace_count == 1  # one whole-request graph serves every length


# -- reproducibility, joint passes, merging --------------------------------------------------------
def test_the_same_seed_gives_the_same_answers(two_heads, two_inputs) -> None:
    for (_, predictor), x in ((two_heads, _x()), (two_inputs, _rows())):
        a = predictor.predict(x, samples=40, seed=9, return_samples=True, interval_levels=(0.9,))
        b = predictor.predict(x, samples=40, seed=9, return_samples=True, interval_levels=(0.9,))
        for head_a, head_b in zip(_heads(a), _heads(b), strict=True):
            np.testing.assert_array_equal(head_a.raw_samples, head_b.raw_samples)
            np.testing.assert_array_equal(head_a.mean, head_b.mean)
            np.testing.assert_array_equal(head_a.intervals[0].lower, head_b.intervals[0].lower)


def test_heads_come_from_the_same_passes() -> None:
    predictor = MCDropoutPredictor(_scaled_heads())
    assert [h.name for h in predictor.heads] == ["base", "double"]
    prediction = predictor.predict(_x(), samples=64, seed=5, return_samples=True)
    base, double = prediction["base"].raw_samples, prediction["double"].raw_samples
    np.testing.assert_array_equal(double, 2 * base)
    assert base.std(axis=0).min() > 0  # the passes do differ


def test_merged_requests_get_their_lone_answers(two_heads, two_inputs) -> None:
    for (_, predictor), parts in ((two_heads, [_x(2, 1), _x(1, 2), _x(5, 3)]),
                                  (two_inputs, [_rows(1, 2), _rows(2, 1), _rows(3, 3)])):
        merged = predictor.predict_many(parts, samples=30, seeds=[1, 2, 3])
        for seed, part, answer in zip([1, 2, 3], parts, merged, strict=True):
            alone = predictor.predict(part, samples=30, seed=seed)
            for m, a in zip(_heads(answer), _heads(alone), strict=True):
                assert_same(m, a)


def test_requests_of_different_lengths_run_apart_and_each_as_alone() -> None:
    predictor = MCDropoutPredictor(_lstm())
    short, long_ = (np.random.default_rng(n).normal(size=(2, n, 3)).astype("float32")
                    for n in (4, 9))
    requests = [predictor.resolve(short, 20, 1), predictor.resolve(long_, 20, 2)]
    assert requests[0].shape_key == ((4, 3),) and requests[1].shape_key == ((9, 3),)
    merged = predictor.predict_many([short, long_], samples=20, seeds=[1, 2])
    assert_same(merged[0], predictor.predict(short, 20, 1))
    assert_same(merged[1], predictor.predict(long_, 20, 2))


def test_the_memory_plan_scales_with_the_actual_length() -> None:
    predictor = MCDropoutPredictor(_lstm(), memory_budget_bytes=2**20)
    short = predictor.plan(4000, 500, shape_key=((16, 3),))
    long_ = predictor.plan(4000, 500, shape_key=((160, 3),))
    assert short[0] * short[1] >= 8 * long_[0] * long_[1]


def test_variable_length_ids_through_an_embedding() -> None:
    keras.utils.set_random_seed(16)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Conv1D(4, 3)(keras.layers.Embedding(50, 4)(tokens))
    h = keras.layers.SpatialDropout1D(0.3)(keras.layers.MaxPooling1D(2)(h))
    model = keras.Model(tokens, keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(h)))
    predictor = MCDropoutPredictor(model)
    assert predictor.inputs[0].id_limit == 50 and predictor.split.frontier[0].shape[1] is None
    for length in (7, 30):
        x = np.random.default_rng(length).integers(0, 50, size=(3, length))
        assert predictor.predict({"tokens": x}, samples=10, seed=0).mean.shape == (3, 2)
    with pytest.raises(InvalidArgumentError,
                       match=r"input 'tokens' has length 0 in variable dimension 1"):
        predictor.predict(np.zeros((2, 0), "int32"), samples=10)
    # Shorter than the convolution's kernel: refused, and the same model still answers.
    # Too short for the kernel (a TensorFlow error) or leaving nothing to pool (NaN): refused,
    # and a request of a good length in the same call is still answered.
    for length, why in ((1, r"cannot run on rows of shape \(\(1,\),\): Computed output size "
                           "would be negative"), (2, r"gives NaN or Inf for rows of shape")):
        short, fine = np.zeros((1, length), "int32"), np.zeros((1, 7), "int32")
        answers = predictor.run([predictor.resolve(short, 10, 0),
                                 predictor.resolve(fine, 10, 0)])
        assert isinstance(answers[0], InvalidArgumentError)
        assert re.search(why, str(answers[0])), str(answers[0])
        assert answers[1].mean.shape == (1, 2)


# -- adaptive sampling and limits over every head --------------------------------------------------
def test_adaptive_sampling_stops_when_every_head_meets_the_tolerance(two_heads) -> None:
    _, predictor = two_heads
    prediction = predictor.predict(_x(), samples=5000, seed=6, tolerance=0.01)
    assert prediction.samples < 5000
    for head in _heads(prediction):
        assert float(np.max(head.standard_error)) <= 0.01


def test_the_raw_sample_limit_counts_every_head() -> None:
    predictor = MCDropoutPredictor(_two_heads(), max_raw_sample_values=1000)
    predictor.predict(_x(10), samples=25, return_samples=True)  # 25 x 10 x 4 = 1000
    with pytest.raises(ResourceLimitError, match=r"26 x 10 x 4 exceeds the limit of 1000"):
        predictor.predict(_x(10), samples=26, return_samples=True)


def test_a_chunked_request_agrees_with_one_call() -> None:
    whole = MCDropoutPredictor(_two_heads())
    chunked = MCDropoutPredictor(_two_heads(), memory_budget_bytes=2**20)
    x = _x(2000)
    assert chunked.plan(2000, 200)[1] < 200
    a, b = whole.predict(x, samples=200, seed=7), chunked.predict(x, samples=200, seed=7)
    for head_a, head_b in zip(_heads(a), _heads(b), strict=True):
        assert_same(head_a, head_b, rtol=1e-5)  # chunks fold float64 moments in another order


# -- metadata ---------------------------------------------------------------------------------------
def test_heads_and_inputs_from_metadata() -> None:
    info = ModelInfo(name="shop", task="regression", input_shape=(),
                     inputs=(InputInfo("x", (5,), feature_mean=(1.0,) * 5),),
                     heads=(HeadInfo("kind", "classification", ("a", "b", "c")),
                            HeadInfo("price", "regression", target_mean=(10.0,),
                                     target_std=(2.0,), tau=4.0)))
    predictor = MCDropoutPredictor.from_info(_two_heads(), info)
    assert [h.name for h in predictor.heads] == ["price", "kind"]  # the model's order
    price, kind = predictor.heads
    assert kind.labels == ("a", "b", "c") and price.tau == pytest.approx(1.0) and price.has_tau
    prediction = predictor.predict(_x(), samples=30, seed=1)
    assert prediction["price"].predictive_std is not None
    np.testing.assert_allclose(prediction["price"].std,
                               2.0 * MCDropoutPredictor(_two_heads()).predict(
                                   _x() - 1.0, samples=30, seed=1)["price"].std, rtol=1e-5)


def test_one_head_keywords_for_a_two_head_model_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"one-head model; this one has heads "
                                                   r"\['price', 'kind'\]: describe each"):
        MCDropoutPredictor(_two_heads(), tau=2.0)
    with pytest.raises(InvalidArgumentError, match=r"the model has 2 head\(s\) \['price', 'kind'\]"):
        MCDropoutPredictor(_two_heads(), heads=[HeadInfo("price", "regression")])


# -- refusals name the input and what is allowed ---------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    (lambda x: {**x, "ids": x["ids"] + 20}, r"input 'ids' holds id 2\d in row 0; ids must be "
                                            r"integers in 0..19 \(the Embedding"),
    (lambda x: {**x, "ids": -x["ids"] - 1}, r"input 'ids' holds id -\d+ in row 0; .* 0..19"),
    (lambda x: {"feats": x["feats"]}, r"missing input\(s\) \['ids'\]: the model takes 'feats' "
                                      r"\(rows, 4\) float32, 'ids' \(rows, 6\) int32"),
    (lambda x: {**x, "extra": x["ids"]}, r"unknown input\(s\) \['extra'\]: the model takes"),
    (lambda x: {**x, "feats": x["feats"][:2]}, r"every input must have the same number of rows, "
                                               r"got 'feats' 2, 'ids' 4"),
    (lambda x: {**x, "ids": x["ids"].astype("float32")}, r"input 'ids' takes integer ids "
                                                         r"\(int32\), got dtype float32"),
    (lambda x: {**x, "feats": x["feats"][:, :3]}, r"input 'feats' must have shape \(rows, 4\), "
                                                  r"got \(4, 3\)"),
    (lambda x: x["feats"], r"this model takes 2 named inputs, 'feats' .*; send a mapping"),
])
def test_bad_inputs_are_refused_by_name(two_inputs, change, message) -> None:
    _, predictor = two_inputs
    with pytest.raises(InvalidArgumentError, match=message):
        predictor.predict(change(_rows()), samples=2, seed=0)


def test_a_bad_request_in_a_merged_batch_fails_alone(two_inputs) -> None:
    _, predictor = two_inputs
    good, bad = _rows(1, 2), {**_rows(2, 2), "ids": np.full((2, 6), 99, np.int32)}
    answers = predictor.run([predictor.resolve(good, 10, 1), predictor.resolve(bad, 10, 2)])
    assert isinstance(answers[1], InvalidArgumentError) and "0..19" in str(answers[1])
    assert_same(answers[0], predictor.predict(good, 10, 1))


# -- validation --------------------------------------------------------------------------------------
def test_validation_accepts_what_can_be_served_and_says_what_cannot() -> None:
    assert [h.name for h in validate_model(_two_heads()).heads] == ["price", "kind"]
    with pytest.raises(NoStochasticLayersError, match="no dropout layer"):
        validate_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))
    keras.utils.set_random_seed(17)
    per_step = keras.Sequential([keras.Input((None, 3)),
                                 keras.layers.LSTM(4, dropout=0.2, return_sequences=True)])
    with pytest.raises(InvalidArgumentError, match=r"row shape \(None, 4\), whose size changes "
                                                   r"with the inputs' variable dimensions"):
        validate_model(per_step)


def _heads(prediction: Any) -> list[Prediction]:
    if isinstance(prediction, MultiHeadPrediction):
        return list(prediction.heads.values())
    return [prediction]
