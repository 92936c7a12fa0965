"""The model store: versions, metadata round trip, and clear failures on bad models."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout import (
    HeadInfo,
    InputInfo,
    InvalidArgumentError,
    MCDropoutPredictor,
    ModelInfo,
    ModelLoadError,
    ModelStore,
    NoStochasticLayersError,
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


# -- the path is the version's identity, and the root its boundary --------------------------------
def _claim(path: Path, **changes: object) -> None:
    """Rewrite the metadata at ``path`` with ``changes``."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_version_whose_metadata_names_another_model_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info("diabetes"))
    _claim(tmp_path / "diabetes" / "1" / "metadata.json", name="iris")
    with pytest.raises(ModelLoadError, match=r"version folder .*diabetes/1 refused: its "
                       r"metadata\.json names model 'iris', but the folder belongs to model "
                       r"'diabetes'"):
        store.read_info("diabetes", 1)


def test_a_stated_version_must_be_its_folder_number(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info(), version=9)
    path = tmp_path / "toy" / "9" / "metadata.json"
    _claim(path, version=5)
    with pytest.raises(ModelLoadError, match=r"toy/9/metadata\.json: metadata says version 5, "
                       r"but its folder is version 9"):
        store.read_info("toy", 9)
    _claim(path, version=9)  # a version that agrees is fine
    assert store.read_info("toy", 9).version == 9


def _outside_copy(tmp_path: Path) -> tuple[ModelStore, Path]:
    """A store under tmp_path/root, and a saved version outside it at tmp_path/elsewhere/toy/1."""
    ModelStore(tmp_path / "elsewhere").save(_model(), _info())
    (tmp_path / "root").mkdir()
    return ModelStore(tmp_path / "root"), tmp_path / "elsewhere" / "toy" / "1"


@pytest.mark.parametrize("link", ["model folder", "version folder", "files"])
def test_links_out_of_the_root_are_refused_unless_allowed(tmp_path: Path, link: str) -> None:
    store, outside = _outside_copy(tmp_path)
    root = store.root
    if link == "model folder":
        (root / "toy").symlink_to(outside.parent, target_is_directory=True)
    elif link == "version folder":
        (root / "toy").mkdir()
        (root / "toy" / "1").symlink_to(outside, target_is_directory=True)
    else:
        (root / "toy" / "1").mkdir(parents=True)
        for file in ("metadata.json", "model.keras"):
            (root / "toy" / "1" / file).symlink_to(outside / file)
    assert store.versions("toy") == [1]  # listed, so that loading it says why it is refused
    with pytest.raises(ModelLoadError, match=r"toy/1/metadata\.json refused: a symbolic link "
                       r"leads it to .*elsewhere/toy/1/metadata\.json, outside the model root"):
        store.read_info("toy", 1)
    with pytest.raises(ModelLoadError, match=r"toy/1/model\.keras refused: .*outside the model "
                       r"root"):
        store.load_model("toy", 1)

    allowed = ModelStore(root, allow_outside_links=True)
    assert allowed.read_info("toy", 1).name == "toy"
    assert allowed.load_model("toy", 1) is not None


def test_links_that_stay_inside_the_root_are_followed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    ModelStore(tmp_path / "store" / "shelf").save(_model(), _info())
    (tmp_path / "store" / "toy").mkdir()
    (tmp_path / "store" / "toy" / "4").symlink_to("../shelf/toy/1", target_is_directory=True)
    # The store root itself may be a link too (a mounted volume's usual layout).
    (tmp_path / "mounted").symlink_to(tmp_path / "store", target_is_directory=True)
    for root in (tmp_path / "store", tmp_path / "mounted"):
        linked = ModelStore(root)
        assert linked.read_info("toy").version == 4
        assert linked.load_model("toy", 4) is not None
    assert store.names() == ["toy"]


def test_metadata_without_a_name_says_which_keys_are_required(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(_model(), _info())
    path = tmp_path / "toy" / "1" / "metadata.json"
    data = json.loads(path.read_text())
    del data["name"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"lacks the required key\(s\) \['name'\].*'name' "):
        store.read_info("toy")


def test_inputs_and_heads_round_trip_with_variable_dimensions() -> None:
    info = ModelInfo(name="two", task="regression", input_shape=(),
                     inputs=(InputInfo("ids", (None,), "int32"),
                             InputInfo("x", (4,), feature_mean=(0, 1, 2, 3),
                                       feature_std=(1, 1, 1, 2))),
                     heads=(HeadInfo("kind", "classification", ("a", "b")),
                            HeadInfo("price", "regression", tau=2.0)))
    assert (info.input_shape, info.input_dtype, info.task, info.labels) == \
        ((None,), "int32", "classification", ("a", "b"))  # the first input's and head's
    text = info.to_json()
    assert json.loads(text)["inputs"][0]["shape"] == [None]
    assert ModelInfo.from_json(text) == info
    assert info.input_infos() == info.inputs and info.head_infos() == info.heads


def test_a_single_input_single_head_file_is_read_as_before(tmp_path: Path) -> None:
    text = _info().to_json()
    assert "inputs" not in json.loads(text) and "heads" not in json.loads(text)
    info = ModelInfo.from_json(text)
    assert info.input_infos() == (InputInfo("inputs", (3,), "float32", (0.0, 1.0, 2.0),
                                            (1.0, 2.0, 3.0)),)
    assert info.head_infos() == (HeadInfo("output", "regression", ("y",), (5.0,), (2.0,), 3.0),)


@pytest.mark.parametrize("body, message", [
    ({"name": "m", "task": "regression", "input_shape": [3], "heads": [{"name": "h", "task": "x"}]},
     r"head 'h': task must be 'regression' or 'classification', got 'x'"),
    ({"name": "m", "task": "regression", "input_shape": [3], "inputs": [{"name": "a"}]},
     r"input 'a' needs 'shape'"),
    ({"name": "m", "task": "regression", "input_shape": [3],
      "inputs": [{"name": "a", "shape": [3], "dtype": "uint8"}]},
     r"input 'a': dtype must be one of float16, float32, float64, int32, int64, got 'uint8'"),
])
def test_bad_inputs_and_heads_are_refused_with_what_is_allowed(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelInfo.from_json(json.dumps(body))


def test_saved_versions_are_readable_by_other_users(tmp_path: Path) -> None:
    ModelStore(tmp_path).save(_model(), _info())
    folder = tmp_path / "toy" / "1"
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}


def test_save_refuses_a_model_without_dropout(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(NoStochasticLayersError, match="no dropout layer"):
        ModelStore(tmp_path).save(model, _info())
    assert ModelStore(tmp_path).versions("toy") == []


def _shop() -> keras.Model:
    keras.utils.set_random_seed(5)
    feats = keras.Input((3,), name="feats")
    ids = keras.Input((4,), dtype="int32", name="ids")
    hidden = keras.layers.Concatenate()([feats, keras.layers.Flatten()(
        keras.layers.Embedding(10, 2)(ids))])
    hidden = keras.layers.Dropout(0.2)(keras.layers.Dense(8, activation="relu")(hidden))
    return keras.Model([feats, ids], [keras.layers.Dense(1, name="price")(hidden),
                                      keras.layers.Dense(2, activation="softmax",
                                                         name="kind")(hidden)])


def test_a_two_input_two_head_model_round_trips(tmp_path: Path) -> None:
    info = ModelInfo(name="shop", task="regression", input_shape=(3,),
                     inputs=(InputInfo("feats", (3,)), InputInfo("ids", (4,), "int32")),
                     heads=(HeadInfo("price", "regression", tau=2.0),
                            HeadInfo("kind", "classification", ("no", "yes"))))
    store = ModelStore(tmp_path)
    store.save(_shop(), info)
    predictor = MCDropoutPredictor.from_info(store.load_model("shop"), store.read_info("shop"))
    assert [s.name for s in predictor.inputs] == ["feats", "ids"]
    assert [(h.name, h.labels) for h in predictor.heads] == [("price", ()), ("kind", ("no", "yes"))]


@pytest.mark.parametrize(("info", "message"), [
    (ModelInfo(name="shop", task="regression", input_shape=(3,)),
     r"the model has 2 inputs \['feats', 'ids'\]; describe them with inputs="),
    (ModelInfo(name="shop", task="regression", input_shape=(3,),
               inputs=(InputInfo("feats", (3,)), InputInfo("ids", (4,), "int32"))),
     r"describe a one-head model; this one has heads \['price', 'kind'\]"),
])
def test_save_refuses_metadata_that_does_not_describe_the_model(tmp_path: Path, info: ModelInfo,
                                                                message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        ModelStore(tmp_path).save(_shop(), info)
    assert ModelStore(tmp_path).versions("shop") == []
