"""The UCI benchmark: its file layout, the stacked trainer it runs on, and the protocol end to end."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcdropout import cli
from mcdropout.engine import MCDropoutPredictor
from mcdropout.errors import InvalidArgumentError, NotFoundError
from mcdropout.evaluation import uci, uci_calibration, uci_cli, uci_data, uci_table
from mcdropout.modeling import gridfit

UCI_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "uci"


def write_layout(root: Path, name: str = "tiny", rows: int = 40) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    table = np.column_stack([x, x @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=rows)])
    np.savetxt(folder / "data.txt", table)
    (folder / "index_features.txt").write_text("0\n1\n2\n")
    (folder / "index_target.txt").write_text("3")  # no trailing newline, as on file
    order = rng.permutation(rows)
    for i in range(2):
        order = np.roll(order, rows // 2)
        np.savetxt(folder / f"index_train_{i}.txt", order[: rows * 9 // 10], fmt="%d")
        np.savetxt(folder / f"index_test_{i}.txt", order[rows * 9 // 10:], fmt="%d")
    for file, text in (("n_splits", "2"), ("n_hidden", "8"), ("n_epochs", "4"),
                       ("dropout_rates", "0.01 0.1"), ("tau_values", "1.0\n10.0\n")):
        (folder / f"{file}.txt").write_text(text)
    return folder


def test_layout_is_read_as_published(tmp_path: Path) -> None:
    folder = write_layout(tmp_path)
    ds = uci_data.load_dataset(tmp_path, "tiny")
    table = np.loadtxt(folder / "data.txt")
    np.testing.assert_array_equal(ds.x, table[:, :3])
    np.testing.assert_array_equal(ds.y, table[:, [3]])
    assert (ds.n_splits, ds.n_hidden, ds.n_epochs) == (2, 8, 4)
    assert ds.dropout_rates == (0.01, 0.1) and ds.tau_values == (1.0, 10.0)
    train, test = ds.split(1)
    np.testing.assert_array_equal(train, np.loadtxt(folder / "index_train_1.txt"))
    assert len(train) == 36 and len(test) == 4 and not set(train) & set(test)
    assert uci_data.available_datasets(tmp_path) == ["tiny"]
    with pytest.raises(InvalidArgumentError, match=r"split must be in 0\.\.1 for tiny, got 2"):
        ds.split(2)


def test_unknown_data_set_lists_those_present(tmp_path: Path) -> None:
    write_layout(tmp_path)
    with pytest.raises(NotFoundError, match=r"no data set 'boston'.*found: \['tiny'\]"):
        uci_data.load_dataset(tmp_path, "boston")


def test_malformed_files_are_named(tmp_path: Path) -> None:
    folder = write_layout(tmp_path)
    (folder / "index_target.txt").write_text("7")
    with pytest.raises(InvalidArgumentError, match=r"index_target\.txt must name one column"):
        uci_data.load_dataset(tmp_path, "tiny")
    (folder / "index_target.txt").write_text("2")
    with pytest.raises(InvalidArgumentError, match=r"the target column 2 is among the features"):
        uci_data.load_dataset(tmp_path, "tiny")
    (folder / "index_target.txt").write_text("3")
    (folder / "index_test_0.txt").write_text(
        (folder / "index_test_0.txt").read_text() + (folder / "index_train_0.txt").read_text()
        .split()[0] + "\n")
    with pytest.raises(InvalidArgumentError, match=r"split 0 tests on 1 of its training rows"):
        uci_data.load_dataset(tmp_path, "tiny").split(0)
    (folder / "n_hidden.txt").write_text("fifty")
    with pytest.raises(InvalidArgumentError, match=r"cannot read .*n_hidden\.txt"):
        uci_data.load_dataset(tmp_path, "tiny")


def test_protocol_settings_are_checked(tmp_path: Path) -> None:
    write_layout(tmp_path)
    ds = uci_data.load_dataset(tmp_path, "tiny")
    with pytest.raises(InvalidArgumentError, match=r"splits must be in 1\.\.2 for tiny, got 3"):
        uci.run(ds, uci.Protocol(splits=3))
    with pytest.raises(InvalidArgumentError, match="samples must be an integer >= 1, got 0"):
        uci.run(ds, uci.Protocol(samples=0))
    (tmp_path / "tiny" / "index_test_1.txt").write_text("3\n40\n")
    with pytest.raises(InvalidArgumentError,
                       match=r"index_test_1\.txt: row indices must be below 40 \(the rows of "
                             r"data\.txt\), got 40"):
        uci.run(ds, uci.Protocol())


def test_the_published_repositorys_data_folder_is_found(tmp_path: Path) -> None:
    folder = write_layout(tmp_path)  # a clone's UCI_Datasets/<name>/data/ holds the files
    (folder / "data").mkdir()
    for file in list(folder.glob("*.txt")):
        file.rename(folder / "data" / file.name)
    assert uci_data.available_datasets(tmp_path) == ["tiny"]
    ds = uci_data.load_dataset(tmp_path, "tiny")
    assert ds.directory == folder / "data" and ds.n_splits == 2 and len(ds.split(1)[0]) == 36
    with pytest.raises(NotFoundError, match=r"no data set 'boston'.*or its data/ folder"):
        uci_data.load_dataset(tmp_path, "boston")


def test_a_data_set_without_its_optional_files_gets_the_protocols_defaults(
        tmp_path: Path) -> None:
    folder = write_layout(tmp_path, rows=60)
    for file in ("n_splits", "n_hidden", "n_epochs", "dropout_rates", "tau_values"):
        (folder / f"{file}.txt").unlink()
    ds = uci_data.load_dataset(tmp_path, "tiny")
    assert (ds.n_splits, ds.n_hidden, ds.n_epochs) == (2, 50, 40)  # splits counted from files
    assert ds.dropout_rates == uci_data.DEFAULT_DROPOUT_RATES and ds.tau_values == ()
    report = uci.run(ds, uci.Protocol(epochs_multiplier=1, samples=20, extend_grid=False))
    for split in report.splits:
        # tau starts from a grid scaled to the split's own fitting rows (not its test rows)
        train = ds.split(split.split)[0]
        fitting = ds.y[train[:int(0.8 * len(train))]]
        expected = [t / fitting.var() for t in uci_data.DEFAULT_TAU_STANDARDISED]
        assert sorted({g.tau for g in split.grid}) == pytest.approx(expected, rel=1e-3)
        assert len(split.grid) == 4 * 8 and math.isfinite(split.test_ll)
    assert report.splits[0].grid[0].tau != report.splits[1].grid[0].tau
    assert re.search(r"^  tau tried: \S+ to \S+ over 16 values \(each split's own grid, in the "
                     r"JSON report\)$", "\n".join(uci_cli.search_lines(report)), re.M)
    (folder / "index_train_0.txt").unlink()
    with pytest.raises(InvalidArgumentError, match=r"no splits \(index_train_0\.txt and "
                                                   r"index_test_0\.txt\) and no n_splits\.txt"):
        uci_data.load_dataset(tmp_path, "tiny")


def test_splits_of_different_sizes_train_one_stack_per_size(tmp_path: Path) -> None:
    write_layout(tmp_path, rows=120)
    ds = uci_data.load_dataset(tmp_path, "tiny")
    protocol = uci.Protocol(epochs_multiplier=5, samples=40, extend_grid=False)
    alone = uci.run(ds, replace(protocol, splits=1))
    train = np.loadtxt(tmp_path / "tiny" / "index_train_1.txt", dtype=int)
    np.savetxt(tmp_path / "tiny" / "index_train_1.txt", train[:-3], fmt="%d")  # 105 rows
    lines: list[str] = []
    both = uci.run(ds, protocol, progress=lines.append)
    assert [s.split for s in both.splits] == [0, 1]
    assert sum("retraining 1 networks" in line for line in lines) == 2
    # split 0 trains alone in its stack, with the seeds it has without split 1
    assert both.splits[0].test_ll == alone.splits[0].test_ll
    assert both.splits[0].rmse == alone.splits[0].rmse
    assert math.isfinite(both.splits[1].test_ll) and len(both.splits[1].grid) == 4


@pytest.mark.parametrize("break_it, message", [
    (lambda f: (f / "index_target.txt").write_text("1"),
     r"the target column 1 is among the features \(index_features\.txt\)"),
    (lambda f: (f / "index_test_1.txt").write_text((f / "index_train_1.txt").read_text()),
     r"split 1 tests on 36 of its training rows \(e\.g\. row \d+\); index_train_1\.txt and "
     r"index_test_1\.txt must not share rows"),
    (lambda f: (f / "index_train_0.txt").write_text("0\n99\n"),
     r"index_train_0\.txt: row indices must be below 40 \(the rows of data\.txt\), got 99"),
    (lambda f: [(f / "n_splits.txt").unlink(), (f / "index_test_0.txt").unlink()],
     r"no splits \(index_train_0\.txt and index_test_0\.txt\) and no n_splits\.txt"),
])
def test_the_command_refuses_bad_layout_files_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], break_it, message: str) -> None:
    break_it(write_layout(tmp_path))
    assert cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                     "--output", str(tmp_path / "out")]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_grids_on_file_are_checked_before_any_training(tmp_path: Path) -> None:
    folder = write_layout(tmp_path)
    (folder / "tau_values.txt").write_text("1.0\n-2.0\n")
    with pytest.raises(InvalidArgumentError,
                       match=r"tiny: tau values must be one or more values > 0, got \[1\.0, -2\.0\]"):
        uci.run(uci_data.load_dataset(tmp_path, "tiny"), uci.Protocol())


def test_grids_on_the_command_line_replace_the_files_grids(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_layout(tmp_path)
    out = tmp_path / "out"
    status = cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                       "--epochs-multiplier", "1", "--samples", "20", "--splits", "1",
                       "--dropout-rates", "0.05", "--tau-values", "2", "20", "200",
                       "--grid-only", "--output", str(out)])
    assert status == 0
    (split,) = json.loads((out / "tiny.json").read_text())["splits"]
    assert [(g["dropout"], g["tau"]) for g in split["grid"]] == [(0.05, 2.0), (0.05, 20.0),
                                                                 (0.05, 200.0)]
    for bad, message in ((["--tau-values", "0"], r"tiny: tau values must be one or more values "
                                                 r"> 0, got \[0\.0\]"),
                         (["--dropout-rates", "1"], r"tiny: dropout rates must be one or more "
                                                    r"values in \(0, 1\), got \[1\.0\]")):
        capsys.readouterr()
        assert cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                         *bad]) == 1
        assert re.search(message, capsys.readouterr().err)


# -- the stacked trainer ---------------------------------------------------------------------------
def test_stacked_networks_become_the_keras_model_they_describe() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    stack = gridfit.fit_mlps(x, x[:, :1], [0.1, 0.3], [1e-4, 0.0], hidden=(8, 6), epochs=2)
    for i in range(2):
        model = stack.to_keras(i)
        h = x
        for layer, (kernel, bias) in enumerate(zip(stack.kernels, stack.biases, strict=True)):
            h = h @ kernel[i] + bias[i]
            h = np.maximum(h, 0) if layer < 2 else h
        np.testing.assert_allclose(model(x, training=False).numpy(), h, rtol=1e-5, atol=1e-6)
        assert model.get_layer("input_dropout").rate == stack.dropout[i]


def test_each_network_learns_its_own_data_with_its_own_decay() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 256, 2)).astype(np.float32)
    y = np.stack([x[0, :, 0], -x[1, :, 1], x[2, :, 0] + x[2, :, 1]])  # a target per network
    stack = gridfit.fit_mlps(x, y, [0.01, 0.01, 0.01], [0.0, 0.0, 1.0], hidden=(16,),
                             epochs=150, batch_size=32, seed=3)
    means = stack.mc_samples(x, 200, seed=4).mean(axis=1)[..., 0]  # (3, rows)
    for i in range(2):  # no decay: a close fit of its own target, not of another's
        assert np.sqrt(np.mean((means[i] - y[i]) ** 2)) < 0.1 * y[i].std()
        assert np.sqrt(np.mean((means[i] - y[1 - i]) ** 2)) > 0.5 * y[1 - i].std()
    # a decay of 1 on sum(w^2) shrinks the weights far below those of its neighbours
    norm = [float(np.sum(stack.kernels[0][i] ** 2)) for i in range(3)]
    assert norm[2] < 0.1 * min(norm[:2])


def test_stack_sampling_agrees_with_the_engine() -> None:
    """Two implementations of MC dropout on the same weights: means agree within 5 SE."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    stack = gridfit.fit_mlps(x, np.sin(x[:, 0]), [0.3], [1e-3], hidden=(16,), epochs=20)
    passes = 4000
    ours = stack.mc_samples(x, passes, seed=6)[0, :, :, 0].astype(np.float64)
    engine = MCDropoutPredictor(stack.to_keras(0)).predict(x, passes, seed=7)
    se = np.sqrt(ours.var(axis=0) / passes + engine.std[:, 0] ** 2 / passes)
    assert np.all(np.abs(ours.mean(axis=0) - engine.mean[:, 0]) < 5 * se)
    # and the spread: a sample variance has relative SE sqrt((kurtosis - 1) / T)
    var = ours.var(axis=0)
    kurtosis = np.mean((ours - ours.mean(axis=0)) ** 4, axis=0) / var**2
    rel_se = np.sqrt(2 * (kurtosis - 1) / passes)  # of the difference of two estimates
    assert np.all(np.abs(engine.std[:, 0] ** 2 - var) < 5 * rel_se * var)


def test_trainer_rejects_bad_arguments() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(InvalidArgumentError, match="equally long"):
        gridfit.fit_mlps(x, np.zeros(4), [0.1, 0.2], [0.0], epochs=1)
    with pytest.raises(InvalidArgumentError, match=r"dropout rates must be in \(0, 1\)"):
        gridfit.fit_mlps(x, np.zeros(4), [1.0], [0.0], epochs=1)
    with pytest.raises(InvalidArgumentError, match=r"same .* number of rows"):
        gridfit.fit_mlps(x, np.zeros(5), [0.1], [0.0], epochs=1)


# -- the protocol end to end -----------------------------------------------------------------------
@pytest.mark.skipif(not (UCI_DIR / "yacht" / "data.txt").is_file(),
                    reason=f"UCI benchmark data not present at {UCI_DIR}")
def test_benchmark_command_runs_the_protocol_on_two_splits_of_yacht(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["benchmark", "uci", "--data-dir", str(UCI_DIR), "--dataset", "yacht",
                       "--splits", "2", "--epochs-multiplier", "2", "--samples", "500",
                       "--grid-only", "--output", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "yacht: 2 splits, 80 epochs, T = 500" in out and "RMSE" in out
    report = json.loads((tmp_path / "yacht.json").read_text())
    ds = uci_data.load_dataset(UCI_DIR, "yacht")
    assert report["splits_run"] == 2 and report["epochs"] == 80
    assert report["protocol"]["samples"] == 500
    for split in report["splits"]:
        grid = split["grid"]
        assert len(grid) == len(ds.dropout_rates) * len(ds.tau_values) == 12
        best = max(grid, key=lambda g: g["validation_ll"])
        assert (split["dropout"], split["tau"]) == (best["dropout"], best["tau"])
        # a fitted network beats predicting the test mean; every metric is finite
        test_y = ds.y[ds.split(split["split"])[1]]
        assert split["rmse"] < test_y.std()
        assert math.isfinite(split["test_ll"]) and 0.0 <= split["picp"] <= 1.0
    mean, se = report["summary"]["rmse"]["mean"], report["summary"]["rmse"]["se"]
    rmse = [s["rmse"] for s in report["splits"]]
    assert mean == pytest.approx(np.mean(rmse))
    assert se == pytest.approx(np.std(rmse, ddof=1) / math.sqrt(2))
    with open(tmp_path / "yacht.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["rmse"]) for r in rows] == pytest.approx(rmse)


# -- calibration rows held out for split-conformal intervals ---------------------------------------
def test_calibration_fraction_holds_out_trailing_rows_and_scores_conformal_intervals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_layout(tmp_path, rows=200)  # 180 training rows per split: 36 held out, 144 trained on
    out = tmp_path / "out"
    held: list[np.ndarray] = []
    score = uci_calibration.score
    monkeypatch.setattr(uci_calibration, "score", lambda predictor, test, calibration, *rest:
                        held.append(calibration[0]) or score(predictor, test, calibration, *rest))
    status = cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                       "--epochs-multiplier", "1", "--samples", "50", "--splits", "2",
                       "--calibration-fraction", "0.2", "--output", str(out)])
    assert status == 0
    assert "36 calibration rows held out per split" in capsys.readouterr().out
    ds = uci_data.load_dataset(tmp_path, "tiny")
    assert len(held) == 2
    for i, x in enumerate(held):  # the last 20% of the training split, in file order
        np.testing.assert_array_equal(x, ds.x[ds.split(i)[0][144:]])
    report = json.loads((out / "tiny.json").read_text())
    assert report["protocol"]["calibration_fraction"] == 0.2
    for split in report["splits"]:
        assert split["calibration_rows"] == 36
        by_level = {c["level"]: c for c in split["conformal"]}
        assert sorted(by_level) == [0.9, 0.95]
        # the uncalibrated 95% interval is the one the protocol always reports
        assert by_level[0.95]["raw_coverage"] == split["picp"]
        assert by_level[0.95]["raw_width"] == split["interval_width"]
        # a higher level takes a larger calibration score, hence wider intervals
        assert by_level[0.95]["q"] >= by_level[0.9]["q"] > 0
        assert by_level[0.95]["width"] >= by_level[0.9]["width"] > 0
        for c in by_level.values():
            assert 0.0 <= c["coverage"] <= 1.0 and 0.0 <= c["raw_coverage"] <= 1.0
    coverage = [s["conformal"][0]["coverage"] for s in report["splits"]]
    assert report["summary"]["coverage@0.95"]["mean"] == pytest.approx(np.mean(coverage))
    with open(out / "tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["coverage@0.95"]) for r in rows] == pytest.approx(coverage)
    assert [int(r["calibration_rows"]) for r in rows] == [36, 36]


# -- the search past the grid's edges, learned noise -----------------------------------------------
def test_a_grid_whose_best_tau_is_on_its_edge_is_extended_within_the_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny set's residuals after 4 epochs are of order 1, so a tau grid of 0.01 and 0.02
    (noise SD 7 to 10) is far too small: its best is its top edge, and every round doubles it
    until the two rounds allowed are spent."""
    write_layout(tmp_path)
    out = tmp_path / "out"
    status = cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                       "--epochs-multiplier", "1", "--samples", "30", "--splits", "2",
                       "--dropout-rates", "0.05", "--tau-values", "0.01", "0.02",
                       "--search-rounds", "2", "--output", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "tau tried: 0.01, 0.02, 0.04, 0.08 (given 0.01, 0.02)" in printed
    report = json.loads((out / "tiny.json").read_text())
    assert report["protocol"]["extend_grid"] and report["protocol"]["search_rounds"] == 2
    assert report["protocol"]["search_margin"] == 1.0
    for split in report["splits"]:
        tried = [(g["tau"], g["round"]) for g in split["grid"]]
        assert tried == [(0.01, 0), (0.02, 0), (0.04, 1), (0.08, 2)]
        search = split["search"]
        assert search["rounds"] == 2 and search["settings"] == 4
        assert search["stop_reason"].startswith("budget: 2 extension rounds spent")
        assert search["axes"][1]["tried"] == [0.01, 0.02, 0.04, 0.08]
        assert search["axes"][1]["bounds"] == pytest.approx([1e-5, 20.0])
        # every doubling of a far too small tau lifts every validation row: a clear lead
        assert search["margin"] == 1.0 and search["highest"] is None
        best = max(split["grid"], key=lambda g: g["validation_ll"])
        assert split["tau"] == best["tau"] == 0.08
    with open(out / "tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["settings_tried"]) for r in rows] == [4, 4]
    assert all(r["stop_reason"].startswith("budget") for r in rows)
    # the docs table's row: no published figures for this set; 4 settings and 2 rounds per
    # split, both splits stopped by the budget
    assert uci_table.main([str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("| tiny | fixed | 4 | 2 | ")
    assert "| n/a | n/a / n/a / " in line and "| 4-4, 2-2, 2, 0 |" in line


def test_refined_tau_beats_or_keeps_the_grid_tau_on_the_validation_rows(
        tmp_path: Path) -> None:
    write_layout(tmp_path, rows=120)
    out = tmp_path / "out"
    status = cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                       "--epochs-multiplier", "5", "--samples", "40", "--splits", "2",
                       "--tau-values", "0.1", "1", "10", "--grid-only", "--refine-tau",
                       "--output", str(out)])
    assert status == 0
    report = json.loads((out / "tiny.json").read_text())
    assert report["protocol"]["refine_tau"]
    with open(out / "tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for split, row in zip(report["splits"], rows, strict=True):
        refined = split["search"]["refined"]
        low, high = refined["bracket"]
        assert low < split["tau"] < high or split["tau"] in (0.1, 10.0)
        assert low <= refined["tau"] <= high
        assert refined["validation_ll"] >= refined["grid_validation_ll"]
        # the test passes use the refined tau; the weight decay kept the grid's
        assert (split["test_tau"] or split["tau"]) == refined["tau"] == float(row["test_tau"])


def run_tiny_grid(tmp_path: Path, *flags: str) -> dict:
    """``benchmark uci`` on two splits of a small layout, the given grid only: its JSON report."""
    write_layout(tmp_path, rows=120)
    out = tmp_path / "out"
    status = cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                       "--epochs-multiplier", "5", "--samples", "40", "--splits", "2",
                       "--grid-only", "--output", str(out), *flags])
    assert status == 0
    return json.loads((out / "tiny.json").read_text())


def test_learned_noise_runs_the_protocol_and_scores_with_the_passes_own_variances(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_tiny_grid(tmp_path, "--noise", "learned")
    assert "learned noise" in capsys.readouterr().out
    assert report["protocol"]["noise"] == "learned"
    for split in report["splits"]:
        assert len(split["grid"]) == 4
        assert split["search"]["stop_reason"] == "the given grid only (extension off)"
        assert all(math.isfinite(g["validation_ll"]) for g in split["grid"])
        assert math.isfinite(split["test_ll"]) and 0.0 < split["picp"] <= 1.0
        assert split["interval_width"] > 0


def test_too_few_calibration_rows_are_refused_before_training(tmp_path: Path) -> None:
    write_layout(tmp_path)  # 36 training rows: 0.2 holds out 8, and level 0.95 needs 19
    ds = uci_data.load_dataset(tmp_path, "tiny")
    with pytest.raises(InvalidArgumentError,
                       match=r"calibration_fraction 0\.2 holds out 8 of the 36 training rows of "
                             r"tiny: conformal intervals at level 0\.95 need at least 19"):
        uci.run(ds, uci.Protocol(calibration_fraction=0.2))
    with pytest.raises(InvalidArgumentError,
                       match=r"calibration_fraction must be in \[0, 1\), got 1\.0"):
        uci.run(ds, uci.Protocol(calibration_fraction=1.0))
    with pytest.raises(InvalidArgumentError, match=r"noise must be one of \['fixed', "
                                                   r"'learned'\], got 'loud'"):
        uci.run(ds, uci.Protocol(noise="loud"))
    with pytest.raises(InvalidArgumentError, match=r"search_rounds must be an integer >= 0, "
                                                   r"got -1"):
        uci.run(ds, uci.Protocol(search_rounds=-1))


def test_benchmark_uci_with_concrete_dropout_searches_tau_only_and_reports_the_rates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run_tiny_grid(tmp_path, "--concrete-dropout")
    assert "concrete dropout" in capsys.readouterr().out
    assert report["protocol"]["concrete"] is True
    for split in report["splits"]:
        assert [g["dropout"] for g in split["grid"]] == [0.1, 0.1]  # tau 1 and 10
        assert [g["tau"] for g in split["grid"]] == [1.0, 10.0]
        assert len(split["learned_dropout"]) == 2
        assert all(0 < r < 1 for r in split["learned_dropout"])
        assert math.isfinite(split["test_ll"]) and 0.0 < split["picp"] <= 1.0
    assert "concrete dropout (learned p per layer, inputs first: " in uci_table.row(report)
    assert cli.main(["benchmark", "uci", "--data-dir", str(tmp_path), "--dataset", "tiny",
                     "--concrete-dropout", "--dropout-rates", "0.2"]) == 1
    assert "--dropout-rates does not apply with --concrete-dropout" in capsys.readouterr().err
