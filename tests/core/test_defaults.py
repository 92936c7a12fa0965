"""The built-in default models: trained once from shipped data, safe under concurrency, demo."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcdropout.errors import NotFoundError
from mcdropout.modeling import defaults
from mcdropout.modeling.builders import build_mlp
from mcdropout.store import ModelInfo, ModelStore

# The real recipes with a couple of epochs: same data, same code path, a fraction of the time.
TINY = tuple(replace(m, config=replace(m.config, epochs=2, validation_samples=10))
             for m in defaults.DEFAULT_MODELS)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> tuple[defaults.DefaultModel, ...]:
    monkeypatch.setattr(defaults, "DEFAULT_MODELS", TINY)
    return TINY


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defaults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(defaults, "DEFAULT_MODELS", TINY)
        assert defaults.ensure_default_store(root) == root
    return root


def test_shipped_data_sets_are_complete() -> None:
    diabetes = defaults.load_default_table(defaults.DEFAULT_MODELS[0])
    iris = defaults.load_default_table(defaults.DEFAULT_MODELS[1])
    assert diabetes.x.shape == (442, 10) and diabetes.y.shape == (442, 1)
    assert iris.x.shape == (150, 4)
    assert sorted(set(iris.y)) == ["setosa", "versicolor", "virginica"]
    assert (defaults.DATA_DIR / "README.md").is_file()


def test_both_models_are_trained_without_their_held_out_rows(store_root: Path) -> None:
    store = ModelStore(store_root)
    assert store.names() == ["diabetes", "iris"]
    diabetes, iris = store.read_info("diabetes"), store.read_info("iris")
    assert diabetes.task == "regression" and diabetes.labels == ("progression",)
    assert iris.task == "classification" and iris.labels == ("setosa", "versicolor", "virginica")
    assert diabetes.provenance["data"]["rows"] == 442 - 45  # every 10th row held out
    assert iris.provenance["data"]["rows"] == 150 - 15
    made = diabetes.provenance["default_model"]
    assert made["revision"] == defaults.REVISION
    assert {"rmse", "mc_log_likelihood", "picp"} <= set(made["test_metrics"])
    assert made["test_metrics"]["rows"] == 45
    assert {"accuracy", "ece", "brier"} <= set(iris.provenance["default_model"]["test_metrics"])


def test_a_complete_store_is_returned_without_training(
        store_root: Path, monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    def refuse(spec):
        raise AssertionError(f"retrained {spec.name}")

    monkeypatch.setattr(defaults, "train_default", refuse)
    assert defaults.ensure_default_store(store_root) == store_root
    assert ModelStore(store_root).versions("diabetes") == [1]


def test_concurrent_callers_train_each_model_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    trained: list[str] = []
    real = defaults.train_default
    started = threading.Barrier(3)

    def counting(spec):
        trained.append(spec.name)
        return real(spec)

    monkeypatch.setattr(defaults, "train_default", counting)
    errors: list[BaseException] = []

    def call() -> None:
        started.wait()
        try:
            defaults.ensure_default_store(tmp_path, tiny[1:])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert trained == ["iris"]
    assert ModelStore(tmp_path).versions("iris") == [1]


def test_a_user_model_of_the_same_name_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    ModelStore(tmp_path).save(build_mlp(4, 3, task="classification"),
                              ModelInfo(name="iris", task="classification", input_shape=(4,)))
    monkeypatch.setattr(defaults, "train_default", lambda spec: pytest.fail("retrained"))
    defaults.ensure_default_store(tmp_path, tiny[1:])
    assert ModelStore(tmp_path).versions("iris") == [1]


def test_a_new_recipe_revision_adds_a_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny) -> None:
    defaults.ensure_default_store(tmp_path, tiny[1:])
    monkeypatch.setattr(defaults, "REVISION", defaults.REVISION + 1)
    defaults.ensure_default_store(tmp_path, tiny[1:])
    store = ModelStore(tmp_path)
    assert store.versions("iris") == [1, 2]
    assert store.read_info("iris").provenance["default_model"]["revision"] == defaults.REVISION


def test_default_root_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert defaults.default_store_root() == Path("/somewhere/cache/mcdropout/default-store")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert defaults.default_store_root() == Path.home() / ".cache/mcdropout/default-store"


def test_demo_predicts_held_out_rows_with_intervals(store_root: Path, tiny) -> None:
    result = defaults.demo(store_root, rows=3, samples=40, seed=1)
    table = defaults.load_default_table(tiny[0])
    np.testing.assert_array_equal(result.x, table.x[[0, 10, 20]])
    np.testing.assert_array_equal(result.y, table.y[[0, 10, 20]])
    p = result.prediction
    assert p.samples == 40 and p.mean.shape == (3, 1) and p.predictive_std is not None
    (interval,) = p.intervals
    assert interval.level == 0.95 and np.all(interval.lower < p.mean) \
        and np.all(p.mean < interval.upper)
    with pytest.raises(NotFoundError, match="no default model 'wine'"):
        defaults.demo(store_root, model="wine")


@pytest.mark.slow
def test_the_real_default_models_learn(tmp_path: Path) -> None:
    store = ModelStore(defaults.ensure_default_store(tmp_path))
    diabetes = store.read_info("diabetes").provenance["default_model"]["test_metrics"]
    table = defaults.load_default_table(defaults.DEFAULT_MODELS[0])
    assert diabetes["rmse"] < 0.8 * float(table.y.std())  # constant predictor: ~77
    iris = store.read_info("iris").provenance["default_model"]["test_metrics"]
    assert iris["accuracy"] >= 0.9
