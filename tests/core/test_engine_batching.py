"""Merged batches (predict_many): each request's answer is the one it gets alone, bit for bit.

Also the fused mask kernel: the same bits as the plain TensorFlow hash for every row count.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcdropout import CancelledError, InvalidArgumentError
from mcdropout.engine import MCDropoutPredictor, rng
from mcdropout.engine.determinism import rows_are_batch_invariant

FIELDS = ("mean", "std", "standard_error", "predictive_std", "predicted_class",
          "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio")


def _mlp(outputs: int = 1, activation: str | None = None, rate: float = 0.3) -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(24, activation="relu"),
        keras.layers.Dropout(rate),
        keras.layers.Dense(24, activation="relu"),
        keras.layers.Dropout(rate),
        keras.layers.Dense(outputs, activation=activation),
    ])


def _inputs(sizes: list[int], features: int = 5) -> list[np.ndarray]:
    rng_ = np.random.default_rng(4)
    return [rng_.normal(size=(n, features)).astype("float32") for n in sizes]


def assert_same(merged, alone, rtol: float = 0.0) -> None:
    """Bit for bit where this CPU's matrix kernels allow it (see mcdropout.engine.determinism)."""
    assert (merged.seed, merged.samples, merged.task) == (alone.seed, alone.samples, alone.task)
    if not rows_are_batch_invariant():
        rtol = max(rtol, 1e-5)
    for name in FIELDS:
        a, b = getattr(merged, name), getattr(alone, name)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.fixture(scope="module")
def regressor() -> MCDropoutPredictor:
    return MCDropoutPredictor(_mlp(), tau=2.0, target_mean=[3.0], target_std=[0.5])


@pytest.fixture(scope="module")
def classifier() -> MCDropoutPredictor:
    return MCDropoutPredictor(_mlp(4, "softmax", rate=0.5))


@pytest.mark.parametrize("samples", [1, 2, 37, 100])
def test_each_answer_is_identical_to_the_request_alone(regressor, classifier, samples) -> None:
    xs = _inputs([1, 3, 1, 2, 1, 6])
    seeds = [0, 1, 2**64 - 1, 77, 2**32, 5]
    for predictor in (regressor, classifier):
        merged = predictor.predict_many(xs, samples=samples, seeds=seeds)
        for x, seed, answer in zip(xs, seeds, merged, strict=True):
            assert_same(answer, predictor.predict(x, samples=samples, seed=seed))


def test_rows_take_their_own_requests_masks(classifier) -> None:
    """The same row in two requests with different seeds gets different passes."""
    (x,) = _inputs([1])
    same_seed = classifier.predict_many([x, x], samples=50, seeds=[3, 3])
    other_seed = classifier.predict_many([x, x], samples=50, seeds=[3, 4])
    np.testing.assert_array_equal(same_seed[0].mean, same_seed[1].mean)
    np.testing.assert_array_equal(other_seed[0].mean, same_seed[0].mean)
    assert not np.array_equal(other_seed[1].mean, other_seed[0].mean)


def test_fresh_seeds_are_returned_and_replay_alone(regressor) -> None:
    xs = _inputs([2, 1])
    merged = regressor.predict_many(xs, samples=20)
    assert merged[0].seed != merged[1].seed
    for x, answer in zip(xs, merged, strict=True):
        assert_same(answer, regressor.predict(x, samples=20, seed=answer.seed))


def test_chunked_requests_keep_their_chunking() -> None:
    """Under a small memory budget a request's passes run in chunks, merged or not."""
    predictor = MCDropoutPredictor(_mlp(), memory_budget_bytes=2**20)
    assert predictor.plan(1, 3000, False)[1] < 3000  # a one-row request really is chunked
    xs = _inputs([1, 40, 3, 1])
    merged = predictor.predict_many(xs, samples=3000, seeds=[1, 2, 3, 4])
    for x, seed, answer in zip(xs, [1, 2, 3, 4], merged, strict=True):
        assert_same(answer, predictor.predict(x, samples=3000, seed=seed))


def test_a_merged_batch_split_in_row_blocks_keeps_single_call_answers() -> None:
    """Alone each request is one graph call; merged, the rows no longer fit in one block."""
    predictor = MCDropoutPredictor(_mlp(), memory_budget_bytes=2**20)
    samples = 1000
    assert predictor.plan(1, samples, False) == (1, samples)  # alone: one block, one chunk
    per_block = predictor.memory_budget_bytes // (samples * predictor.row_bytes)
    xs = _inputs([1] * (per_block + 1))  # merged: more rows than one block holds
    merged = predictor.predict_many(xs, samples=samples, seeds=list(range(len(xs))))
    for seed, (x, answer) in enumerate(zip(xs, merged, strict=True)):
        assert_same(answer, predictor.predict(x, samples=samples, seed=seed))


def _family(layer: keras.layers.Layer, shape: tuple[int, ...]) -> keras.Model:
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input(shape), keras.layers.Dense(6), layer,
                             keras.layers.Flatten(), keras.layers.Dense(2)])


# Gaussian dropout draws normals through log and cos, and an LSTM's gates use sigmoid:
# TensorFlow's vectorised kernels for those round a value differently depending on where it
# falls in a vector, so those answers agree to float32 rounding rather than bit for bit.
FAMILIES = {
    "alpha dropout": (lambda: _family(keras.layers.AlphaDropout(0.2), (4,)), (4,), 0.0),
    "spatial dropout": (lambda: _family(keras.layers.SpatialDropout1D(0.4), (3, 4)), (3, 4), 0.0),
    "noise_shape": (lambda: _family(keras.layers.Dropout(0.5, noise_shape=(None, 1, 6)), (3, 4)),
                    (3, 4), 0.0),
    "gaussian dropout": (lambda: _family(keras.layers.GaussianDropout(0.3), (4,)), (4,), 1e-5),
    "lstm": (lambda: keras.Sequential([keras.Input((6, 3)),
                                       keras.layers.LSTM(5, dropout=0.2, recurrent_dropout=0.3),
                                       keras.layers.Dense(1)]), (6, 3), 1e-5),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_dropout_family_keeps_its_answers(family) -> None:
    build, shape, rtol = FAMILIES[family]
    predictor = MCDropoutPredictor(build(), task="regression")
    rng_ = np.random.default_rng(2)
    xs = [rng_.normal(size=(n, *shape)).astype("float32") for n in (1, 2, 1)]
    merged = predictor.predict_many(xs, samples=30, seeds=[8, 9, 10])
    for x, seed, answer in zip(xs, [8, 9, 10], merged, strict=True):
        assert_same(answer, predictor.predict(x, samples=30, seed=seed), rtol)


def test_merged_batches_do_not_retrace(regressor) -> None:
    regressor.warmup(batch_rows=8)
    before = regressor.trace_count
    for sizes, samples in [([1, 1], 5), ([3, 1, 2, 7], 60), ([1] * 9, 100)]:
        regressor.predict_many(_inputs(sizes), samples=samples)
    assert regressor.trace_count == before


@pytest.mark.parametrize(("call", "message"), [
    ({"inputs": []}, "at least one input"),
    ({"seeds": [1]}, "one seed per input: got 1 seeds for 2 inputs"),
    ({"inputs": [np.ones((1, 5)), np.ones((1, 4))]}, r"inputs\[1\]: .*got \(1, 4\)"),
    ({"inputs": [np.ones((1, 5)), np.full((1, 5), np.nan)]}, r"inputs\[1\]: .*NaN"),
    ({"samples": 0}, "samples must be an integer"),
    ({"seeds": [1, -1]}, "seed must be"),
])
def test_bad_batches_say_what_is_wrong(regressor, call, message) -> None:
    args = {"inputs": [np.ones((1, 5)), np.ones((2, 5))], "samples": 10, "seeds": None, **call}
    with pytest.raises(InvalidArgumentError, match=message):
        regressor.predict_many(args.pop("inputs"), **args)


def test_should_stop_abandons_the_batch(regressor) -> None:
    with pytest.raises(CancelledError):
        regressor.predict_many(_inputs([1, 2]), samples=50, should_stop=lambda: True)


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("rate", [0.05, 0.5, 0.999])
def test_fused_mask_kernel_gives_the_plain_hash_bits(rows, rate) -> None:
    keys = tf.constant(np.random.default_rng(rows).integers(0, 2**32, rows), tf.uint32)
    passes = tf.constant(np.arange(rows) % 7, tf.uint32)
    scale = tf.constant(1 / (1 - rate), tf.float32)
    plain = rng.row_keep(keys, passes, 33, rate, scale).numpy()
    fused = rng.row_keep(keys, passes, 33, rate, scale, fused=True).numpy()
    np.testing.assert_array_equal(plain, fused)
    kept = (plain > 0).mean()
    assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / plain.size) + 1e-9


@pytest.mark.parametrize("first, count", [(0, 1), (0, 64), (5, 65), (100, 1000)])
def test_one_seed_mask_kernel_gives_the_words_of_its_stream_key(first, count) -> None:
    seed, stream, rate = tf.constant(rng.seed_words(0x1234_5678_9ABC), tf.uint32), 48, 0.3
    scale = tf.constant(1 / (1 - rate), tf.float32)
    passes = tf.constant(np.arange(first, first + count), tf.uint32)
    keys = tf.fill([count], rng.stream_key(seed, stream))
    plain = rng.row_keep(keys, passes, 17, rate, scale).numpy()
    padded = tf.constant(np.arange(first, first + int(rng.bucket(tf.constant(count)))), tf.uint32)
    one_seed = rng.pass_keep(seed, stream, padded, tf.constant(count), 17, rate, scale).numpy()
    np.testing.assert_array_equal(plain, one_seed)
