"""The model store: versions, metadata round trip, and clear failures on bad models."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout import (
    InvalidArgumentError,
    MCDropoutPredictor,
    ModelInfo,
    ModelLoadError,
    ModelStore,
    NotFoundError,
)


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dropout(0.2), keras.layers.Dense(1)])


def _info(name: str = "toy") -> ModelInfo:
    return ModelInfo(name=name, task="regression", input_shape=(3,), labels=("y",),
                     feature_mean=(0.0, 1.0, 2.0), feature_std=(1.0, 2.0, 3.0),
                     target_mean=(5.0,), target_std=(2.0,), tau=3.0,
                     provenance={"data": "synthetic"})


def test_versions_increase_and_latest_answers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.names() == []
    assert store.save(_model(), _info()) == 1
    assert store.save(_model(), _info()) == 2
    assert store.versions("toy") == [1, 2] and store.names() == ["toy"]
    assert store.resolve("toy") == 2 and store.resolve("toy", 1) == 1
    info = store.read_info("toy")
    assert info == _info().__class__(**{**_info().__dict__, "version": 2})


def test_a_loaded_model_predicts_like_the_saved_one(tmp_path: Path) -> None:
    store, model = ModelStore(tmp_path), _model()
    store.save(model, _info())
    loaded = store.load_model("toy")
    x = np.random.default_rng(0).normal(size=(4, 3))
    a = MCDropoutPredictor.from_info(model, _info()).predict(x, samples=50, seed=1)
    b = MCDropoutPredictor.from_info(loaded, store.read_info("toy")).predict(x, samples=50, seed=1)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-5)


def test_unknown_model_or_version_lists_what_exists(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info())
    with pytest.raises(NotFoundError, match=r"model 'nope' not found; available models: \['toy'\]"):
        store.resolve("nope")
    with pytest.raises(NotFoundError, match=r"no version 7; available versions: \[1\]"):
        store.resolve("toy", 7)


def test_bad_names_and_duplicate_versions_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(InvalidArgumentError, match="model name must match"):
        store.save(_model(), _info("../escape"))
    store.save(_model(), _info(), version=3)
    with pytest.raises(InvalidArgumentError, match="already has version 3"):
        store.save(_model(), _info(), version=3)


def test_half_written_versions_are_invisible(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "toy" / "1").mkdir(parents=True)  # no metadata.json: an interrupted copy
    (tmp_path / "toy" / ".2.tmp-x").mkdir()
    assert store.versions("toy") == [] and store.names() == []


def test_corrupt_model_file_fails_clearly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info())
    (tmp_path / "toy" / "1" / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        store.load_model("toy")


def test_missing_model_file_fails_clearly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info())
    (tmp_path / "toy" / "1" / "model.keras").unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        store.load_model("toy")


def test_corrupt_metadata_fails_clearly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info())
    path = tmp_path / "toy" / "1" / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "task": "ranking"}))
    with pytest.raises(ModelLoadError, match="task must be 'regression' or 'classification'"):
        store.read_info("toy")


def test_models_needing_arbitrary_code_are_refused_in_safe_mode(tmp_path: Path) -> None:
    inp = keras.Input((3,))
    hidden = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Dropout(0.1)(hidden)))
    store = ModelStore(tmp_path)
    store.save(model, _info())
    with pytest.raises(ModelLoadError, match="arbitrary code"):
        store.load_model("toy")
    assert store.load_model("toy", safe_mode=False) is not None
