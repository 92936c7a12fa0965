"""``mcdropout calibrate`` and ``mcdropout info`` on a calibrated version, run in-process as a
user would type them, on small real models in a temporary store."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import keras
import numpy as np
import pytest

from mcdropout import cli
from mcdropout.metadata import HeadInfo, InputInfo, ModelInfo
from mcdropout.store import ModelStore


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("calibrate")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(260, 2))
    y = 3 * np.sin(x[:, 0]) + x[:, 1] + 0.3 * rng.normal(size=260)
    side = np.where(x[:, 0] + 0.3 * rng.normal(size=260) > 0, "right", "left")
    files = {"root": folder / "store"}
    for part, rows in (("calib", slice(160, 260)),
                       ("tiny", slice(160, 170))):
        files[f"reg_{part}"] = folder / f"reg_{part}.csv"
        np.savetxt(files[f"reg_{part}"], np.column_stack([x[rows], y[rows]]), delimiter=",",
                   header="u,v,y", comments="")
        files[f"cls_{part}"] = folder / f"cls_{part}.csv"
        files[f"cls_{part}"].write_text("u,v,side\n" + "".join(
            f"{a},{b},{s}\n" for (a, b), s in zip(x[rows], side[rows], strict=True)))
    # Untrained small models: calibration needs no good model, only a servable one.
    keras.utils.set_random_seed(0)
    stored = ModelStore(files["root"])
    for name, task, width, labels in (("reg", "regression", 1, ()),
                                      ("cls", "classification", 2, ("left", "right"))):
        inp = keras.Input((2,), name="x")
        h = keras.layers.Dropout(0.2)(keras.layers.Dense(16, activation="relu")(inp))
        out = keras.layers.Dense(width, activation="softmax" if labels else None)(h)
        stored.save(keras.Model(inp, out), ModelInfo(name=name, task=task, input_shape=(2,),
                                                     labels=labels, tau=4.0 if not labels
                                                     else None), validate=False)
    # Two heads: a regression head "level" and a binary sigmoid head "flag".
    inp = keras.Input((2,), name="features")
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(16, activation="relu")(inp))
    model = keras.Model(inp, [keras.layers.Dense(1, name="level")(h),
                              keras.layers.Dense(1, activation="sigmoid", name="flag")(h)])
    info = ModelInfo(name="two", task="regression", input_shape=(2,),
                     inputs=(InputInfo("features", (2,)),),
                     heads=(HeadInfo("level", "regression", tau=4.0),
                            HeadInfo("flag", "classification", ("no", "yes"))))
    stored.save(model, info, validate=False)
    files["two"] = folder / "two.csv"
    flag = np.where(side[160:] == "right", "yes", "no")
    files["two"].write_text("u,v,y,flag\n" + "".join(
        f"{a},{b},{c},{f}\n" for (a, b), c, f in zip(x[160:], y[160:], flag, strict=True)))
    return files


def test_calibrate_writes_a_new_readable_version_and_leaves_the_old_one(
        store: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    before = snapshot(root / "reg" / "1")
    code, out, err = run(capsys, "calibrate", "--model-root", root, "--name", "reg", "--data",
                         store["reg_calib"], "--samples", "30", "--abstain-measure",
                         "predictive_std", "--abstain-coverage", "0.8")
    assert code == 0, err
    assert "wrote version 2" in out and "coverage@0.95" in out and "split-conformal" in out
    assert "abstain when predictive_std >" in out
    folder = root / "reg" / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["calibration.json", "metadata.json",
                                                       "model.keras"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert snapshot(root / "reg" / "1") == before
    assert not (root / "reg" / "1" / "calibration.json").exists()
    assert not [p for p in (root / "reg").iterdir() if p.name.startswith(".")]
    data = json.loads((folder / "calibration.json").read_text())
    head = data["heads"][0]
    assert head["rows"] == 100 and head["samples"] == 30
    assert head["after"]["coverage@0.95"] >= 0.95
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["description"].startswith("calibrated copy of version 1")
    assert meta["provenance"]["calibration"]["from_version"] == 1
    assert (folder / "model.keras").read_bytes() == (root / "reg" / "1" / "model.keras"
                                                     ).read_bytes()

    code, out, err = run(capsys, "info", "--model-root", root, "--name", "reg")
    assert code == 0, err
    assert "split-conformal" in out and "drift reference (predictive_std)" in out
    assert "keeps 80.0%" in out
    code, out, _ = run(capsys, "info", "--model-root", root, "--name", "reg", "--version", "1")
    assert "calibration: none" in out


def test_classifier_and_two_heads(store: dict[str, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    code, out, err = run(capsys, "calibrate", "--model-root", root, "--name", "cls", "--data",
                         store["cls_calib"], "--samples", "30", "--abstain-measure",
                         "mutual_information", "--abstain-coverage", "0.9")
    assert code == 0, err
    assert "temperature" in out and "set_coverage@0.9" in out and "ece" in out
    code, out, err = run(capsys, "calibrate", "--model-root", root, "--name", "two", "--data",
                         store["two"], "--samples", "20", "--target", "level=y",
                         "--target", "flag=flag")
    assert code == 0, err
    calibration = ModelStore(root).read_calibration("two", 2)
    assert calibration is not None and sorted(calibration.heads) == ["flag", "level"]
    assert calibration.heads["flag"].temperature is not None
    assert calibration.heads["level"].regression is not None


@pytest.mark.parametrize("extra, message", [
    (["--target", "nope"], "no column 'nope'"),
    (["--abstain-measure", "mutual_information", "--abstain-risk", "0.5"],
     "does not apply to regression head"),
    (["--abstain-measure", "predictive_std", "--abstain-risk", "0"],
     "the lowest reachable is"),
    (["--abstain-risk", "0.5"], "needs --abstain-measure"),
    (["--abstain-measure", "loudness", "--abstain-coverage", "0.5"],
     "abstention measure must be one of"),
    (["--abstain-measure", "std", "--abstain-coverage", "1.5"], "coverage must be in (0, 1]"),
])
def test_refusals_exit_1_and_write_nothing(store: dict[str, Path], extra: list[str],
                                           message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    versions = ModelStore(root).versions("reg")
    code, _, err = run(capsys, "calibrate", "--model-root", root, "--name", "reg", "--version",
                       "1", "--data", store["reg_calib"], "--samples", "10", *extra)
    assert code == 1 and message in err, err
    assert err.startswith("mcdropout calibrate: error:")
    assert ModelStore(root).versions("reg") == versions


def test_more_refusals(store: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    common = ["calibrate", "--model-root", root, "--samples", "10"]
    for argv, message in (
            ([*common, "--name", "reg", "--version", "1", "--data", store["reg_tiny"]],
             "needs more calibration rows than 10"),
            ([*common, "--name", "two", "--version", "1", "--data", store["two"],
              "--target", "level=y"], "every head needs its targets"),
            ([*common, "--name", "two", "--version", "1", "--data", store["two"],
              "--target", "y"], "must name one as HEAD=COLUMN"),
            ([*common, "--name", "two", "--version", "1", "--data", store["two"],
              "--target", "level=y", "--target", "size=flag"], "does not have"),
            ([*common, "--name", "cls", "--version", "1", "--data", store["two"],
              "--target", "flag"], "not among the model's labels"),
            ([*common, "--name", "missing", "--data", store["reg_calib"]], "not found")):
        code, _, err = run(capsys, *argv)
        assert code == 1 and message in err, (argv, err)


def test_help_tells_the_guarantee_and_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    out = capsys.readouterr().out
    for text in ("split-conformal", "temperature", "--abstain-risk", "HEAD=COLUMN",
                 "exchangeable", "Exit status"):
        assert text in out
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") is not None


def test_evaluate_scores_a_calibrated_version_and_draws_the_risk_coverage_curve(
        store: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = store["root"]
    code, _, err = run(capsys, "calibrate", "--model-root", root, "--name", "reg", "--version",
                       "1", "--data", store["reg_calib"], "--samples", "20")
    assert code == 0, err
    version = str(ModelStore(root).versions("reg")[-1])
    code, out, err = run(capsys, "evaluate", "--model-root", root, "--name", "reg", "--version",
                         version, "--data", store["reg_calib"], "--samples", "20", "--json",
                         "--calibrated", "--report", tmp_path)
    assert code == 0, err
    assert json.loads(out)["picp"] >= 0.95  # conformal intervals, in-sample
    assert (tmp_path / "risk_coverage.png").stat().st_size > 1000
    assert "(calibrated)" in (tmp_path / "index.html").read_text()
    code, _, err = run(capsys, "evaluate", "--model-root", root, "--name", "reg", "--version",
                       "1", "--data", store["reg_calib"], "--calibrated")
    assert code == 1 and "version 1 has no calibration; `mcdropout calibrate`" in err
