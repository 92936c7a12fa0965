"""The standard MC dropout MLP: layout, weight decay from Gal & Ghahramani's formula, checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mcdropout.engine.layers import find_stochastic_layers
from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling.builders import build_mlp, weight_decay


@pytest.mark.parametrize(
    ("length_scale", "dropout", "n_train", "tau", "expected"),
    [
        # l^2 (1 - p) / (2 N tau), worked by hand
        (1e-2, 0.05, 1000, 1.0, 1e-4 * 0.95 / 2000),  # 4.75e-8
        (1.0, 0.5, 10, 2.0, 1.0 * 0.5 / 40),  # 0.0125
        (0.1, 0.0, 50, 0.25, 0.01 / 25),  # 4e-4
        (2.0, 0.1, 1, 1.0, 4.0 * 0.9 / 2),  # 1.8
    ],
)
def test_weight_decay_matches_hand_values(length_scale: float, dropout: float, n_train: int,
                                          tau: float, expected: float) -> None:
    assert weight_decay(length_scale, dropout, n_train, tau) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length_scale": 0.0}, "length_scale must be a finite number > 0, got 0.0"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"n_train": 0}, "n_train must be an integer >= 1, got 0"),
        ({"tau": -1.0}, "tau must be a finite number > 0, got -1.0"),
        ({"tau": float("inf")}, "tau must be a finite number > 0, got inf"),
    ],
)
def test_weight_decay_rejects_out_of_range_arguments(kwargs: dict, message: str) -> None:
    args = {"length_scale": 1e-2, "dropout": 0.1, "n_train": 100, "tau": 1.0, **kwargs}
    with pytest.raises(InvalidArgumentError) as err:
        weight_decay(**args)
    assert str(err.value) == message


def test_layout_is_dropout_dense_dropout_dense_out() -> None:
    model = build_mlp(4, 2, hidden=(16, 8), dropout=0.1)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == \
        [16, 8, 2]
    assert model.input_shape == (None, 4) and model.output_shape == (None, 2)
    assert [s.rate for s in find_stochastic_layers(model)] == pytest.approx([0.1, 0.1, 0.1])


def test_without_input_dropout_the_first_layer_is_dense() -> None:
    model = build_mlp(3, 1, hidden=(5,), input_dropout=False)
    assert [type(layer).__name__ for layer in model.layers[1:]] == ["Dense", "Dropout", "Dense"]


def test_hidden_layers_use_the_activation_and_the_output_follows_the_task() -> None:
    reg = build_mlp(3, 2, hidden=(5,), activation="tanh")
    assert reg.get_layer("hidden_1").activation.__name__ == "tanh"
    assert reg.get_layer("output").activation.__name__ == "linear"
    assert reg.loss == "mean_squared_error"
    multi = build_mlp(3, 4, task="classification")
    assert multi.get_layer("output").activation.__name__ == "softmax"
    probs = multi.predict(np.ones((2, 3), "float32"), verbose=0)
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    binary = build_mlp(3, 1, task="classification")
    assert binary.get_layer("output").activation.__name__ == "sigmoid"
    assert binary.loss == "binary_crossentropy"


def test_derived_weight_decay_is_the_l2_coefficient_of_every_dense_layer() -> None:
    model = build_mlp(3, 1, hidden=(4, 4), dropout=0.2, length_scale=0.5, tau=2.0, n_train=25)
    expected = 0.25 * 0.8 / (2 * 25 * 2.0)
    for name in ("hidden_1", "hidden_2", "output"):
        regularizer = model.get_layer(name).kernel_regularizer
        assert regularizer.get_config()["l2"] == pytest.approx(expected, rel=1e-6)
    # The penalty the model adds to the loss is that coefficient times the sum of squared weights.
    kernels = [model.get_layer(n).kernel.numpy() for n in ("hidden_1", "hidden_2", "output")]
    penalty = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses))
    assert penalty == pytest.approx(expected * sum(float((k**2).sum()) for k in kernels),
                                    rel=1e-5)


def test_tau_defaults_to_one_and_no_n_train_means_no_decay() -> None:
    model = build_mlp(3, 1, dropout=0.1, length_scale=1.0, n_train=10)
    assert model.get_layer("output").kernel_regularizer.get_config()["l2"] == \
        pytest.approx(0.9 / 20, rel=1e-6)
    assert build_mlp(3, 1).get_layer("output").kernel_regularizer is None
    explicit = build_mlp(3, 1, weight_decay=0.01, n_train=10)
    assert explicit.get_layer("output").kernel_regularizer.get_config()["l2"] == \
        pytest.approx(0.01)


def test_max_norm_bounds_each_unit_after_training() -> None:
    model = build_mlp(3, 1, hidden=(8,), max_norm=0.5, learning_rate=0.5)
    assert model.get_layer("hidden_1").kernel_constraint.get_config()["max_value"] == 0.5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    model.fit(x, 10 * x.sum(axis=1, keepdims=True), epochs=3, verbose=0)
    norms = np.linalg.norm(model.get_layer("hidden_1").kernel.numpy(), axis=0)
    assert norms.max() <= 0.5 + 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": 0}, "input_dim must be an integer >= 1, got 0"),
        ({"output_dim": 2.5}, "output_dim must be an integer >= 1, got 2.5"),
        ({"hidden": (10, 0)}, "hidden layer widths must be integers >= 1, got [10, 0]"),
        ({"dropout": 0.0}, "dropout must be in (0, 1), got 0.0"),
        ({"task": "ranking"}, "task must be one of ['regression', 'classification'], "
                              "got 'ranking'"),
        ({"activation": "bogus"}, "activation must be a Keras activation name such as 'relu' "
                                  "or 'tanh', got 'bogus'"),
        ({"max_norm": -1.0}, "max_norm must be a finite number > 0, got -1.0"),
        ({"weight_decay": -0.1}, "weight_decay must be finite and >= 0, got -0.1"),
        ({"hidden": (), "input_dropout": False}, "the model would hold no Dropout layer"),
    ],
)
def test_build_mlp_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"input_dim": 3, "output_dim": 1, **kwargs}
    with pytest.raises(InvalidArgumentError) as err:
        build_mlp(**args)
    assert str(err.value).startswith(message)


def test_model_saves_and_loads_in_safe_mode(tmp_path) -> None:
    model = build_mlp(3, 2, hidden=(4,), task="classification", n_train=10, max_norm=3.0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
