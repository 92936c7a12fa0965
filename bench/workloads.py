"""The benchmark workloads: four models with dropout, their request shapes and FLOP counts.

Weights are random (Keras initialisers, fixed seed): speed does not depend on training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from bench.common import model_flops
from mcdropout.engine.layers import contains_stochastic


def mlp_a() -> keras.Sequential:
    """(a) MLP 64-512-512-10, Dropout(0.5) after each hidden layer, softmax output."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ], name="mlp_a")


def uci_b() -> keras.Sequential:
    """(b) Gal's UCI regression net 8-50-50-1 with dropout as in the published code.

    Gal & Ghahramani's DropoutUncertaintyExps ``net.py`` puts Dropout on the inputs, before every
    further hidden layer and before the output: three Dropout layers for two hidden layers.
    """
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dropout(0.05),
        keras.layers.Dense(50, activation="relu"),
        keras.layers.Dropout(0.05),
        keras.layers.Dense(50, activation="relu"),
        keras.layers.Dropout(0.05),
        keras.layers.Dense(1),
    ], name="uci_b")


def convnet_c() -> keras.Sequential:
    """(c) The keras.io "Simple MNIST convnet": two conv/pool stages, Dropout(0.5) in the head only."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ], name="convnet_c")


def lstm_d() -> keras.Sequential:
    """(d) LSTM(64) over 50 steps of 32 features, dropout 0.25 and recurrent_dropout 0.25."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((50, 32)),
        keras.layers.LSTM(64, dropout=0.25, recurrent_dropout=0.25),
        keras.layers.Dense(1),
    ], name="lstm_d")


@dataclass(frozen=True)
class Workload:
    """One benchmark case: a model, a request of ``batch`` rows and ``samples`` passes.

    Attributes:
        key: Short label, "a".."d".
        title: What the model is, for the table.
        build: Makes the model.
        batch: Rows per request.
        samples: Passes T per request.
        naive_samples: Passes the naive loop is actually timed over; its time is scaled by
            ``samples / naive_samples`` (its passes are independent calls, so time is linear in T).
    """

    key: str
    title: str
    build: Callable[[], keras.Sequential]
    batch: int
    samples: int
    naive_samples: int

    def inputs(self, model: Any) -> np.ndarray:
        """A fixed request batch of standard-normal float32 rows."""
        shape = (self.batch, *tuple(model.inputs[0].shape[1:]))
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@dataclass(frozen=True)
class Flops:
    """Floating-point operations of one request (2 per multiply-add).

    Attributes:
        prefix_per_row: FLOPs of the layers before the first stochastic layer, for one row.
        suffix_per_row: FLOPs of the first stochastic layer and everything after, for one row.
    """

    prefix_per_row: int
    suffix_per_row: int

    def cached(self, batch: int, samples: int) -> int:
        """With prefix caching: the prefix once per row, the suffix once per (pass, row)."""
        return batch * self.prefix_per_row + samples * batch * self.suffix_per_row

    def whole(self, batch: int, samples: int) -> int:
        """The whole model once per (pass, row): the naive loop and ``prefix_caching=False``."""
        return samples * batch * (self.prefix_per_row + self.suffix_per_row)


def count_flops(model: keras.Sequential) -> Flops:
    """Split a Sequential model's FLOPs at its first stochastic layer, as the engine does."""
    cut = next(i for i, layer in enumerate(model.layers) if contains_stochastic(layer))
    return Flops(*model_flops(model, cut))


WORKLOADS: tuple[Workload, ...] = (
    Workload("a", "MLP 64-512-512-10", mlp_a, batch=32, samples=100, naive_samples=100),
    # 10,000 eager calls take minutes; 500 of them time the loop well enough.
    Workload("b", "UCI net 8-50-50-1", uci_b, batch=100, samples=10_000, naive_samples=500),
    Workload("c", "MNIST convnet", convnet_c, batch=32, samples=100, naive_samples=100),
    Workload("d", "LSTM(64), 50 steps", lstm_d, batch=16, samples=50, naive_samples=50),
)
