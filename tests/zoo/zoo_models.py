"""The zoo: plain Keras 3 models of the kinds users bring, built and briefly trained at test time.

Every model is tiny and trained for one or two epochs on synthetic data with fixed seeds, so the
whole zoo builds in seconds. Training matters only so that weights and BatchNormalization moving
statistics are not the initial ones (a BN at its initial statistics is the identity, and would
hide a server that ran it in training mode). Each model comes with probe rows: the requests the
tests send, given by input name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import zoo_layers

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo, trained and saved.

    Attributes:
        name: The model's name in the store (also its file name).
        path: The saved ``.keras`` file.
        heads: Head name -> task, in the model's output order.
        probes: Requests to send, each a mapping input name -> rows. Every probe is one request;
            a variable-length model has probes of different lengths.
        import_flags: Extra ``mcdropout import`` flags this model needs.
        custom: Whether loading it needs :mod:`zoo_layers` imported.
    """

    name: str
    path: Path
    heads: dict[str, str]
    probes: tuple[Inputs, ...]
    import_flags: tuple[str, ...] = ()
    custom: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.probes[0])


def _rng(seed: int) -> np.random.Generator:
    keras.utils.set_random_seed(seed)  # weights, shuffling and training-time dropout
    return np.random.default_rng(seed)


def _fit(model: keras.Model, x: object, y: object, loss: object, epochs: int = 2) -> None:
    # Eagerly: tracing a train step costs seconds, far more than the few steps taken here.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, run_eagerly=True)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)


def cnn(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """Conv2D + BatchNormalization + SpatialDropout2D + Dropout, a 3-class softmax classifier."""
    images = rng.normal(size=(256, 8, 8, 1)).astype(np.float32)
    # Which third of the image (by rows) is brightest: a label a small CNN learns in an epoch.
    labels = np.argmax(images[:, :, :, 0].reshape(256, 8, 8)[:, :6].reshape(256, 3, 16).sum(-1), 1)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.SpatialDropout2D(0.2),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3, activation="softmax"),
    ], name="cnn")
    _fit(model, images, labels, "sparse_categorical_crossentropy")
    return model, {"image": images[:3] * 1.5}


def _series(rng: np.random.Generator, rows: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(rows, steps, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) - x[:, -1, 1]).astype(np.float32)


def lstm(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """An LSTM with input dropout and recurrent dropout, regression."""
    x, y = _series(rng, 128, 6)
    model = keras.Sequential([
        keras.Input((6, 3), name="series"),
        keras.layers.LSTM(12, dropout=0.2, recurrent_dropout=0.25),
        keras.layers.Dense(1),
    ], name="lstm")
    _fit(model, x, y, "mse", epochs=1)  # eager recurrent steps are slow; two steps suffice
    return model, {"series": x[:3]}


def stacked(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """keras.layers.RNN over stacked cells: an LSTMCell and a GRUCell, each with both dropouts."""
    x, y = _series(rng, 128, 5)
    cells = [keras.layers.LSTMCell(10, dropout=0.2, recurrent_dropout=0.2),
             keras.layers.GRUCell(8, dropout=0.15, recurrent_dropout=0.3)]
    model = keras.Sequential([
        keras.Input((5, 3), name="series"),
        keras.layers.RNN(cells),
        keras.layers.Dense(1),
    ], name="stacked")
    _fit(model, x, y, "mse", epochs=1)
    return model, {"series": x[:3]}


def two_inputs(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """Functional, two named inputs: float features and integer ids through an Embedding."""
    feats = rng.normal(size=(256, 4)).astype(np.float32)
    ids = rng.integers(0, 20, size=(256, 3)).astype(np.int32)
    y = (feats.sum(1) + (ids % 3).sum(1) - 3).astype(np.float32)
    f_in = keras.Input((4,), name="features")
    i_in = keras.Input((3,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(20, 4)(i_in))
    hidden = keras.layers.Dense(24, activation="relu")(
        keras.layers.Concatenate()([f_in, embedded]))
    hidden = keras.layers.Dropout(0.25)(hidden)
    model = keras.Model([f_in, i_in], keras.layers.Dense(1, name="y")(hidden), name="two_in")
    _fit(model, [feats, ids], y, "mse")
    return model, {"features": feats[:3], "ids": ids[:3]}


def two_heads(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """One input, two heads from a shared dropout trunk: "price" (regression), "kind" (softmax)."""
    x = rng.normal(size=(256, 5)).astype(np.float32)
    price = (2 * x[:, 0] - x[:, 1] + 0.5).astype(np.float32)
    # The class follows the price (low, middle, high), so a pass that moves one moves the
    # other: the heads' joint passes are then visibly correlated.
    kind = np.digitize(price + 0.5 * x[:, 2], [-0.5, 1.5])
    inp = keras.Input((5,), name="x")
    trunk = keras.layers.Dropout(0.2)(keras.layers.Dense(24, activation="relu")(inp))
    trunk = keras.layers.Dropout(0.2)(keras.layers.Dense(24, activation="relu")(trunk))
    model = keras.Model(inp, {"price": keras.layers.Dense(1, name="price")(trunk),
                              "kind": keras.layers.Dense(3, activation="softmax", name="kind")(trunk)},
                        name="two_heads")
    _fit(model, x, {"price": price, "kind": kind},
         {"price": "mse", "kind": "sparse_categorical_crossentropy"})
    return model, {"x": x[:3]}


def subclassed(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """A subclassed model made of a registered custom layer (see :mod:`zoo_layers`)."""
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] + x[:, 2]).astype(np.float32)
    model = zoo_layers.ZooRegressor(units=16, rate=0.2, name="subclassed")
    model(x[:1])  # builds it, so that the saved file knows the input shape
    _fit(model, x, y, "mse")
    return model, {"inputs": x[:3]}


def noise_dropouts(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """GaussianDropout after a ReLU layer and AlphaDropout after a SELU layer, regression."""
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (np.sin(x[:, 0]) + x[:, 1]).astype(np.float32)
    model = keras.Sequential([
        keras.Input((4,), name="x"),
        keras.layers.Dense(16, activation="selu", kernel_initializer="lecun_normal"),
        keras.layers.AlphaDropout(0.1),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.GaussianDropout(0.2),
        keras.layers.Dense(1),
    ], name="noise")
    _fit(model, x, y, "mse")
    return model, {"x": x[:3]}


def variable_length(rng: np.random.Generator) -> tuple[keras.Model, Inputs, Inputs]:
    """Integer token ids of any length -> Embedding -> LSTM with dropouts, regression.

    Trained on two lengths; probed with two other lengths, one request each.
    """
    model = keras.Sequential([
        keras.Input((None,), dtype="int32", name="tokens"),
        keras.layers.Embedding(30, 6),
        keras.layers.LSTM(10, dropout=0.2, recurrent_dropout=0.2),
        keras.layers.Dense(1),
    ], name="varlen")
    for steps in (4, 8):
        tokens = rng.integers(0, 30, size=(64, steps)).astype(np.int32)
        _fit(model, tokens, (tokens % 5).mean(1).astype(np.float32), "mse", epochs=1)
    return (model, {"tokens": rng.integers(0, 30, size=(3, 5)).astype(np.int32)},
            {"tokens": rng.integers(0, 30, size=(2, 11)).astype(np.int32)})


def padded(rng: np.random.Generator) -> tuple[keras.Model, Inputs]:
    """Token ids padded with 0 to a fixed length, Embedding(mask_zero=True) -> LSTM with dropouts.

    The mask makes the LSTM skip the padding; a server that lost it would read the padding as
    tokens.
    """
    def sequences(rows: int) -> np.ndarray:
        tokens = rng.integers(1, 20, size=(rows, 8)).astype(np.int32)
        tokens[np.arange(8) >= rng.integers(2, 8, size=(rows, 1))] = 0  # 2..7 tokens, then 0s
        return tokens

    model = keras.Sequential([
        keras.Input((8,), dtype="int32", name="tokens"),
        keras.layers.Embedding(20, 6, mask_zero=True),
        keras.layers.LSTM(10, dropout=0.2, recurrent_dropout=0.2),
        keras.layers.Dense(1),
    ], name="padded")
    tokens = sequences(128)
    _fit(model, tokens, (tokens % 4).sum(1).astype(np.float32) / 4, "mse", epochs=1)
    return model, {"tokens": sequences(3)}


Builder = Callable[[np.random.Generator], tuple[keras.Model, Inputs]]

# name -> (builder, heads, import flags); the name is the store name and the file name.
_ONE_PROBE: dict[str, tuple[Builder, dict[str, str], tuple[str, ...]]] = {
    "cnn": (cnn, {"output": "classification"}, ()),
    "lstm": (lstm, {"output": "regression"}, ()),
    "stacked": (stacked, {"output": "regression"}, ()),
    "two_in": (two_inputs, {"y": "regression"}, ()),
    "two_heads": (two_heads, {"price": "regression", "kind": "classification"}, ()),
    "subclassed": (subclassed, {"output": "regression"}, ()),
    "noise": (noise_dropouts, {"output": "regression"}, ()),
    "padded": (padded, {"output": "regression"}, ()),
}
NAMES: tuple[str, ...] = (*_ONE_PROBE, "varlen")


def build_zoo(folder: Path, seed: int = 20260) -> dict[str, ZooModel]:
    """Build, train and save every zoo model under ``folder``, by name (each with its own seed)."""
    zoo: dict[str, ZooModel] = {}
    for offset, (name, (builder, heads, flags)) in enumerate(_ONE_PROBE.items()):
        model, probe = builder(_rng(seed + offset))
        zoo[name] = _save(folder, name, model, heads, (probe,), flags,
                          custom=isinstance(model, zoo_layers.ZooRegressor))
    model, short, long = variable_length(_rng(seed + len(_ONE_PROBE)))
    zoo["varlen"] = _save(folder, "varlen", model, {"output": "regression"}, (short, long), ())
    return zoo


def _save(folder: Path, name: str, model: keras.Model, heads: dict[str, str],
          probes: tuple[Inputs, ...], flags: tuple[str, ...], custom: bool = False) -> ZooModel:
    path = folder / f"{name}.keras"
    model.save(path)
    return ZooModel(name, path, heads, probes, flags, custom)
