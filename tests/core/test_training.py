"""Training: it learns, it estimates tau, it is reproducible, and its metadata round-trips.

Also the data loading it stands on (CSV/NPZ, labels, standardisation, split).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout.engine import MCDropoutPredictor
from mcdropout.errors import InvalidArgumentError
from mcdropout.modeling import tables, training
from mcdropout.store import ModelStore

FAST = training.TrainConfig(epochs=40, batch_size=32, learning_rate=1e-2, patience=40, seed=0,
                            validation_samples=50)


def _table(x: np.ndarray, y: np.ndarray, *, classes: bool = False) -> tables.Table:
    y = np.asarray(y, dtype=object) if classes else np.asarray(y, float).reshape(len(y), -1)
    return tables.Table(np.asarray(x, float), y, tuple(f"f{i}" for i in range(x.shape[1])),
                      ("target",), "synthetic", "0" * 64)


def _sine(rows: int = 400, noise: float = 0.1, seed: int = 0) -> tables.Table:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(rows, 2))
    y = 50 + 10 * (np.sin(2 * x[:, 0]) + 0.5 * x[:, 1]) + 10 * noise * rng.normal(size=rows)
    return _table(x, y)


@pytest.fixture(scope="module")
def trained() -> tuple[tables.Table, keras.Model, training.ModelInfo]:
    table = _sine()
    model, info = training.train(table, FAST, "sine")
    return table, model, info


def test_loss_decreases_and_the_model_beats_a_constant_predictor(trained) -> None:
    table, _, info = trained
    run = info.provenance["training"]
    assert run["epochs_run"] == len(run["loss"]) == len(run["val_loss"]) == 40
    assert run["loss"][-1] < 0.3 * run["loss"][0]
    val = info.provenance["validation_metrics"]
    _, val_idx = tables.split_indices(table.rows, FAST.validation_fraction, 0)
    train_idx = np.setdiff1d(np.arange(table.rows), val_idx)
    constant_rmse = float(np.sqrt(np.mean((table.y[val_idx] - table.y[train_idx].mean()) ** 2)))
    assert val["rmse"] < 0.4 * constant_rmse
    assert val["rows"] == len(val_idx) == 80


def test_metadata_describes_the_model(trained) -> None:
    table, _, info = trained
    assert info.task == "regression" and info.input_shape == (2,)
    assert info.labels == ("target",)
    train_idx, _ = tables.split_indices(table.rows, 0.2, 0)
    np.testing.assert_allclose(info.feature_mean, table.x[train_idx].mean(axis=0))
    np.testing.assert_allclose(info.feature_std, table.x[train_idx].std(axis=0))
    np.testing.assert_allclose(info.target_mean, table.y[train_idx].mean(axis=0))
    hp = info.provenance["hyperparameters"]
    assert hp["seed"] == 0 and hp["hidden"] == [50] and hp["dropout"] == 0.05
    assert hp["weight_decay"] == pytest.approx(1e-4 * 0.95 / (2 * 320 * 1.0))
    assert info.provenance["data"]["train_rows"] == 320
    assert {"keras", "numpy", "python"} <= set(info.provenance["versions"])
    assert info.provenance["training"]["tau_estimated"] is True


def test_estimated_tau_is_the_validation_residual_variance_left_after_the_mc_spread(
        trained) -> None:
    # Moment matching in target units: 1/tau = mean squared residual of the MC mean minus the
    # mean MC variance (kept >= 1% of the residual), on the validation rows, with the passes
    # and seed training used.
    table, model, info = trained
    _, val_idx = tables.split_indices(table.rows, FAST.validation_fraction, 0)
    predictor = MCDropoutPredictor.from_info(model, info)
    p = predictor.predict(table.x[val_idx], 50, 0)
    assert predictor.tau is not None and info.tau is not None and info.target_std is not None
    residual = float(np.mean((table.y[val_idx] - p.mean) ** 2))
    noise = max(residual - float(np.mean(p.std**2)), 0.01 * residual)
    assert 1 / predictor.tau == pytest.approx(noise, rel=1e-3)
    assert 1 / predictor.tau == pytest.approx(info.target_std[0] ** 2 / info.tau)


def test_tau_from_residuals_recovers_the_noise_variance() -> None:
    # A model whose passes are all (almost surely) the identity: MC mean = x, MC variance = 0, so
    # 1/tau is the residual variance, whose standard error is sigma^2 sqrt(2/n).
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dropout(1e-7),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    rng = np.random.default_rng(0)
    n, sigma = 4000, 0.3
    x = rng.normal(size=(n, 1)).astype("float32")
    y = x + sigma * rng.normal(size=(n, 1))
    tau = training.estimate_tau(model, x, y, samples=10, seed=0)
    assert abs(1 / tau - sigma**2) < 5 * sigma**2 * np.sqrt(2 / n)


def test_tau_subtracts_the_mc_spread_but_stays_finite() -> None:
    # y = 2x exactly, dropout p = 0.5 on x: every residual is pure MC spread, so the noise
    # estimate falls to its floor of 1% of the residual variance.
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dropout(0.5),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    x = np.random.default_rng(1).normal(size=(500, 1)).astype("float32")
    prediction = MCDropoutPredictor(model).predict(x, 200, 0)
    residual = float(np.mean((x - prediction.mean) ** 2))
    assert training.estimate_tau(model, x, x, samples=200, seed=0) == \
        pytest.approx(1 / (0.01 * residual))


def test_same_seed_same_model_other_seed_other_model() -> None:
    table = _sine(rows=120)
    config = replace(FAST, epochs=5, seed=11)
    first, info1 = training.train(table, config, "a")
    second, info2 = training.train(table, config, "a")
    for w1, w2 in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)
    assert info1.tau == info2.tau
    assert info1.provenance["validation_metrics"] == info2.provenance["validation_metrics"]
    other, _ = training.train(table, replace(config, seed=12), "a")
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_given_tau_is_recorded_and_used_in_the_weight_decay() -> None:
    _, info = training.train(_sine(rows=80), replace(FAST, epochs=2, tau=4.0), "t")
    assert info.tau == 4.0 and info.provenance["training"]["tau_estimated"] is False
    assert info.provenance["hyperparameters"]["weight_decay"] == \
        pytest.approx(1e-4 * 0.95 / (2 * 64 * 4.0))


def test_multi_class_labels_from_strings() -> None:
    rng = np.random.default_rng(0)
    centres = {"b": (0, 3), "a": (3, -2), "c": (-3, -2)}
    names = np.array(list(centres))[np.arange(300) % 3]
    x = np.array([centres[n] for n in names]) + rng.normal(size=(300, 2))
    config = replace(FAST, task="classification", epochs=20)
    model, info = training.train(_table(x, names, classes=True), config, "blobs")
    assert info.labels == ("a", "b", "c")
    assert info.target_mean is None and info.tau is None
    assert model.get_layer("output").activation.__name__ == "softmax"
    assert info.provenance["validation_metrics"]["accuracy"] > 0.9
    predictor = MCDropoutPredictor.from_info(model, info)
    predicted = predictor.predict(np.array([[3.0, -2.0]]), 20, 0).predicted_class
    assert predicted is not None and info.labels[int(predicted[0])] == "a"


def test_two_classes_train_one_sigmoid_unit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    labels = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    config = replace(FAST, task="classification", epochs=15)
    model, info = training.train(_table(x, labels, classes=True), config, "binary")
    assert model.output_shape == (None, 1)
    assert model.get_layer("output").activation.__name__ == "sigmoid"
    assert info.labels == ("no", "yes")
    assert info.provenance["validation_metrics"]["accuracy"] > 0.85


def test_train_file_saves_a_version_whose_metadata_round_trips(tmp_path: Path) -> None:
    table = _sine(rows=100)
    csv = tmp_path / "sine.csv"
    columns = np.column_stack([table.x, table.y])
    np.savetxt(csv, columns, delimiter=",", header="a,b,y", comments="")
    store_root = tmp_path / "store"
    version, info = training.train_file(csv, replace(FAST, epochs=3), name="sine",
                                        model_root=store_root, target=["y"])
    assert version == info.version == 1
    store = ModelStore(store_root)
    assert store.read_info("sine") == info
    assert info.provenance["data"]["sha256"] == tables.sha256_file(csv)
    assert info.provenance["data"]["path"] == str(csv.resolve())
    assert info.provenance["data"]["features"] == ["a", "b"]
    loaded = MCDropoutPredictor.from_info(store.load_model("sine"), info)
    x = table.x[:5]
    np.testing.assert_allclose(loaded.predict(x, 30, 4).mean,
                               MCDropoutPredictor.from_info(store.load_model("sine"), info)
                               .predict(x, 30, 4).mean)
    assert training.train_file(csv, replace(FAST, epochs=1), name="sine", model_root=store_root,
                               target=["y"])[0] == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (replace(FAST, epochs=0), "epochs must be an integer >= 1, got 0"),
        (replace(FAST, task="classification", tau=1.0), "tau applies to regression only"),
        (replace(FAST, dropout=0.0), "dropout must be in (0, 1), got 0.0"),
        (replace(FAST, seed=-1), "seed must be in 0..2**32-1, got -1"),
    ],
)
def test_bad_configs_are_rejected_before_training(config, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        training.train(_sine(rows=20), config, "x")
    assert str(err.value).startswith(message)


def test_one_class_cannot_be_learned() -> None:
    table = _table(np.zeros((10, 1)), np.array(["a"] * 10), classes=True)
    with pytest.raises(InvalidArgumentError, match=r"at least 2 classes in 'target', got \['a'\]"):
        training.train(table, replace(FAST, task="classification"), "x")


# -- data loading ------------------------------------------------------------------------------
def test_csv_table_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x1,x2,label\n1,2,10\n3,4,2\n5,6,10\n")
    table = tables.load_table(path, task="classification")
    assert table.feature_names == ("x1", "x2") and table.target_names == ("label",)
    np.testing.assert_array_equal(table.x, [[1, 2], [3, 4], [5, 6]])
    # numeric labels sort as numbers, not as text
    assert tables.encode_labels(table.y) == (pytest.approx([1, 0, 1]), ("2", "10"))
    reg = tables.load_table(path, task="regression", target=["x1"], features=["label"])
    np.testing.assert_array_equal(reg.y, [[1], [3], [5]])
    with pytest.raises(InvalidArgumentError, match=r"has no column 'nope'; its columns: "):
        tables.load_table(path, task="regression", target=["nope"])
    path.write_text("x1,x2,y\n1,2,3\n1,oops,3\n")
    with pytest.raises(InvalidArgumentError,
                       match=r"line 3 column 'x2': expected a finite number, got 'oops'"):
        tables.load_table(path, task="regression")
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(InvalidArgumentError, match="must start with a header line"):
        tables.load_table(path, task="regression")
    with pytest.raises(InvalidArgumentError, match=r"must end in .csv or .npz, got"):
        tables.load_table(tmp_path / "d.txt", task="regression")


def test_npz_table(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(6.0).reshape(3, 2), y=np.array([2, 0, 2]))
    table = tables.load_table(path, task="classification")
    assert tables.encode_labels(table.y)[1] == ("0", "2")
    assert tables.load_table(path, task="regression").y.shape == (3, 1)
    np.savez(path, x=np.zeros((3, 2)))
    with pytest.raises(InvalidArgumentError, match=r"has no array 'y'; it holds \['x'\]"):
        tables.load_table(path, task="regression")


def test_inputs_from_labelled_or_bare_files(tmp_path: Path) -> None:
    labelled = tmp_path / "l.csv"
    labelled.write_text("b,y,a\n1,9,2\n3,9,4\n")
    np.testing.assert_array_equal(
        tables.load_inputs(labelled, feature_names=["a", "b"], n_features=2), [[2, 1], [4, 3]])
    bare = tmp_path / "b.csv"
    bare.write_text("1,2\n3,4\n")
    np.testing.assert_array_equal(tables.load_inputs(bare, n_features=2), [[1, 2], [3, 4]])
    with pytest.raises(InvalidArgumentError, match="has 2 columns; the model takes 3"):
        tables.load_inputs(bare, n_features=3)
    np.save(tmp_path / "x.npy", np.ones((2, 3), "float32"))
    assert tables.load_inputs(tmp_path / "x.npy").dtype == np.float32


def test_standardization_and_split() -> None:
    values = np.array([[1.0, 5.0], [3.0, 5.0]])
    mean, std = tables.standardization(values)
    np.testing.assert_array_equal(mean, [2.0, 5.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])  # the constant column keeps std 1
    train, val = tables.split_indices(10, 0.2, seed=3)
    assert len(val) == 2 and sorted([*train, *val]) == list(range(10))
    np.testing.assert_array_equal(val, tables.split_indices(10, 0.2, seed=3)[1])
    with pytest.raises(InvalidArgumentError, match="need at least 2 training rows"):
        tables.split_indices(2, 0.5, seed=0)
