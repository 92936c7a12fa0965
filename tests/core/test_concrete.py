"""Concrete dropout: a dropout rate learned per layer, sampled by the engine as any Dropout layer."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout import ModelStore
from mcdropout.engine import MCDropoutPredictor
from mcdropout.errors import InvalidArgumentError
from mcdropout.metadata import ModelInfo
from mcdropout.modeling import builders, concrete, tables, training


def set_rate(layer: concrete.ConcreteDense, rate: float) -> None:
    layer.dropout.p_logit.assign(math.log(rate / (1.0 - rate)))


def concrete_mlp(seed: int = 0, **kwargs: object) -> keras.Model:
    keras.utils.set_random_seed(seed)
    options: dict = {"hidden": (16,), "dropout": 0.2, "concrete": True, "n_train": 200, **kwargs}
    return builders.build_mlp(3, 1, **options)


def test_regularizers_are_the_kl_term_over_n_tau() -> None:
    weights, rates = builders.concrete_regularizers(1e-2, 500, 4.0)
    assert weights == pytest.approx(1e-4 / (2 * 500 * 4.0))
    assert rates == pytest.approx(1.0 / (500 * 4.0))
    for bad in ({"length_scale": 0.0}, {"n_train": 0}, {"tau": -1.0}, {"tau": math.inf}):
        args = {"length_scale": 1e-2, "n_train": 10, "tau": 1.0, **bad}
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            builders.concrete_regularizers(**args)  # type: ignore[arg-type]


def test_the_rate_is_the_sigmoid_of_its_logit_and_inference_passes_inputs_unchanged() -> None:
    layer = concrete.ConcreteDropout(0.3)
    assert layer.rate == pytest.approx(0.3)
    layer.p_logit.assign(2.0)
    assert layer.rate == pytest.approx(1 / (1 + math.exp(-2.0)))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(InvalidArgumentError, match=r"must be in \(0, 1\)"):
            concrete.ConcreteDropout(bad)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        concrete.ConcreteDropout(0.1, temperature=0.0)


def test_the_relaxed_training_mask_keeps_the_mean_and_drops_about_the_rate() -> None:
    keras.utils.set_random_seed(3)
    layer = concrete.ConcreteDropout(0.25, temperature=0.1)
    x = np.ones((4000, 50), np.float32)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    dropped = float(np.mean(y < 0.5))  # at temperature 0.1 the mask is near 0 or 1
    n = y.size
    assert abs(dropped - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n) + 0.01
    assert abs(float(np.mean(y)) - 1.0) < 0.02


def test_the_added_loss_is_the_weight_and_entropy_terms() -> None:
    layer = concrete.ConcreteDense(4, "relu", rate=0.2, weight_regularizer=0.5,
                                   dropout_regularizer=0.1)
    layer.build((None, 3))
    kernel = keras.ops.convert_to_numpy(layer.dense.kernel)
    p = 0.2
    expected = (0.5 * np.sum(kernel**2) / (1 - p)
                + 0.1 * 3 * (p * math.log(p) + (1 - p) * math.log(1 - p)))
    assert float(keras.ops.convert_to_numpy(layer.regularization())) == pytest.approx(
        expected, rel=1e-5)
    layer(np.ones((2, 3), np.float32), training=True)
    assert len(layer.losses) == 1
    layer(np.ones((2, 3), np.float32), training=False)
    assert not layer.losses  # inference adds no loss (the engine traces in inference)


def test_a_strong_entropy_term_pulls_the_rate_to_one_half() -> None:
    # With nothing to fit but the entropy term the learned rates climb towards 0.5.
    model = concrete_mlp(seed=1, n_train=1, learning_rate=0.05)
    x = np.zeros((80, 3), np.float32)  # one epoch of 80 one-row steps
    model.fit(x, np.zeros((80, 1), np.float32), epochs=1, batch_size=1, verbose=0)
    rates = concrete.learned_rates(model)
    assert set(rates) == {"hidden_1", "output"}
    assert all(0.4 < r < 0.6 for r in rates.values()), rates


def test_build_mlp_makes_concrete_layers_the_engine_samples_at_their_learned_rates() -> None:
    model = concrete_mlp(hidden=(16, 8))
    layers = [layer for layer in model.layers if isinstance(layer, concrete.ConcreteDense)]
    assert [layer.name for layer in layers] == ["hidden_1", "hidden_2", "output"]
    set_rate(layers[0], 0.05)
    set_rate(layers[1], 0.4)
    found = MCDropoutPredictor(model, task="regression").stochastic_layers
    assert [layer.kind for layer in found] == ["ConcreteDropout"] * 3
    assert [round(layer.rate, 6) for layer in found] == [0.05, 0.4, 0.2]
    no_input = concrete_mlp(input_dropout=False)
    assert isinstance(no_input.get_layer("hidden_1"), keras.layers.Dense)
    assert isinstance(no_input.get_layer("output"), concrete.ConcreteDense)
    with pytest.raises(InvalidArgumentError, match="give n_train"):
        builders.build_mlp(3, 1, concrete=True)
    with pytest.raises(InvalidArgumentError, match="tau must be a finite number > 0"):
        builders.build_mlp(3, 1, concrete=True, n_train=10, tau=0.0)
    with pytest.raises(InvalidArgumentError, match="no weight_decay"):
        builders.build_mlp(3, 1, concrete=True, n_train=10, weight_decay=1e-3)


def test_the_masks_drop_units_at_the_learned_rate() -> None:
    # One concrete layer on 400 inputs, identity kernel: each pass's output zeroes the dropped
    # inputs, so the share of zeros is the rate the engine used.
    inputs = keras.Input((400,))
    layer = concrete.ConcreteDense(400, None, rate=0.5)
    model = keras.Model(inputs, layer(inputs))
    layer.dense.kernel.assign(np.eye(400, dtype=np.float32))
    set_rate(layer, 0.3)
    predictor = MCDropoutPredictor(model, task="regression")
    passes = predictor.predict(np.ones((1, 400), np.float32), 50, seed=4,
                               return_samples=True).raw_samples
    zeros = float(np.mean(np.asarray(passes) == 0.0))
    n = 50 * 400
    assert abs(zeros - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)


def test_a_saved_model_loads_in_a_fresh_process_with_its_learned_rates(tmp_path: Path) -> None:
    model = concrete_mlp(seed=2)
    set_rate(model.get_layer("hidden_1"), 0.123)
    store = ModelStore(tmp_path)
    store.save(model, ModelInfo(name="cd", task="regression", input_shape=(3,), tau=2.0))
    script = ("import sys; from mcdropout import ModelStore; "
              "from mcdropout.engine import MCDropoutPredictor; "
              f"s = ModelStore({str(tmp_path)!r}); "
              "p = MCDropoutPredictor.from_info(s.load_model('cd'), s.read_info('cd')); "
              "print([round(layer.rate, 4) for layer in p.stochastic_layers])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[0.123, 0.2]"


def test_train_learns_the_rates_and_records_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = np.sin(2 * x[:, 0]) + 0.3 * x[:, 1] + 0.1 * rng.normal(size=300)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,y", comments="")
    table = tables.load_table(path, task="regression")
    config = training.TrainConfig(concrete=True, dropout=0.2, hidden=(32,), epochs=20,
                                  batch_size=64, learning_rate=0.01, patience=20, seed=1,
                                  validation_samples=50)
    model, info = training.train(table, config, "cd")
    learned = info.provenance["training"]["learned_dropout"]
    assert set(learned) == {"hidden_1", "output"}
    assert all(0.0 < r < 1.0 and abs(r - 0.2) > 1e-3 for r in learned.values()), learned
    assert info.provenance["hyperparameters"]["concrete"] is True
    assert info.provenance["hyperparameters"]["weight_decay"] is None
    assert info.tau is not None and info.tau > 0
    served = MCDropoutPredictor.from_info(model, info)
    assert [round(layer.rate, 6) for layer in served.stochastic_layers] == [
        round(r, 6) for r in learned.values()]


def small_table(tmp_path: Path, rows: int = 200) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    y = np.sin(2 * x[:, 0]) + 0.3 * x[:, 1] + 0.1 * rng.normal(size=rows)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,y", comments="")
    return path


def test_train_command_learns_the_rates_and_says_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcdropout import cli

    status = cli.main(["train", "--data", str(small_table(tmp_path)), "--model-root",
                       str(tmp_path / "store"), "--name", "cd", "--concrete-dropout",
                       "--epochs", "5", "--seed", "3", "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    info = ModelStore(tmp_path / "store").read_info("cd")
    learned = info.provenance["training"]["learned_dropout"]
    assert "learned dropout rates: " + ", ".join(
        f"{name} {rate:.3g}" for name, rate in learned.items()) in printed


def test_tune_with_concrete_dropout_searches_tau_and_reports_the_learned_rates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcdropout import cli

    args = ["tune", "--data", str(small_table(tmp_path)), "--model-root",
            str(tmp_path / "store"), "--name", "cd", "--concrete-dropout", "--taus", "1", "10",
            "--epochs", "5", "--seed", "1", "--grid-only"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "learned dropout" in printed
    tuning = ModelStore(tmp_path / "store").read_info("cd").provenance["tuning"]
    assert [p["dropout"] for p in tuning["grid"]] == [0.1, 0.1]  # the default starting rate
    assert all(p["weight_decay"] is None and len(p["learned_dropout"]) == 2
               for p in tuning["grid"])
    refused = ["tune", "--data", str(small_table(tmp_path)), "--model-root",
               str(tmp_path / "store"), "--name", "cd", "--concrete-dropout", "--weight-decays",
               "1e-3", "--epochs", "1"]
    assert cli.main(refused) == 1
    assert ("weight decays do not apply to concrete dropout: its regularisers follow from the "
            "length-scale and tau") in capsys.readouterr().err


def test_stacked_concrete_networks_learn_rates_and_become_the_keras_model_they_describe(
        ) -> None:
    from mcdropout.modeling import gridfit

    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 3)).astype(np.float32)
    y = np.sin(x[:, :1])
    # network 0: the entropy term dominates (rates climb towards 0.5); network 1: none (the fit
    # pulls its rates down)
    stack = gridfit.fit_mlps(x, y, [0.2, 0.2], [1e-6, 1e-6], hidden=(8,), epochs=60,
                             batch_size=32, learning_rate=0.02, concrete_regularizer=[1.0, 0.0])
    assert stack.learned_rates is not None and stack.learned_rates.shape == (2, 2)
    assert np.all(stack.learned_rates[0] > 0.3) and np.all(stack.learned_rates[1] < 0.2)
    assert stack.select([1]).learned_rates.tolist() == [stack.learned_rates[1].tolist()]
    for i in range(2):
        model = stack.to_keras(i)
        h = x @ stack.kernels[0][i] + stack.biases[0][i]
        h = np.maximum(h, 0) @ stack.kernels[1][i] + stack.biases[1][i]
        np.testing.assert_allclose(model(x, training=False).numpy(), h, rtol=1e-5, atol=1e-5)
        rates = [layer.rate for layer in MCDropoutPredictor(model).stochastic_layers]
        np.testing.assert_allclose(rates, stack.learned_rates[i], rtol=1e-5)
        assert model.get_layer("output").dropout_regularizer == [1.0, 0.0][i]
    with pytest.raises(InvalidArgumentError, match="concrete_regularizer"):
        gridfit.fit_mlps(x, y, [0.2], [0.0], epochs=1, concrete_regularizer=[-1.0])


def test_stack_sampling_uses_each_layers_learned_rate() -> None:
    from mcdropout.modeling import gridfit

    # identity layers: a pass's output is zero where the inputs' mask dropped a unit
    width = 300
    eye = np.eye(width, dtype=np.float32)[None]
    stack = gridfit.MLPStack((eye, eye), (np.zeros((1, width), np.float32),) * 2, (0.1,),
                             (0.0,), learned_rates=np.array([[0.3, 1e-6]]),
                             concrete_regularizer=(0.0,))
    passes = stack.mc_samples(np.ones((1, width), np.float32), 40, seed=2)
    zeros = float(np.mean(passes == 0.0))
    assert abs(zeros - 0.3) < 5 * math.sqrt(0.3 * 0.7 / (40 * width))



def test_the_stacked_penalty_is_the_keras_layers_regularization() -> None:
    from mcdropout.modeling import gridfit

    model = concrete_mlp(seed=4, hidden=(6,))
    set_rate(model.get_layer("hidden_1"), 0.07)
    set_rate(model.get_layer("output"), 0.33)
    layers = [model.get_layer("hidden_1"), model.get_layer("output")]
    for layer in layers:
        layer.weight_regularizer, layer.dropout_regularizer = 0.3, 0.02
    expected = sum(float(keras.ops.convert_to_numpy(layer.regularization())) for layer in layers)
    kernels = [keras.ops.convert_to_numpy(layer.dense.kernel)[None] for layer in layers]
    rates = [np.array([layer.dropout.rate], np.float32) for layer in layers]
    got = gridfit.penalties(kernels, rates, np.float32(0.3), np.float32(0.02))
    assert float(np.asarray(got)[0]) == pytest.approx(expected, rel=1e-5)
