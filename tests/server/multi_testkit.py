"""A two-input, two-head model served by a real server of its own, for the multi-input tests.

"shop" takes float ``features`` (3 per row) and integer ``ids`` (a variable-length sequence of
ids in 0..9, through an Embedding) and has two heads from one shared dropout trunk: ``price``, a
regression head with a known tau and target scaling, and ``kind``, a 3-class softmax. Random
weights are enough to test serving. tests/server and tests/oip both use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from mcdropout_server.app import ServerThread
from mcdropout_server.registry import ModelRegistry
from server_testkit import LIMITS, MAX_SAMPLES, load_options, settings

from mcdropout import HeadInfo, InputInfo, ModelInfo, ModelStore
from mcdropout.engine import MCDropoutPredictor

FEATURES = 3
VOCABULARY = 10
KINDS = ("book", "game", "toy")
SHOP_INFO = ModelInfo(
    name="shop", task="regression", input_shape=(FEATURES,), default_samples=30,
    max_samples=MAX_SAMPLES, description="test two-input, two-head model",
    inputs=(InputInfo("features", (FEATURES,)), InputInfo("ids", (None,), "int32")),
    heads=(HeadInfo("price", "regression", labels=("price",), target_mean=(50.0,),
                    target_std=(10.0,), tau=4.0),
           HeadInfo("kind", "classification", labels=KINDS)))


def shop_model() -> keras.Model:
    keras.utils.set_random_seed(11)
    features = keras.Input((FEATURES,), name="features")
    ids = keras.Input((None,), dtype="int32", name="ids")
    embedded = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(VOCABULARY, 4)(ids))
    trunk = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([features, embedded]))
    trunk = keras.layers.Dropout(0.3)(trunk)
    price = keras.layers.Dense(1, name="price")(trunk)
    kind = keras.layers.Dense(len(KINDS), activation="softmax", name="kind")(trunk)
    return keras.Model([features, ids], [price, kind], name="shop")


def shop_inputs(rows: int, length: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(rows, FEATURES)).astype(np.float32),
            "ids": rng.integers(0, VOCABULARY, size=(rows, length)).astype(np.int32)}


@dataclass(frozen=True)
class ShopServer:
    """The running server: its address and the store it serves."""

    target: str
    store_root: Path

    def predictor(self) -> MCDropoutPredictor:
        """An in-process predictor configured as the server configures "shop"."""
        store = ModelStore(self.store_root)
        return MCDropoutPredictor.from_info(store.load_model("shop", 1),
                                            store.read_info("shop", 1), **load_options())


@contextmanager
def shop_server(root: Path) -> Iterator[ShopServer]:
    """Save "shop" under ``root`` and serve it on a free loopback port until the block ends."""
    ModelStore(root).save(shop_model(), SHOP_INFO)
    registry = ModelRegistry.load(ModelStore(root), limits=LIMITS, **load_options())
    thread = ServerThread(settings(metrics_port=0), registry)  # no metrics: no port to race for
    app = thread.start()
    try:
        yield ShopServer(f"127.0.0.1:{app.port}", root)
    finally:
        thread.stop(grace=1.0)
