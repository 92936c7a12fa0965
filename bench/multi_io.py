"""Workload (e) of bench.core: a model with two named inputs and two heads.

What it measures is the cost of a Monte Carlo pass over a deterministic one when every head
comes from the same passes: the engine's median time for T passes of a batch (both heads'
statistics, joint masks) over one compiled deterministic call of the same rows repeated T times
(``model(x, training=False)``, both heads), alternating in rounds. The engine runs the layers
before the first dropout (the Embedding, the concatenation and the first Dense) once per row, the
deterministic call T times; the engine with ``prefix_caching=False`` runs every layer T times too,
so its ratio is the cost of the masks and of the per-head statistics alone.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bench import common
from mcdropout.engine import MCDropoutPredictor

BATCH, SAMPLES = 32, 100
ROUNDS, PER_ROUND = 7, 5
TITLE = (f"(e) two inputs (64 features + 8 ids through an Embedding), two heads (regression + "
         f"softmax), batch {BATCH}, T={SAMPLES}")
TARGET = 1.25


def two_in_two_heads() -> keras.Model:
    """64 float features and 8 int32 ids (Embedding 1000x16), concatenated, 512-512 ReLU with
    Dropout(0.5) after each, then a regression head (1) and a softmax head (10)."""
    keras.utils.set_random_seed(0)
    feats = keras.Input((64,), name="features")
    ids = keras.Input((8,), dtype="int32", name="ids")
    h = keras.layers.Concatenate()([feats, keras.layers.Flatten()(
        keras.layers.Embedding(1000, 16)(ids))])
    for _ in range(2):
        h = keras.layers.Dropout(0.5)(keras.layers.Dense(512, activation="relu")(h))
    return keras.Model([feats, ids], [keras.layers.Dense(1, name="price")(h),
                                      keras.layers.Dense(10, activation="softmax",
                                                         name="kind")(h)], name="two_in_two_heads")


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"features": rng.standard_normal((BATCH, 64)).astype(np.float32),
            "ids": rng.integers(0, 1000, (BATCH, 8)).astype(np.int32)}


def measure() -> dict[str, Any]:
    """Median seconds per request of the engine and of the deterministic pass, and their ratio."""
    model = two_in_two_heads()
    x = inputs()
    folded = [tf.constant(np.tile(x[name], (SAMPLES, 1))) for name in ("features", "ids")]
    deterministic = tf.function(lambda a, b: model([a, b], training=False))
    engine, whole = MCDropoutPredictor(model), MCDropoutPredictor(model, prefix_caching=False)
    engine.warmup()
    whole.warmup()
    calls = {"deterministic forward pass (dropout off)":
             lambda: [t.numpy() for t in deterministic(*folded)],
             "engine (both heads, same passes)": lambda: engine.predict(x, samples=SAMPLES, seed=1),
             "engine, prefix_caching=False": lambda: whole.predict(x, samples=SAMPLES, seed=1)}
    for call in calls.values():
        for _ in range(3):
            call()
    timings = common.interleave(calls, rounds=ROUNDS, per_round=dict.fromkeys(calls, PER_ROUND))
    medians = {name: t.median for name, t in timings.items()}
    ratio = medians["engine (both heads, same passes)"] / \
        medians["deterministic forward pass (dropout off)"]
    whole_ratio = medians["engine, prefix_caching=False"] / \
        medians["deterministic forward pass (dropout off)"]
    return {"medians_s": medians, "ratio": ratio, "ratio_prefix_caching_false": whole_ratio}


def render(result: dict[str, Any]) -> tuple[str, str]:
    """The (e) table and its verdict line."""
    det = result["medians_s"]["deterministic forward pass (dropout off)"]
    body = [[TITLE, name, common.fmt(median * 1e3, 2), common.fmt(median / det, 2) + "x"]
            for name, median in result["medians_s"].items()]
    table = common.markdown_table(["workload", "method", "ms / request", "ratio"], body)
    ratio = result["ratio"]
    verdict = (f"- (e) MC pass / deterministic pass <= {TARGET}: {ratio:.2f} "
               f"({result['ratio_prefix_caching_false']:.2f} without prefix caching) - "
               f"{'met' if ratio <= TARGET else 'MISSED'}")
    return table, verdict
