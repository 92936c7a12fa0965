"""``mcdropout import``: plain Keras files into a store, run in-process as a user would type it.

Every refusal is checked by its exit status and its message, and by leaving the store as it was.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout import MCDropoutPredictor, ModelStore, cli

# A module registering a custom layer, written at test time. Its name is this file's own: the
# module is imported into the test process once a test names it, and stays registered.
LAYERS = "import_cli_custom_layers"
LAYERS_SOURCE = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="importcli")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0
''')
MAKE_CUSTOM = textwrap.dedent(f'''
    import sys, keras, {LAYERS}
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((3,)), {LAYERS}.Scale(), keras.layers.Dense(8),
                      keras.layers.Dropout(0.2), keras.layers.Dense(1)]).save(sys.argv[1])
''')


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def regression() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    h = keras.layers.Dropout(0.2, name="dropout")(keras.layers.Dense(16, activation="relu")(x))
    return keras.Model(x, keras.layers.Dense(1, name="price")(h), name="houses")


def binary() -> keras.Model:
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dropout(0.3), keras.layers.Dense(1, activation="sigmoid")])


def recurrent() -> keras.Model:
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((5, 2)),
                             keras.layers.LSTM(8, dropout=0.2, recurrent_dropout=0.1),
                             keras.layers.Dense(1)])


def two_inputs_two_heads() -> keras.Model:
    """Float features and integer ids through an Embedding; a price and a kind from one trunk."""
    keras.utils.set_random_seed(3)
    a = keras.Input((3,), name="a")
    b = keras.Input((5,), name="b", dtype="int32")
    ids = keras.layers.Flatten()(keras.layers.Embedding(100, 4)(b))
    h = keras.layers.Concatenate()([keras.layers.Dense(8, activation="relu")(a), ids])
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(16, activation="relu")(h))
    return keras.Model({"a": a, "b": b}, {
        "price": keras.layers.Dense(1, name="price")(h),
        "kind": keras.layers.Dense(3, activation="softmax", name="kind")(h)})


def variable_length() -> keras.Model:
    keras.utils.set_random_seed(4)
    steps = keras.Input((None, 2), name="steps")
    out = keras.layers.Dense(1, name="level")(keras.layers.LSTM(8, dropout=0.1)(steps))
    return keras.Model(steps, out)


def no_dropout() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])


def with_lambda() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.2),
                             keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(1)])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("import")
    made = {}
    for name, build in (("regression", regression), ("binary", binary),
                        ("recurrent", recurrent), ("two", two_inputs_two_heads),
                        ("varlen", variable_length), ("no_dropout", no_dropout),
                        ("lambda", with_lambda)):
        made[name] = folder / f"{name}.keras"
        build().save(made[name])
    made["corrupt"] = folder / "corrupt.keras"
    made["corrupt"].write_bytes(b"PK\x03\x04 not a zip archive" * 8)
    made["h5"] = folder / "model.h5"
    made["h5"].write_bytes(b"\x89HDF\r\n")
    # The custom model is built where its module is importable: not in this process.
    (folder / "lib").mkdir()
    (folder / "lib" / f"{LAYERS}.py").write_text(LAYERS_SOURCE)
    made["custom"] = folder / "custom.keras"
    subprocess.run([sys.executable, "-c", MAKE_CUSTOM, str(made["custom"])], check=True,
                   env={**os.environ, "PYTHONPATH": str(folder / "lib")}, timeout=120)
    made["lib"] = folder / "lib"
    return made


def listing(root: Path) -> list[str]:
    """Everything under root, hidden staging folders included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_import_writes_a_version_every_user_can_read_and_that_predicts_as_the_file(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    code, out, err = run(capsys, "import", files["regression"], "--model-root", root,
                         "--name", "houses", "--tau", "4", "--labels", "price_k",
                         "--default-samples", "50", "--description", "a plain model")
    assert (code, err) == (0, "")
    assert f"imported {files['regression']} as houses version 1 in {root}" in out
    assert "  features: shape (3,), float32" in out
    assert "  price: regression; 1 value a row; labels price_k; tau 4" in out
    assert "stochastic layers: dropout (Dropout, p=0.2)" in out

    store = ModelStore(root)
    assert store.versions("houses") == [1] and listing(root) == [
        "houses", "houses/1", "houses/1/metadata.json", "houses/1/model.keras"]
    for path in (root / "houses", root / "houses" / "1"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for path in (root / "houses" / "1").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    info = store.read_info("houses")
    assert [(i.name, i.shape, i.dtype) for i in info.inputs] == [("features", (3,), "float32")]
    assert [(h.name, h.task, h.labels, h.tau) for h in info.heads] == [
        ("price", "regression", ("price_k",), 4.0)]
    assert (info.default_samples, info.description) == (50, "a plain model")
    recorded = json.loads((root / "houses" / "1" / "metadata.json").read_text())["provenance"]
    assert recorded["imported"]["file"] == "regression.keras"
    assert len(recorded["imported"]["sha256"]) == 64

    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    served = MCDropoutPredictor.from_info(store.load_model("houses"), info)
    original = MCDropoutPredictor(keras.saving.load_model(files["regression"]), tau=4.0)
    np.testing.assert_array_equal(served.predict(x, 30, 5).mean, original.predict(x, 30, 5).mean)

    code, out, _ = run(capsys, "import", files["regression"], "--model-root", root,
                       "--name", "houses")
    assert code == 0 and "as houses version 2" in out  # the next version by default


def test_task_and_labels_per_head_and_info_shows_the_recurrent_rate(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    code, out, _ = run(capsys, "import", files["binary"], "--model-root", root, "--name", "churn",
                       "--labels", "stays,leaves")
    assert code == 0 and "classification; 2 classes a row; labels stays, leaves" in out
    code, out, _ = run(capsys, "import", files["binary"], "--model-root", root, "--name", "score",
                       "--task", "regression")  # a sigmoid that outputs a score, not a class
    assert code == 0 and "regression; 1 value a row" in out
    code, out, _ = run(capsys, "import", files["recurrent"], "--model-root", root, "--name", "seq")
    assert code == 0

    code, out, _ = run(capsys, "info", "--model-root", root, "--name", "seq")
    assert code == 0
    assert "inputs (None: a variable dimension):\n" in out and "shape (5, 2), float32" in out
    assert "regression; 1 value a row" in out
    assert "(LSTM, p=0.2, recurrent p=0.1)" in out
    code, out, _ = run(capsys, "info", "--model-root", root, "--name", "churn")
    assert "classification; 2 classes a row; labels stays, leaves" in out


def test_two_inputs_and_two_heads_with_choices_per_head(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    code, _, err = run(capsys, "import", files["two"], "--model-root", root, "--name", "shop",
                       "--tau", "2")
    assert code == 1 and err == (
        "mcdropout import: error: the model has 2 heads, so --tau must name one as HEAD=VALUE; "
        "its heads: kind (classification, 3 classes a row), price (regression, 1 value a "
        "row)\n")
    code, out, err = run(capsys, "import", files["two"], "--model-root", root, "--name", "shop",
                         "--tau", "price=2", "--labels", "kind=cheap,mid,dear")
    assert (code, err) == (0, "")
    assert ("inputs (None: a variable dimension):\n  a: shape (3,), float32\n"
            "  b: shape (5,), int32, ids 0..99\nheads:\n"
            "  kind: classification; 3 classes a row; labels cheap, mid, dear\n"
            "  price: regression; 1 value a row; tau 2\n") in out
    info = ModelStore(root).read_info("shop")
    assert [(i.name, i.shape, i.dtype) for i in info.inputs] == [("a", (3,), "float32"),
                                                                 ("b", (5,), "int32")]
    assert [(h.name, h.task, h.labels, h.tau) for h in info.heads] == [
        ("kind", "classification", ("cheap", "mid", "dear"), None),
        ("price", "regression", (), 2.0)]

    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(4, 3)).astype(np.float32),
         "b": rng.integers(0, 100, size=(4, 5)).astype(np.int32)}
    served = MCDropoutPredictor.from_info(ModelStore(root).load_model("shop"), info).predict(
        x, 30, 7)
    original = MCDropoutPredictor.from_info(keras.saving.load_model(files["two"]), info).predict(
        x, 30, 7)
    for head in ("kind", "price"):  # one set of passes for both heads, the file's own weights
        np.testing.assert_array_equal(served.heads[head].mean, original.heads[head].mean)

    code, out, _ = run(capsys, "import", files["varlen"], "--model-root", root, "--name", "seq")
    assert code == 0 and "  steps: shape (None, 2), float32\n" in out
    assert ModelStore(root).read_info("seq").inputs[0].shape == (None, 2)


@pytest.mark.parametrize(("argv", "message"), [
    (["no_dropout", "--name", "m"],
     "mcdropout import: error: model .* has no dropout layer with a rate above 0 \\(Dropout, "),
    (["lambda", "--name", "m"], "needs arbitrary code to load \\(e.g. a Lambda layer\\) and "
                                "safe mode is on"),
    (["corrupt", "--name", "m"], "corrupt.keras could not be loaded \\(corrupt or "
                                 "incompatible\\)"),
    (["h5", "--name", "m"], "model.h5: a .h5 file; mcdropout import takes a Keras 3 .keras file"),
    (["regression", "--name", "bad/name"], "model name must match \\[A-Za-z0-9\\]"),
    (["binary", "--name", "m", "--labels", "a,b,c"],
     "head '.*' has 2 classes a row, so --labels needs 2 labels, got 3: \\['a', 'b', 'c'\\]"),
    (["binary", "--name", "m", "--tau", "2"],
     "--tau applies to regression heads; head '.*' is a classification head \\(regression "
     "heads: \\[\\]\\)"),
    (["regression", "--name", "m", "--task", "kind=classification"],
     "--task names head 'kind', which the model does not have; its heads: price \\(regression, "
     "1 value a row\\)"),
    (["regression", "--name", "m", "--task", "ranking"],
     "--task takes \\[HEAD=\\]regression or \\[HEAD=\\]classification, got 'ranking'"),
    (["regression", "--name", "m", "--tau", "price=-1"],
     "--tau takes \\[HEAD=\\]X with X a positive finite number, got '-1'"),
    (["regression", "--name", "m", "--labels", "price=a", "--labels", "price=b"],
     "--labels names head 'price' twice; give it once per head"),
    (["regression", "--name", "m", "--default-samples", "50", "--max-samples", "10"],
     "default_samples must be in 1..max_samples=10, got 50"),
    (["regression", "--name", "m", "--import-module", "no_such_module_here"],
     "cannot import module 'no_such_module_here' \\(--import-module\\): No module named "
     "'no_such_module_here'; it must be installed or lie in a folder on PYTHONPATH"),
    (["regression", "--name", "m", "--import-module", "lib/layers.py"],
     "--import-module takes a Python module name such as 'mypackage.layers', got "
     "'lib/layers.py'"),
])
def test_refusals_exit_1_with_what_is_wrong_and_leave_the_store_as_it_was(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    root = tmp_path / "store"
    assert run(capsys, "import", files["regression"], "--model-root", root, "--name", "m")[0] == 0
    before = listing(root)
    code, out, err = run(capsys, "import", files[argv[0]], "--model-root", root, *argv[1:])
    assert (code, out) == (1, "")
    assert err.startswith("mcdropout import: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert listing(root) == before  # nothing written, no staging folder left behind


def test_an_existing_version_and_bad_usage(files: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    assert run(capsys, "import", files["regression"], "--model-root", root, "--name", "m")[0] == 0
    code, _, err = run(capsys, "import", files["regression"], "--model-root", root, "--name", "m",
                       "--version", "1")
    assert (code, err) == (1, "mcdropout import: error: version must be a positive number not "
                              "yet in the store; model 'm' has versions [1], got 1 (leave "
                              "--version out to take the next)\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["import", str(files["regression"]), "--model-root", str(root)])
    assert done.value.code == 2  # --name is required: a usage error
    assert "the following arguments are required: --name" in capsys.readouterr().err


def test_custom_classes_need_their_module_named(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    assert LAYERS not in sys.modules
    code, _, err = run(capsys, "import", files["custom"], "--model-root", root, "--name", "c")
    assert code == 1
    assert (f"custom.keras names classes this process does not know: unknown class 'Scale' "
            f"(registered as 'importcli>Scale'; import its module with --import-module "
            f"{LAYERS})") in err
    assert "name only modules you trust" in err and listing(root) == []

    monkeypatch.syspath_prepend(str(files["lib"]))
    code, out, err = run(capsys, "import", files["custom"], "--model-root", root, "--name", "c",
                         "--import-module", LAYERS)
    assert (code, err) == (0, "") and "as c version 1" in out
    # info loads the stored model: the variable names the module as well as the flag does.
    monkeypatch.setenv("MCDROPOUT_IMPORT_MODULES", f" {LAYERS} ,")
    code, out, _ = run(capsys, "info", "--model-root", root, "--name", "c")
    assert code == 0 and "stochastic layers: dropout" in out


def test_help_tells_what_is_accepted_and_what_importing_a_module_means(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for promise in ("Keras safe mode", "folders 0755, files 0644", "HEAD=VALUE",
                    "Exit status: 0 imported; 1 refused", "Importing runs its code with this "
                    "process's rights", "MCDROPOUT_IMPORT_MODULES", "a Lambda layer, is refused"):
        assert promise in text, promise
