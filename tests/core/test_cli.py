"""The ``mcdropout`` command line, run in-process as a user would type it."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcdropout import cli
from mcdropout.modeling import defaults
from mcdropout.store import ModelStore


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(150, 2))
    y = 3 * np.sin(x[:, 0]) + x[:, 1] + 0.1 * rng.normal(size=150)
    reg = folder / "reg.csv"
    np.savetxt(reg, np.column_stack([x, y]), delimiter=",", header="u,v,y", comments="")
    cls = folder / "cls.csv"
    species = np.where(x[:, 0] > 0, "right", "left")
    cls.write_text("u,v,side\n" + "".join(f"{a},{b},{s}\n" for (a, b), s in zip(x, species, strict=True)))
    inputs = folder / "x.npy"
    np.save(inputs, x[:4].astype("float32"))
    return {"reg": reg, "cls": cls, "x": inputs, "root": folder / "store"}


@pytest.fixture(scope="module")
def trained(files: dict[str, Path]) -> dict[str, Path]:
    common = ["--model-root", files["root"], "--epochs", "3", "--seed", "0", "--quiet"]
    assert cli.main([str(a) for a in ["train", "--data", files["reg"], "--name", "reg",
                                      "--hidden", "16", "16", "--dropout", "0.1", *common]]) == 0
    assert cli.main([str(a) for a in ["train", "--data", files["cls"], "--name", "cls",
                                      "--task", "classification", "--target", "side",
                                      *common]]) == 0
    return files


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "import", "predict", "evaluate", "info", "make-default-models",
                    "demo"):
        assert command in out


def test_train_prints_progress_and_writes_a_version(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "train", "--data", files["reg"], "--model-root", tmp_path,
                       "--name", "m", "--epochs", "2", "--seed", "1", "--tau", "5",
                       "--length-scale", "0.1", "--batch-size", "64")
    assert code == 0
    assert "Epoch 2/2" in out and "val_loss" in out
    assert f"saved m version 1 in {tmp_path}" in out
    assert "tau = 5 (standardised target units)" in out
    info = ModelStore(tmp_path).read_info("m")
    hp = info.provenance["hyperparameters"]
    assert (hp["tau"], hp["length_scale"], hp["batch_size"], hp["seed"]) == (5.0, 0.1, 64, 1)
    assert info.provenance["data"]["target"] == ["y"]


def test_train_with_learned_noise_saves_a_version_whose_metadata_says_so(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "train", "--data", files["reg"], "--model-root", tmp_path,
                       "--name", "het", "--epochs", "2", "--seed", "1", "--noise", "learned",
                       "--hidden", "8", "--quiet")
    assert code == 0
    assert "noise: learned" in out and "tau =" not in out
    metadata = json.loads((tmp_path / "het" / "1" / "metadata.json").read_text())
    assert metadata["noise"] == "learned" and metadata["tau"] is None
    code, out, _ = run(capsys, "predict", "--model-root", tmp_path, "--name", "het",
                       "--input", files["x"], "--samples", "20", "--seed", "2")
    assert code == 0 and "mean ± predictive std (MC spread and noise)" in out
    code, out, _ = run(capsys, "info", "--model-root", tmp_path, "--name", "het")
    assert code == 0 and "learned noise" in out


def test_predict_regression_prints_mean_std_and_interval_per_row(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "predict", "--model-root", trained["root"], "--name", "reg",
                       "--input", trained["x"], "--samples", "30", "--seed", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("reg v1: 30 MC dropout passes, seed 2; mean ± predictive std")
    assert len(lines) == 5 and all(f"row {i}: y = " in lines[i + 1] for i in range(4))
    assert "95% [" in lines[1] and "MC std" in lines[1]


def test_predict_json_matches_the_engine(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from mcdropout.engine import MCDropoutPredictor

    code, out, _ = run(capsys, "predict", "--model-root", trained["root"], "--name", "reg",
                       "--input", trained["x"], "--samples", "30", "--seed", "2", "--json")
    assert code == 0
    doc = json.loads(out)
    store = ModelStore(trained["root"])
    info = store.read_info("reg")
    expected = MCDropoutPredictor.from_info(store.load_model("reg"), info).predict(
        np.load(trained["x"]), 30, 2)
    np.testing.assert_allclose(doc["mean"], expected.mean)
    assert expected.predictive_std is not None
    np.testing.assert_allclose(doc["predictive_std"], expected.predictive_std)
    assert doc["samples"] == 30 and doc["seed"] == 2 and set(doc["intervals"]) == {"0.95"}


def test_predict_classification_names_the_class(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # The labelled CSV works as input: its header names the model's features.
    code, out, _ = run(capsys, "predict", "--model-root", trained["root"], "--name", "cls",
                       "--input", trained["cls"], "--samples", "20")
    assert code == 0
    rows = out.splitlines()[1:]
    assert len(rows) == 150
    assert rows[0].split()[2] in ("left", "right")
    assert "p=" in rows[0] and "entropy" in rows[0] and "MI" in rows[0]


def test_evaluate_regression_and_classification(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "evaluate", "--model-root", trained["root"], "--name", "reg",
                       "--data", trained["reg"], "--samples", "20", "--json")
    assert code == 0
    report = json.loads(out)
    assert {"rmse", "gaussian_nll", "mc_log_likelihood", "picp", "mean_interval_width"} \
        <= set(report)
    assert report["rows"] == 150 and report["samples"] == 20
    code, out, _ = run(capsys, "evaluate", "--model-root", trained["root"], "--name", "cls",
                       "--data", trained["cls"])
    assert code == 0
    assert out.startswith(f"cls v1 on {trained['cls']}: rows 150")
    for key in ("accuracy", "nll", "ece", "brier"):
        assert key in out


def test_evaluate_report_writes_the_plots_and_a_page(
        trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, pictures in (("reg", ["calibration.png", "error_vs_std.png", "risk_coverage.png"]),
                           ("cls", ["reliability.png", "mutual_information.png",
                                    "risk_coverage.png"])):
        folder = tmp_path / name
        code, out, _ = run(capsys, "evaluate", "--model-root", trained["root"], "--name", name,
                           "--data", trained[name], "--samples", "20", "--report", folder)
        assert code == 0 and f"wrote {folder / 'index.html'}" in out
        page = (folder / "index.html").read_text()
        shown = re.findall(r'<img src="([^"]+)"', page)
        assert shown == pictures, shown
        for picture in shown:
            assert (folder / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<td>rows</td><td>150</td>" in page and "<td>samples</td><td>20</td>" in page


def test_info_lists_models_and_their_stochastic_layers(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "--model-root", trained["root"])
    assert code == 0 and "cls: versions [1]" in out and "reg: versions [1]" in out
    code, out, _ = run(capsys, "info", "--model-root", trained["root"], "--name", "reg")
    assert "input_dropout (Dropout, p=0.1), dropout_1 (Dropout, p=0.1), " \
           "dropout_2 (Dropout, p=0.1)" in out


def test_errors_are_one_line_on_stderr_with_exit_status_1(
        trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "predict", "--model-root", trained["root"], "--name", "nope",
                       "--input", trained["x"])
    assert code == 1
    assert err == "mcdropout predict: error: model 'nope' not found; available models: " \
                  "['cls', 'reg']\n"
    code, _, err = run(capsys, "train", "--data", trained["reg"], "--model-root",
                       trained["root"], "--name", "x", "--dropout", "1.5")
    assert (code, err) == (1, "mcdropout train: error: dropout must be in (0, 1), got 1.5\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--data", "d.csv", "--model-root", "r", "--name", "x",
                  "--task", "ranking"])
    assert done.value.code == 2


def test_make_default_models_and_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tuple(replace(m, config=replace(m.config, epochs=2, validation_samples=10))
                 for m in defaults.DEFAULT_MODELS)
    monkeypatch.setattr(defaults, "DEFAULT_MODELS", tiny)
    code, out, err = run(capsys, "make-default-models", "--model-root", tmp_path)
    assert code == 0
    assert "training default model 'diabetes'" in err
    assert f"diabetes v1 (regression) in {tmp_path}; held-out test: " in out
    assert "iris v1 (classification)" in out
    code, out, _ = run(capsys, "demo", "--model-root", tmp_path, "--rows", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("diabetes v1: Disease progression")
    assert [line.split(":")[0] for line in lines[2:]] == ["row 0", "row 1", "row 2"]
    assert "progression = " in lines[2] and "95% [" in lines[2] and "true 151" in lines[2]


class _EntryPoint:
    def __init__(self, name: str, target) -> None:
        self.name, self._target = name, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_plugged_in_commands_are_registered(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def register(subparsers) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--who", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)

    plugins = [_EntryPoint("hello", register),
               _EntryPoint("broken", ImportError("No module named 'grpc'")),
               _EntryPoint("train", lambda sub: pytest.fail("built-ins win"))]
    monkeypatch.setattr(cli.metadata, "entry_points",
                        lambda group: plugins if group == cli.ENTRY_POINT_GROUP else [])
    assert run(capsys, "hello", "--who", "you")[:2] == (0, "hello you\n")
    code, _, err = run(capsys, "broken")
    assert code == 1
    assert "mcdropout broken is not available here (ImportError: No module named 'grpc')" in err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "(unavailable: ImportError" in capsys.readouterr().out
